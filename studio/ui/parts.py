"""Pieces several tabs share beside their form and their jobs: the shape of a tab (`Tab`), a table's rows, the
settings view, the model line of a tab's help text, the options of view-only events, the Inversion tab's
inversion as an input of the editing tabs, and what every result offers: a send row (`Sendable` items that
`studio.ui.send` delivers to another tab), a before/after view, PNG downloads carrying their settings and
*Load settings*."""

from __future__ import annotations

import html
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import gradio as gr
import numpy as np
import pandas as pd  # gr.Dataframe hands tables over as DataFrames unless type='array'
from PIL import Image

from studio import model_limits, png_settings
from studio.errors import InvalidInputError
from studio.ui.form import Field, Form
from studio.ui.inputs import public_message

if TYPE_CHECKING:
    from gradio.components import Component

    from studio.engine import Engine
    from studio.inversion import Inversion
    from studio.specs import ConceptUse


# tab id -> its title (the ids app.py gives the tabs)
TAB_TITLES = {"generate": "Generate", "structure": "Structure", "inversion": "Inversion", "sdedit": "SDEdit",
              "diffedit": "DiffEdit", "p2p": "Prompt-to-Prompt", "personalize": "Personalize", "history": "History"}
JOB_TABS = {"generate": "generate", "invert": "inversion", "sdedit": "sdedit", "diffedit_mask": "diffedit",
            "diffedit": "diffedit", "p2p": "p2p", "personalize": "personalize"}  # a settings record's "job" -> the tab whose form it restores


@dataclass(frozen=True)
class Sendable:
    """What a send button carries to another tab: an image (RGB uint8) and the settings that made it; from an
    attention map also the word and its mask (bool, the image's size)."""

    image: np.ndarray
    settings: Mapping[str, Any]
    word: str | None = None
    mask: np.ndarray | None = None

    @property
    def prompt(self) -> str:
        """The prompt that describes the image: a generation's prompt, an edit's target, an inversion's caption."""
        settings = self.settings or {}
        return str(settings.get("target_prompt") or settings.get("prompt") or "")


class Tab:
    """The shape every tab shares, built in the current Blocks/Tab from its module's field table (`fields`):
    `layout` places the form and the outputs, `run` streams a job through `render(event)`, `wire` connects the
    events. `inversion_state` is the Inversion tab's picked Inversion, for the tabs that edit one (None: no
    Inversion tab).

    Sending between tabs (`studio.ui.send` wires it): a tab whose results can be sent has `sending` (a gr.State
    holding the `Sendable` of the result picked) and `send_buttons` (target tab id -> button, from `send_row`);
    `map_sending` and `mask_buttons` likewise for an attention map's mask (`mask_row`). A tab that takes an image implements `receive` (and
    `receive_mask` for a mask) and lists the components they write in `receives`."""

    name: ClassVar[str] = ""  # the tab's id (TAB_TITLES)
    restores_records_of: ClassVar[tuple[str, ...]] = ()  # other tabs whose PNGs this tab's form restores in full
    fields: tuple[Field, ...] = ()

    def __init__(self, engine: Engine, inversion_state: gr.State | None = None) -> None:
        self.engine, self.form, self.inversion_state = engine, Form(self.fields, engine), inversion_state
        self.sending: gr.State | None = None
        self.map_sending: gr.State | None = None
        self.send_buttons: dict[str, gr.Button] = {}
        self.mask_buttons: dict[str, gr.Button] = {}
        self.receives: list[Component] = []
        self.layout()
        self.wire()

    def layout(self) -> None:
        raise NotImplementedError

    def wire(self) -> None:
        raise NotImplementedError

    def receive(self, item: Sendable) -> dict[Component, Any]:
        """This tab's form for an image sent from another tab."""
        raise gr.Error(f"{TAB_TITLES[self.name]} takes no images.")

    def receive_mask(self, item: Sendable) -> dict[Component, Any]:
        """This tab's form for an attention map's mask (and the image under it) sent from another tab."""
        raise gr.Error(f"{TAB_TITLES[self.name]} takes no masks.")

    def read_settings(self, file: str | None) -> dict[Component, Any]:
        """Every field of this tab's form that a PNG made here holds (the settings chunk; A1111 `parameters`)."""
        if not file:
            raise gr.Error("Upload a PNG to read its settings.")
        try:
            record = png_settings.read_png_settings(file)
        except InvalidInputError as error:
            raise gr.Error(public_message(str(error))) from error
        made_by = record_tab(record)
        if made_by != self.name and made_by not in self.restores_records_of:
            gr.Warning(f"This PNG was made in the {TAB_TITLES[made_by]} tab: only the settings the two tabs share are "
                       f"restored here. Load it in {TAB_TITLES[made_by]} for all of them.")
        if concepts := record.get("concepts"):  # weights, not settings: the session's concepts decide
            named = ", ".join(f"{c.get('name')} ({c.get('kind', 'concept')} {c.get('hash', '')}, scale {c.get('scale')})"
                              for c in concepts)
            gr.Warning(f"This PNG was made with {named}: load the same files in the Personalize tab to make it again.")
        return self.form.restore(record)


def record_tab(record: Mapping[str, Any]) -> str:
    """The tab whose form a settings record restores: its job's, and the Structure tab for a generation under
    structure control (the Structure tab runs the generate job)."""
    job = str(record.get("job") or "generate")
    return "structure" if job == "generate" and record.get("structure") else JOB_TABS.get(job, "generate")


def session_id(request: gr.Request | None) -> str:
    """The browser session a request comes from ("api" for a caller without one)."""
    return (request.session_hash if request is not None else None) or "api"


def table_rows(table: Any) -> list[list[Any]]:
    """Rows of a gr.Dataframe value: a list of lists (type="array"), a DataFrame, or the API's dict."""
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        return table.values.tolist()
    if isinstance(table, dict):
        return [list(row) for row in table.get("data") or []]
    return [list(row) for row in table]


def settings_view(elem_id: str, label: str = "Settings of this result", height: int = 200) -> gr.JSON:
    """The settings that produced the result shown (the reproduction record)."""
    return gr.JSON(label=label, elem_id=elem_id, height=height)


def model_panel(engine: Engine, elem_id: str) -> None:
    """What the model can draw, where a tab's prompt is: its native size and its words, and its model card."""
    limits = engine.model_limits
    with gr.Accordion(f"Model {limits.model_name}: {limits.native_size}×{limits.native_size} px"
                      + (", a fixed vocabulary" if limits.vocabulary is not None else ""), open=False, elem_id=elem_id):
        gr.Markdown(html.escape(model_limits.vocabulary_text(limits)), elem_id=f"{elem_id}-words")
        if limits.card_text:
            with gr.Accordion("Model card", open=False):
                gr.Markdown(limits.card_text, elem_id=f"{elem_id}-card")


def warn_about_limits(engine: Engine, prompts: Sequence[str], size: tuple[int, int] | None = None,
                      concepts: Sequence[ConceptUse] = ()) -> None:
    """gr.Warning for what the model was never trained to draw: reserved words in `prompts` (less the words the job's
    `concepts` teach it), an off-native size."""
    limits = engine.model_limits
    taught = {word for use in concepts for word in engine.concepts.info(use.name).words}
    found = [warning for prompt in prompts for warning in model_limits.prompt_warnings(limits, prompt or "", taught)]
    if size is not None and (warning := model_limits.size_warning(limits, *size)):
        found.append(warning)
    for warning in dict.fromkeys(found):
        gr.Warning(warning)


def model_line(engine: Engine) -> str:
    """The model's name as a tab's help text begins with it (Markdown)."""
    return f"Model **{html.escape(str(engine.model_name))}**"


def instant(concurrency_id: str) -> dict[str, Any]:
    """Options of an event that only redraws the view (no model work): not queued behind jobs, not in the API."""
    return dict(concurrency_limit=None, concurrency_id=concurrency_id, show_progress="hidden",
                api_visibility="private")


def with_inversion(inputs: Mapping[str, Component], inversion_state: gr.State | None) -> dict[str, Component]:
    """An editing tab's job inputs plus the Inversion tab's inversion (an empty state when there is no such tab)."""
    return {**inputs, "inversion": inversion_state if inversion_state is not None else gr.State(None)}


def chosen_inversion(values: Mapping[str, Any], missing: str) -> Inversion | None:
    """The Inversion tab's inversion when "use the inversion" is ticked; `missing` is the error when there is none."""
    if not values.get("use_inversion"):
        return None
    if values.get("inversion") is None:
        raise InvalidInputError(missing)
    return values["inversion"]


# --------------------------------------------------------------------------------------------
# What every result offers: send, compare, download, load settings


SEND_TARGETS = ("structure", "inversion", "sdedit", "diffedit", "p2p")  # tabs an image can be sent to
MASK_TARGETS = {"sdedit": "SDEdit mask", "diffedit": "DiffEdit mask", "p2p": "P2P local blend"}


def send_row(prefix: str, own: str, label: str = "Send to") -> dict[str, gr.Button]:
    """The buttons that send the picked result to each other tab (elem_id `{prefix}-send-{tab}`)."""
    with gr.Row(elem_classes=["dcs-send"]):
        gr.Markdown(f"**{label}**", elem_classes=["dcs-send-label"])
        return {target: gr.Button(TAB_TITLES[target], size="sm", min_width=80, elem_id=f"{prefix}-send-{target}")
                for target in SEND_TARGETS if target != own}


def mask_row(prefix: str, own: str) -> dict[str, gr.Button]:
    """The buttons that send the shown attention map, thresholded, as a mask (elem_id `{prefix}-mask-{tab}`)."""
    with gr.Row(elem_classes=["dcs-send"]):
        gr.Markdown("**Map as mask →**", elem_classes=["dcs-send-label"])
        return {target: gr.Button(text, size="sm", min_width=80, elem_id=f"{prefix}-mask-{target}")
                for target, text in MASK_TARGETS.items() if target != own}


MAP_THRESHOLD = 0.5  # fraction of the map's range: where a word's attention is "on" for a mask sent from it


def mask_from_map(attention_map: np.ndarray, size: tuple[int, int], threshold: float = MAP_THRESHOLD) -> np.ndarray:
    """A word's attention map as a mask of an image of `size` (width, height): the map min-max normalised,
    upsampled bilinearly, on where it reaches `threshold`."""
    heat = np.asarray(attention_map, np.float32)
    span = float(heat.max() - heat.min())
    if span <= 0:
        raise InvalidInputError("This word's attention map is flat: there is no region to make a mask from.")
    heat = cv2.resize((heat - heat.min()) / span, size, interpolation=cv2.INTER_LINEAR)
    return heat >= threshold


def rgb(image: Any) -> np.ndarray:
    """An image (PIL or array) as RGB uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    return array[..., :3] if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2)


def compare_view(elem_id: str, label: str = "Before | after (drag the handle)") -> gr.ImageSlider:
    """Before and after of an edit on one image, split by a handle."""
    return gr.ImageSlider(label=label, type="pil", format="png", interactive=False, elem_id=elem_id,
                          elem_classes=["dcs-image"], buttons=["fullscreen"])


DIFFERENCE_GAIN = 4  # |after - before| scaled so a re-weight's faint change shows


def difference(before: Any, after: Any, gain: float = DIFFERENCE_GAIN) -> Image.Image:
    """Where an edit changed the image: |after - before| per pixel, scaled by `gain` (grey: unchanged)."""
    a, b = rgb(before).astype(np.float32), rgb(after).astype(np.float32)
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
    return Image.fromarray(np.uint8(np.clip(np.abs(b - a) * gain, 0, 255)))


def downloads_box(elem_id: str, label: str = "Downloads (PNG files carry their settings)") -> gr.File:
    return gr.File(label=label, file_count="multiple", interactive=False, elem_id=elem_id, height=120)


class DownloadFolder:
    """Where downloads are written before Gradio copies them into its cache: one folder per call, removed after
    `keep_s` (Gradio's own cache is cleaned by the Blocks' delete_cache)."""

    def __init__(self, keep_s: float = 3600.0) -> None:
        self.root = Path(tempfile.gettempdir()) / "dcs-downloads"
        self.keep_s = keep_s
        self._lock = threading.Lock()

    def folder(self) -> Path:
        with self._lock:
            self.root.mkdir(exist_ok=True)
            now = time.time()
            for old in self.root.iterdir():
                try:
                    expired = now - old.stat().st_mtime > self.keep_s
                except FileNotFoundError:  # another studio process on this machine (same folder) pruned it first
                    continue
                if expired:
                    shutil.rmtree(old, ignore_errors=True)
            folder = self.root / uuid.uuid4().hex
            folder.mkdir()
            return folder

    def pngs(self, items: Sequence[tuple[str, Any, Mapping[str, Any]]], batch: bool = False) -> list[str]:
        """(file name, image, settings) -> paths of PNGs carrying the settings; `batch`: the items are a batch, each
        PNG says its place in it (and its own seed)."""
        folder = self.folder()
        return [str(png_settings.save_png(image if isinstance(image, Image.Image) else Image.fromarray(rgb(image)),
                                          dict(settings), folder / name, batch_index=index if batch else None))
                for index, (name, image, settings) in enumerate(items)]


DOWNLOADS = DownloadFolder()


def load_settings_box(elem_id: str) -> gr.File:
    """*Load settings*: a PNG made here (or one with A1111 `parameters`) sets the form."""
    return gr.File(label="Load settings from a PNG", file_types=[".png"], type="filepath", elem_id=elem_id,
                   height=130)  # lower clips Gradio's "Click to Upload"


def tagged(image: Any, settings: Mapping[str, Any], **extra: Any) -> Image.Image:
    """An image shown in a gr.Image/Gallery (format="png") whose own download carries `settings` (and `extra`:
    what this picture is, e.g. {"picture": "heat map", "word": "circle"})."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(rgb(image))
    return png_settings.with_settings(picture, {**settings, **extra})


# Shared look of results: small models make small images, shown whole and scaled up without blurring.
CSS = """
.dcs-image img, .dcs-gallery img { image-rendering: pixelated; object-fit: contain; }
.dcs-image img { width: 100%; height: 100%; }
.dcs-gallery .caption-label, .dcs-gallery figcaption { white-space: normal; overflow: visible; text-overflow: clip; }
.dcs-send { align-items: center; gap: 6px; }
.dcs-send-label { flex: 0 0 auto !important; min-width: 0 !important; }
/* toasts: the newest few, not a pile over the previews */
.toast-wrap > :nth-last-child(n+4) { display: none; }
/* Gradio groups a kind's messages in one toast that grows with each: show the newest (its title counts them) */
.toast-messages > :not(:last-child) { display: none; }
"""
