"""The session's history: every result of every tab with the settings that made it, to reopen, compare, re-send
or download; it lives on the server per browser session, so it survives switching tabs (and reloads nothing).

`stream_job` records each Result as it arrives (`HISTORY.add`), so no tab can forget to; the History tab
(`HistoryTab`) shows them newest first. A session keeps its last `MAX_ENTRIES` images and is forgotten when
its browser tab closes (`demo.unload`); at most `MAX_SESSIONS` sessions are kept (the oldest go first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from studio.events import Result

MAX_ENTRIES = 60  # images per session
MAX_SESSIONS = 64

TAB_OF_JOB = {"generate": "Generate", "invert": "Inversion", "sdedit": "SDEdit", "diffedit_mask": "DiffEdit mask",
              "diffedit": "DiffEdit", "p2p": "Prompt-to-Prompt"}


@dataclass(frozen=True)
class Entry:
    """One image of a result: the tab that made it, a caption, the image and its settings."""

    tab: str
    caption: str
    image: Image.Image
    settings: Mapping[str, Any]
    made: float


def caption(tab: str, settings: Mapping[str, Any], index: int, count: int) -> str:
    """What an entry is, in a gallery caption: the tab, the prompt it drew or edited to, the seed, its place."""
    text = TAB_OF_JOB.get(str(settings.get("job") or ""), tab)
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

    def add(self, session: str, tab: str, result: Result) -> None:
        settings = dict(result.settings)
        made = time.time()
        entries = [Entry(tab, caption(tab, settings, index, len(result.images)), image, settings, made)
                   for index, image in enumerate(result.images)]
        with self._lock:
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
