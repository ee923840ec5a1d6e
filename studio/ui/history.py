"""The session's history: every result of every tab with the settings that made it, to reopen, compare, re-send
or download; it lives on the server per browser session, so it survives switching tabs (and reloads nothing).

`stream_job` records each Result as it arrives (`HISTORY.add`), so no tab can forget to; the History tab
(`HistoryTab`) shows them newest first. A session keeps its last `MAX_ENTRIES` images and is forgotten when
its browser tab closes (`demo.unload`); at most `MAX_SESSIONS` sessions are kept (the oldest go first).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.components import Component  # at run time: Gradio reads the handlers' hints for gr.Request
from PIL import Image

from studio.jobs import JOB_LABELS
from studio.ui.parts import (DOWNLOADS, JOB_TABS, TAB_TITLES, Sendable, Tab, compare_view, difference, downloads_box,
                             instant, rgb, send_row, session_id, settings_view, tagged)

if TYPE_CHECKING:
    from studio.events import Result

MAX_ENTRIES = 60  # images per session
MAX_SESSIONS = 64


@dataclass(frozen=True)
class Entry:
    """One image of a result: its number in the session, the tab that made it, a caption, the image, its
    settings."""

    number: int
    tab: str
    caption: str
    image: Image.Image
    settings: Mapping[str, Any]
    made: float


def caption(tab: str, settings: Mapping[str, Any], index: int, count: int) -> str:
    """What an entry is, in a gallery caption: the tab, the prompt it drew or edited to, the seed, its place."""
    job = str(settings.get("job") or "")
    # a job's own label where its tab made it ("DiffEdit mask"); else the tab's title (the Structure tab's generations)
    text = JOB_LABELS.get(job, tab) if JOB_TABS.get(job, tab) == tab else TAB_TITLES.get(tab, tab)
    prompt = settings.get("target_prompt") or settings.get("prompt")
    if prompt:
        text += f" · {prompt}"
    seeds = settings.get("seeds")
    seed = seeds[index] if isinstance(seeds, list) and index < len(seeds) else settings.get("seed")
    if seed is not None:
        text += f" · seed {seed}"
    if count > 1:
        text += f" · #{index}"
    return text


class SessionHistory:
    """Results per browser session, oldest first, bounded (see the module's docstring)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_entries, self.max_sessions = max_entries, max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, list[Entry]] = OrderedDict()
        self._numbers = itertools.count(1)

    def add(self, session: str, tab: str, result: Result) -> None:
        settings = dict(result.settings)
        made = time.time()
        with self._lock:
            entries = [Entry(next(self._numbers), tab, caption(tab, settings, index, len(result.images)), image,
                             settings, made) for index, image in enumerate(result.images)]
            kept = self._sessions.pop(session, [])
            self._sessions[session] = (kept + entries)[-self.max_entries:]
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def entries(self, session: str) -> list[Entry]:
        with self._lock:
            return list(self._sessions.get(session, []))

    def forget(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)


HISTORY = SessionHistory()


def forget_session(request: gr.Request) -> None:
    """A closed browser tab's history goes (the app's unload event)."""
    HISTORY.forget(session_id(request))


class HistoryTab(Tab):
    """The History tab: the session's results newest first; pick one to see it whole with its settings, compare it
    with another (slider and difference), download it or send it to a tab."""

    name = "history"

    def layout(self) -> None:
        gr.Markdown("Every finished result of this session, newest first (the last "
                    f"{MAX_ENTRIES} images). Pick one to see its settings, compare it with another, download it "
                    "or send it to a tab. It fills as you work in the other tabs.", elem_id="history-help")
        with gr.Row():
            self.refresh_button = gr.Button("Refresh", size="sm", elem_id="history-refresh", scale=0, min_width=100)
            self.download_all = gr.Button("Download all (PNGs with settings)", size="sm", elem_id="history-download-all",
                                          scale=0, min_width=240)
        self.gallery = gr.Gallery(label="Results of this session", columns=6, height=300, object_fit="contain",
                                  format="png", allow_preview=False, elem_id="history-gallery", elem_classes=["dcs-gallery"])
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.picked = gr.Image(label="Picked", type="pil", format="png", interactive=False, height=320,
                                       elem_id="history-picked", elem_classes=["dcs-image"], buttons=["download", "fullscreen"])
                self.send_buttons = send_row("history", own=self.name)
                self.downloads = downloads_box("history-downloads")
            with gr.Column(scale=3):
                self.other = gr.Dropdown([], label="Compare with", elem_id="history-compare-with", interactive=True)
                self.compare = compare_view("history-compare")
                self.difference = gr.Image(label="Difference (|after − before| × 4)", type="pil", format="png",
                                           interactive=False, height=200, elem_id="history-difference",
                                           elem_classes=["dcs-image"], buttons=[])
            with gr.Column(scale=3):
                self.settings = settings_view("history-settings", "Settings of the picked result", height=420)
        self.shown = gr.State([])  # entry numbers in gallery order
        self.picked_number = gr.State(None)
        self.sending = gr.State(None)

    def refresh(self, request: gr.Request) -> dict[Component, Any]:
        entries = HISTORY.entries(session_id(request))[::-1]
        choices = [(f"{entry.number}. {entry.caption}", entry.number) for entry in entries]
        return {self.gallery: [(tagged(entry.image, entry.settings), f"{entry.number}. {entry.caption.split(' · ')[0]}")
                               for entry in entries],  # short: a thumbnail's caption covers it; the full one shows when picked
                self.shown: [entry.number for entry in entries], self.other: gr.update(choices=choices, value=None)}

    def pick(self, shown: list[int], event: gr.SelectData, request: gr.Request) -> dict[Component, Any]:
        entry = self._entry(request, shown[event.index] if 0 <= event.index < len(shown) else None)
        return {self.picked: gr.update(value=tagged(entry.image, entry.settings), label=f"{entry.number}. {entry.caption}"),
                self.settings: dict(entry.settings),
                self.picked_number: entry.number, self.sending: Sendable(rgb(entry.image), dict(entry.settings)),
                self.downloads: DOWNLOADS.pngs([(f"history-{entry.number}.png", entry.image, entry.settings)])}

    def compare_with(self, number: int | None, other: int | None, request: gr.Request) -> dict[Component, Any]:
        if number is None or other is None:
            return {self.compare: None, self.difference: None}
        before, after = self._entry(request, other), self._entry(request, number)
        return {self.compare: (before.image, after.image), self.difference: difference(before.image, after.image)}

    def everything(self, request: gr.Request) -> list[str]:
        entries = HISTORY.entries(session_id(request))
        if not entries:
            raise gr.Error("The history is empty: results of every tab land here.")
        return DOWNLOADS.pngs([(f"history-{entry.number}.png", entry.image, entry.settings) for entry in entries])

    def _entry(self, request: gr.Request, number: int | None) -> Entry:
        found = {entry.number: entry for entry in HISTORY.entries(session_id(request))}
        if number not in found:
            raise gr.Error("That result has left the history (it keeps the last "
                           f"{MAX_ENTRIES} images): refresh the history.")
        return found[number]

    def wire(self) -> None:
        refreshed = [self.gallery, self.shown, self.other]
        self.refresh_button.click(self.refresh, None, refreshed, **instant("history"))
        self.gallery.select(self.pick, self.shown, [self.picked, self.settings, self.picked_number, self.sending,
                                                    self.downloads], **instant("history"))
        gr.on([self.other.input, self.picked_number.change], self.compare_with, [self.picked_number, self.other],
              [self.compare, self.difference], **instant("history"))
        self.download_all.click(self.everything, None, self.downloads, **instant("history"))

    def wire_page(self, page: gr.Tab) -> None:
        """Opening the History tab shows what the other tabs have made since."""
        page.select(self.refresh, None, [self.gallery, self.shown, self.other], **instant("history"))
