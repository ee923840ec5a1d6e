"""The Prompt-to-Prompt tab: edit a generated image (or the Inversion tab's image) by editing its prompt.

Layout and handlers only; the engine does the work (`engine.p2p`, studio.editing.p2p). The form is
turned into a typed `P2PSpec`; events render as:

    Progress           -> progress bar text
    Preview            -> source and edited previews side by side
    EditAttentionMaps  -> per-word maps of the source and of the edited target (the fused map it used),
                          shown for the word picked (rendered by a .change event)
    Mask               -> the local-blend mask
    P2PResult          -> source and edited images, the mask, the settings

The token table lists the target prompt's words, the source word each takes its attention from
("" for a new word) and its re-weight, with a slider per word under it (negative weights allowed);
weights may also be written in the prompt as (word:1.3). Endpoint: ``/p2p`` (re-weights through
its token table).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.attention.controllers import WordWindow
from studio.attention.maps import heat_map_overlay
from studio.editing.p2p import (
    BLEND_THRESHOLD,
    EDIT_TYPES,
    SELF_LAYERS,
    STYLE_ALPHA,
    WEIGHT,
    P2PSpec,
    prepare_edit,
)
from studio.editing import hints
from studio.errors import InvalidInputError, StudioError
from studio.events import CancelToken, EditAttentionMaps, Event, Mask, P2PResult, Preview
from studio.inversion import Inversion
from studio.jobs import inversion_record, reproduction_record
from studio.prompt_weights import parse_weighted_prompt
from studio.ui.form import (Field, number, optional_whole, saved, seed_from_form, seed_box, slider, spec_values, text,
                            textbox)
from studio.ui.gpu import engine_job
from studio.ui.parts import (DIFFERENCE_GAIN, DOWNLOADS, Sendable, Tab, chosen_inversion, compare_view, difference,
                             downloads_box, instant, load_settings_box, mask_from_map, mask_row, model_panel, send_row,
                             settings_view, table_rows, tagged, warn_about_limits, with_inversion)
from studio.ui.session_concepts import personalized
from studio.ui.stream import (JOB_EVENT, KEYS_HELP, Outputs, done_html, run_and_stop, status_box, stop_button,
                              stream_job)
from studio.ui.structure_panel import StructurePanel

DEFAULTS = P2PSpec(source_prompt="")
TOKEN_COLUMNS = ("target word", "from source word", "re-weight")
WINDOW_COLUMNS = ("word", "start", "stop")
# Word swap on the embedded model: its objects are laid out in the first steps, so short windows
# (cross 0.2, self 0.2) let the shape change while keeping colour, background and place (bench/p2p.py).
EXAMPLES = [
    ["a big red circle on a blue background", "a big red square on a blue background", "word swap", 3, 0.2, 0.2, "circle, square"],
    ["a big red circle on a green background", "a big (red:4) circle on a green background", "refine", 1, 0.8, 0.4, ""],
    ["a big circle on a white background", "a big yellow circle on a white background", "refine", 2, 0.4, 0.2, "circle"],
]


NO_INVERSION = "The Inversion tab has no inversion yet: invert an image there first."
IF_FAILED = "**If an edit fails:**\n" + hints.P2P_IF_FAILED

CSS = """
/* a narrow slider keeps its range labels whole ("150", not "15"): the track gives way, not the numbers */
[id^=p2p-] .min_value, [id^=p2p-] .max_value { flex-shrink: 0; }
[id^=p2p-] input[type=range] { min-width: 0; }
#p2p-images .caption-label { white-space: normal; max-width: 100%; overflow: visible; text-overflow: clip; }
#p2p-images img { image-rendering: pixelated; }
"""


# --------------------------------------------------------------------------------------------
# Pure helpers


def reweights_from_table(table: Any, target_prompt: str) -> tuple[tuple[str, float], ...]:
    """(word, weight) for each token-table row whose weight differs from the prompt's own (syntax) weight."""
    weighted = parse_weighted_prompt(target_prompt or "", "Target prompt")
    pairs = []
    for row in table_rows(table):
        if len(row) < 3 or not str(row[0]).strip():
            continue
        try:
            weight = float(row[2])
        except (TypeError, ValueError):
            raise InvalidInputError(f"Token table: the re-weight of {row[0]!r} must be a number, got {row[2]!r}.") from None
        pairs.append((str(row[0]), weight))
    syntax = dict((word, w) for word, w in zip(weighted.text.split(), weighted.word_weights))
    return tuple((word, weight) for word, weight in pairs if weight != syntax.get(word, 1.0))


def with_weight(row: int, weight: float, table: Any) -> list[list[Any]]:
    """The token table with row `row`'s re-weight set (a slider's release)."""
    rows = table_rows(table)
    rows[row] = [*rows[row][:2], float(weight)]
    return rows


def windows_from_table(table: Any) -> tuple[WordWindow, ...]:
    windows = []
    for row in table_rows(table):
        if not row or not str(row[0]).strip():
            continue
        try:
            windows.append(WordWindow(str(row[0]).strip(), float(row[1]), float(row[2])))
        except (TypeError, ValueError, IndexError):
            raise InvalidInputError(f"Word windows: the row for {row[0]!r} needs a start and a stop between 0 and 1.") from None
    return tuple(windows)


def stripped(value: Any) -> str:
    return text(value).strip()


def words(value: Any) -> tuple[str, ...]:
    """'circle, square' -> ('circle', 'square')."""
    return tuple(word.strip() for word in text(value).split(",") if word.strip())


def render_maps(state: dict | None, word: str | None) -> tuple[Any, Any, Any, Sendable | None]:
    """Word picker, the (source, target) heat maps for the picked target word (each PNG carrying the edit's settings
    once it is done) and what "Map as mask" sends: the target word's map as a mask of the edited image."""
    if not state:
        return gr.update(choices=[], value=None), None, None, None
    target_words: list[str] = state["target"]["tokens"]
    if word not in target_words:
        word = next((w for w, s in zip(target_words, state["aligned"]) if s != w), target_words[0] if target_words else None)
    if word is None:
        return gr.update(choices=[], value=None), None, None, None
    j = target_words.index(word)
    source_word = state["aligned"][j]
    source_tokens: list[str] = state["source"]["tokens"]
    i = source_tokens.index(source_word) if source_word in source_tokens else None
    source_view = heat_map_overlay(Image.fromarray(state["images"][0]), state["source"]["maps"][i]) if i is not None else None
    target_view = heat_map_overlay(Image.fromarray(state["images"][1]), state["target"]["maps"][j])
    settings = state.get("settings")
    if settings is None:  # still streaming: nothing to send or to tag yet
        return gr.update(choices=target_words, value=word), source_view, target_view, None
    if source_view is not None:
        source_view = tagged(source_view, settings, picture="heat map (source)", word=source_word)
    target_view = tagged(target_view, settings, picture="heat map (edited)", word=word)
    edited = state["images"][1]
    mask = mask_from_map(state["target"]["maps"][j], (edited.shape[1], edited.shape[0]))
    return (gr.update(choices=target_words, value=word), source_view, target_view,
            Sendable(edited, settings, word=word, mask=mask))


def inversion_view(use_inversion: bool, inversion: Inversion | None, kept: dict | None, source: str, steps: int,
                   guidance: float) -> tuple[Any, Any, Any, dict | None]:
    """The source prompt, steps and guidance as an edit of the inversion uses them (its caption, steps and w, greyed:
    the inversion fixes them), or the form's own again when unticked; `kept` holds the form's values meanwhile."""
    if use_inversion and inversion is not None:
        kept = kept or {"source": source, "steps": steps, "guidance": guidance}
        fixed = dict(interactive=False, info="fixed by the Inversion tab's inversion")
        return (gr.update(value=inversion.prompt, **fixed), gr.update(value=inversion.steps, **fixed),
                gr.update(value=inversion.guidance_scale, **fixed), kept)
    if kept is None:
        return gr.skip(), gr.skip(), gr.skip(), None
    free = dict(interactive=True, info=None)
    return (gr.update(value=kept["source"], **free), gr.update(value=kept["steps"], **free),
            gr.update(value=kept["guidance"], **free), None)


def result_downloads(result: P2PResult, maps: dict | None) -> list[str]:
    """The source and edited images, the blend mask and the shown word's heat maps, as PNGs with the edit's
    settings (each says which picture it is)."""
    settings = result.settings
    items = [("p2p-source.png", result.images[0], {**settings, "download": "source"}),
             ("p2p-edited.png", result.images[1], settings)]
    if result.mask is not None:
        items.append(("p2p-blend-mask.png", Image.fromarray(np.uint8(result.mask * 255)),
                      {**settings, "download": "blend mask"}))
    if maps is not None:
        _, source_map, target_map, item = render_maps({**maps, "settings": settings}, None)
        word = item.word if item is not None else ""
        for name, view in (("source", source_map), ("edited", target_map)):
            if view is not None:
                items.append((f"p2p-heat-map-{name}-{word}.png", view, {**settings, "download": f"heat map ({name})",
                                                                       "word": word}))
    return DOWNLOADS.pngs(items)


def reuse_seed(settings: dict | None) -> int:
    """The seed of the edit shown (an edit of an inversion has none: its x_T is the inversion's)."""
    if not settings or settings.get("seed") is None:
        raise gr.Error("Edit a generated image first (an edit of an inversion has no seed); its seed is then reused.")
    return int(settings["seed"])


def maps_state(event: EditAttentionMaps, previews: list[np.ndarray] | None, previous: dict | None,
               native_size: int) -> dict:
    """What the heat-map view needs from an EditAttentionMaps event: both prompts' maps, which source word each
    target word's map came from, and the images under them."""
    if previews is None:
        previews = previous["images"] if previous else [np.full((native_size, native_size, 3), 96, np.uint8)] * 2
    return {
        "source": {"tokens": list(event.source.tokens), "maps": np.asarray(event.source.maps)},
        "target": {"tokens": list(event.target.tokens), "maps": np.asarray(event.target.maps)},
        "aligned": list(event.aligned),
        "images": previews,
    }


# --------------------------------------------------------------------------------------------
# The form


def restored_windows(settings: Mapping[str, Any]) -> list[list[Any]] | None:
    """A record's word windows ({word, start, stop} in JSON) as the table's rows."""
    windows = settings.get("word_windows")
    if windows is None:
        return None
    return [[w["word"], w["start"], w["stop"]] if isinstance(w, dict) else list(w) for w in windows]


def restored_blend_words(settings: Mapping[str, Any]) -> str | None:
    blend = settings.get("blend_words")
    return None if blend is None else ", ".join(blend)


FIELDS = (
    Field("source_prompt", textbox(label="Source prompt", lines=1, elem_id="p2p-source",
                                   placeholder="a big red circle on a blue background"), stripped,
          saved("source_prompt")),
    Field("target_prompt", textbox(
        label="Target prompt", lines=1, elem_id="p2p-target",
        placeholder="a big red square on a blue background — weights as (word:1.3)"), stripped,
          saved("target_prompt")),
    Field("use_inversion", lambda engine: gr.Checkbox(
        label="Edit the Inversion tab's image (its prompt is the source prompt)", value=False,
        elem_id="p2p-use-inversion"), in_spec=False),
    Field("edit", lambda engine: gr.Radio(
        list(EDIT_TYPES), value=DEFAULTS.edit, label="Edit", elem_id="p2p-edit",
        info="word swap: same word count; refine: insert, delete or reorder words; style: blend maps"), str,
          saved("edit")),
    # the target's words, the source word each takes its attention from, and its re-weight (P2PSpec.reweights,
    # which reweights_from_table reads beside the target prompt's own (word:1.3) weights)
    Field("reweights", lambda engine: gr.Dataframe(
        value=[], headers=list(TOKEN_COLUMNS), datatype=["str", "str", "number"], type="array",
        column_count=(3, "fixed"), interactive=True, label="Tokens (re-weight with the sliders or in the table)",
        elem_id="p2p-tokens"), in_spec=False),
    Field("seed", seed_box("p2p-seed"), optional_whole, saved("seed", specs.SEED)),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, elem_id="p2p-steps"), int, saved("steps", specs.STEPS)),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="p2p-guidance"), float,
          saved("guidance_scale", specs.GUIDANCE)),
    Field("cross_start", number(specs.START, DEFAULTS.cross_start,
                                       label="Cross-attention start", elem_id="p2p-cross-start"), float,
          saved("cross_start", specs.START)),
    Field("cross_stop", number(specs.STOP, DEFAULTS.cross_stop,
                                      label="Cross-attention stop", elem_id="p2p-cross-stop"), float,
          saved("cross_stop", specs.STOP)),
    Field("self_start", number(specs.START, DEFAULTS.self_start,
                                      label="Self-attention start", elem_id="p2p-self-start"), float,
          saved("self_start", specs.START)),
    Field("self_stop", number(specs.STOP, DEFAULTS.self_stop,
                                     label="Self-attention stop", elem_id="p2p-self-stop"), float,
          saved("self_stop", specs.STOP)),
    Field("self_max_fraction", slider(SELF_LAYERS, DEFAULTS.self_max_fraction, elem_id="p2p-self-layers"), float,
          saved("self_max_fraction", SELF_LAYERS)),
    Field("word_windows", lambda engine: gr.Dataframe(
        value=[], headers=list(WINDOW_COLUMNS), datatype=["str", "number", "number"], type="array",
        column_count=(3, "fixed"), interactive=True, label="Per-word cross-attention windows",
        elem_id="p2p-word-windows"), windows_from_table, restored_windows),
    Field("style_alpha", slider(STYLE_ALPHA, DEFAULTS.style_alpha, label="Style alpha (style edit: share of the "
                                "target's own maps)", elem_id="p2p-style-alpha"), float,
          saved("style_alpha", STYLE_ALPHA)),
    Field("blend_words", textbox(label="Words (comma-separated, from either prompt)", elem_id="p2p-blend-words"),
          words, restored_blend_words),
    Field("blend_threshold", slider(BLEND_THRESHOLD, DEFAULTS.blend_threshold, elem_id="p2p-blend-threshold"), float,
          saved("blend_threshold", BLEND_THRESHOLD)),
    Field("blend_start", slider(specs.START, DEFAULTS.blend_start, label="Blend from", elem_id="p2p-blend-start"), float,
          saved("blend_start", specs.START)),
)


def spec_from_values(values: Mapping[str, Any]) -> P2PSpec:
    parsed = spec_values(FIELDS, values)
    parsed["seed"] = seed_from_form(parsed.get("seed"))
    parsed["reweights"] = reweights_from_table(values.get("reweights"), parsed.get("target_prompt", ""))
    return P2PSpec(**parsed)


def run_settings(engine: Any, spec: P2PSpec, inversion: Inversion | None) -> dict[str, Any]:
    """The settings of an edit known before its result (previews, a stopped edit's partial images); the
    result's own record replaces them when it lands."""
    return reproduction_record(engine, "p2p", asdict(spec), None, None,
                               source_inversion=inversion_record(inversion) if inversion is not None else None)


# --------------------------------------------------------------------------------------------
# The tab


@dataclass
class Shown:
    """What one run has shown so far: the latest previews (under the heat maps, and what Stop offers) and the
    attention-map state."""

    previews: list[np.ndarray] | None = None
    preview_step: int = 0
    maps: dict | None = None
    spec: P2PSpec | None = None
    inversion: Inversion | None = None
    settings: dict[str, Any] | None = None  # the run's, known before its result: what the previews carry


class P2PTab(Tab):
    """The Prompt-to-Prompt tab (the shape of every tab: `parts.Tab`), with the Structure accordion
    (`structure_panel`): the rows read the inversion's image, or a picture of their own."""

    name = "p2p"
    structure_panel = StructurePanel(name)
    fields = (*FIELDS, *structure_panel.fields)

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                *_, use_inversion, edit = form.place("source_prompt", "target_prompt", "use_inversion", "edit")
                use_inversion.visible = self.inversion_state is not None
                model_panel(self.engine, "p2p-model")  # native size, words, model card
                self.go, self.stop = run_and_stop("Edit", "p2p-go", "p2p-stop")
                form.place("reweights")
                self.token_sliders()
                with gr.Row():
                    form.place("seed", "steps", "guidance_scale")
                self.reuse_seed = gr.Button("Reuse the last edit's seed", size="sm", elem_id="p2p-reuse-seed")
                with gr.Accordion("Windows (fractions of the run)", open=True):
                    with gr.Row():
                        form.place("cross_start", "cross_stop", "self_start", "self_stop")
                    form.place("self_max_fraction", "word_windows", "style_alpha")
                with gr.Accordion("Local blend", open=True):
                    form.place("blend_words")
                    with gr.Row():
                        form.place("blend_threshold", "blend_start")
                self.structure_panel.place(form, self.engine)
                self.load_settings = load_settings_box("p2p-load-settings")
            with gr.Column(scale=6, min_width=360):
                self.status = status_box("p2p-status")
                self.images = gr.Gallery(label="Source | edited", columns=2, height=440, format="png",
                                         object_fit="contain", elem_id="p2p-images", elem_classes=["dcs-gallery"])
                self.hint = gr.Markdown("", label="Hints", elem_id="p2p-hint")
                self.send_buttons = send_row("p2p", own=self.name)
                with gr.Row():
                    self.compare = compare_view("p2p-compare", "Source | edited (drag the handle)")
                    self.difference = gr.Image(label=f"Difference (|edited - source| x{DIFFERENCE_GAIN})", format="png",
                                               interactive=False, elem_id="p2p-difference", elem_classes=["dcs-image"])
                self.word_pick = gr.Radio(choices=[], label="Attention for target word", elem_id="p2p-word")
                with gr.Row():
                    self.source_map = gr.Image(label="Source attention", format="png", interactive=False,
                                               elem_id="p2p-source-map", height=220, elem_classes=["dcs-image"])
                    self.target_map = gr.Image(label="Edited attention (fused map)", format="png", interactive=False,
                                               elem_id="p2p-target-map", height=220, elem_classes=["dcs-image"])
                    self.mask_view = gr.Image(label="Local-blend mask", format="png", interactive=False,
                                              elem_id="p2p-mask", height=220, elem_classes=["dcs-image"])
                self.mask_buttons = mask_row("p2p", own=self.name)
                self.downloads = downloads_box("p2p-downloads")
                self.settings = settings_view("p2p-settings")
        self.maps_state = gr.State(None)
        self.sending, self.map_sending = gr.State(None), gr.State(None)
        self.kept_form = gr.State(None)  # the form's source prompt, steps and guidance while the inversion fixes them
        self.results = {self.images: self.images.label, self.compare: self.compare.label,
                        self.difference: self.difference.label, self.mask_view: self.mask_view.label}
        self.receives = form.components(["source_prompt", "target_prompt", "seed", "steps", "guidance_scale",
                                         "use_inversion", "blend_words"])  # receive's, then receive_mask's
        gr.Markdown("Prompt-to-Prompt (Hertz et al. 2023) edits by swapping, refining or re-weighting the words' "
                    f"cross-attention maps while both images share their start. {KEYS_HELP}.",
                    elem_id="p2p-help")
        gr.Examples(EXAMPLES, form.components(["source_prompt", "target_prompt", "edit", "seed", "cross_stop",
                                               "self_stop", "blend_words"]),
                    label="Edits on the embedded model", elem_id="p2p-examples")

    @property
    def prompt_inputs(self) -> list[Any]:
        """What the token table follows: the prompts and the edit type (and the inversion, whose prompt is the
        source when it is used)."""
        source, target, use_inversion, edit = self.form.components(
            ["source_prompt", "target_prompt", "use_inversion", "edit"])
        if self.inversion_state is None:
            return [source, target, edit]
        return [source, target, edit, use_inversion, self.inversion_state]

    def token_sliders(self) -> None:
        """One slider per target word, drawn when the prompts change; a slider writes its weight into the token
        table, the one source the edit (and the /p2p endpoint) reads."""
        inputs, token_table = self.prompt_inputs, self.form["reweights"]

        # one render at a time, in order: a late render of older prompts would replace newer sliders
        @gr.render(inputs=inputs, triggers=[c.change for c in inputs[:3]], concurrency_limit=1,
                   concurrency_id="p2p-slider-render", show_progress="hidden")
        def draw(*prompts: Any) -> None:
            rows = self.token_rows(*prompts)
            if not isinstance(rows, list):
                return
            with gr.Row(elem_id="p2p-sliders"):
                for j, (word, source_word, weight) in enumerate(rows):
                    label = word if source_word in (word, "") else f"{word} ← {source_word}"
                    weight_slider = gr.Slider(WEIGHT.low, WEIGHT.high, value=weight, step=WEIGHT.step, label=label,
                                              elem_id=f"p2p-weight-{j}", min_width=150, interactive=True)
                    gr.on([weight_slider.input, weight_slider.release], functools.partial(with_weight, j),
                          [weight_slider, token_table], token_table, **instant("p2p-sliders"))

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, structure_picture: dict | None = None,
            image_prompt_reference: np.ndarray | None = None, **values: Any) -> Iterator[Outputs]:
        """Edit the source image by its prompt: streams progress, previews, attention maps and the blend mask,
        then the source and edited images, their comparison and difference, the downloads and the settings.

        Parameters:
            structure_picture: the Structure panel's own picture (optional: its rows read this tab's image)
            image_prompt_reference: the image prompt's reference (with image_prompt_on)
        """
        # optional images (None by default, so API callers may leave them out): the panel reads them from values
        values.update(structure_picture=structure_picture, image_prompt_reference=image_prompt_reference)
        shown = Shown()

        def start(cancel: CancelToken) -> Iterator[Event]:
            shown.spec, shown.inversion = spec_from_values(values), chosen_inversion(values, NO_INVERSION)
            image = None if shown.inversion is None else np.asarray(shown.inversion.image.convert("RGB"))
            # no rows: an inversion made under structure edits under its own (the engine's rule)
            structure, images = self.structure_panel.structure(values, image, int(self.engine.native_size))
            shown.spec = personalized(replace(shown.spec, structure=structure), request)
            shown.settings = run_settings(self.engine, shown.spec, shown.inversion)
            size = None if shown.inversion is not None else (shown.spec.size or self.engine.native_size,) * 2
            warn_about_limits(self.engine, [shown.spec.source_prompt, shown.spec.target_prompt], size,
                              concepts=shown.spec.concepts)
            # checks input, no model work yet
            return engine_job(self.engine, "p2p", shown.spec, shown.inversion, structure_images=images, cancel=cancel)

        yield {self.hint: ""}  # the last edit's hint is not this one's
        yield from stream_job(self.name, request, self.status, start, lambda event: self.render(event, shown),
                              "Prompt-to-Prompt", results=self.results, partial=lambda: self.partial(shown))

    def render(self, event: Event, shown: Shown) -> Outputs | None:
        if isinstance(event, Preview):
            shown.previews = [np.asarray(image.convert("RGB")) for image in event.images]
            shown.preview_step = event.step
            return {self.images: [tagged(image, shown.settings, picture="preview", step=event.step)
                                  for image in event.images]}
        if isinstance(event, EditAttentionMaps):
            shown.maps = maps_state(event, shown.previews, shown.maps, int(self.engine.native_size))
            return {self.maps_state: shown.maps}
        if isinstance(event, Mask):
            return {self.mask_view: tagged(Image.fromarray(np.uint8(event.binary * 255)), shown.settings,
                                            picture="blend mask")}
        if isinstance(event, P2PResult):
            return self.result_outputs(event, shown)
        return None

    def result_outputs(self, result: P2PResult, shown: Shown) -> Outputs:
        source, edited = (tagged(image, result.settings, picture=picture)
                          for image, picture in zip(result.images, ("source", "edited")))
        finals = [np.asarray(image.convert("RGB")) for image in result.images]
        state = {**shown.maps, "images": finals, "settings": result.settings} if shown.maps else shown.maps
        mask = Image.fromarray(np.uint8(result.mask * 255)) if result.mask is not None else None
        text = (f"Done in {result.timings['total']:.1f} s · {result.unet_evaluations} UNet evaluations · "
                f"{1000 * result.seconds_per_step:.0f} ms per step")
        return {self.images: [(source, "source"), (edited, "edited")], self.status: done_html(text),
                self.compare: (result.images[0], result.images[1]),
                self.difference: tagged(difference(*result.images), result.settings, picture="difference"),
                self.maps_state: state, self.settings: result.settings,
                self.mask_view: tagged(mask, result.settings, picture="blend mask") if mask is not None else None,
                self.downloads: result_downloads(result, shown.maps), self.hint: hints.as_markdown(hints.p2p_hints(shown.spec, result, shown.inversion), IF_FAILED),
                self.sending: Sendable(finals[1], result.settings)}

    def partial(self, shown: Shown) -> Outputs:
        """A stopped edit offers its last previews (source and edited), carrying the run's settings and the step
        they show."""
        if shown.previews is None:
            return {}
        caption = f"partial · step {shown.preview_step}"
        return {self.images: [(tagged(image, shown.settings, picture="preview", stopped_at_step=shown.preview_step),
                               f"{name} ({caption})") for image, name in zip(shown.previews, ("source", "edited"))]}

    def token_rows(self, source: str, target: str, edit: str, use_inversion: bool = False,
                   inversion: Inversion | None = None) -> Any:
        """The token table for the prompts as typed (no model work); half-typed prompts keep the last table."""
        source = inversion.prompt if use_inversion and inversion is not None else source
        if not (source or "").strip():
            return gr.skip()
        try:
            prepared = prepare_edit(self.engine, P2PSpec(source, target or "", edit=edit), source)
        except StudioError:
            return gr.skip()
        return [[word, source_word, weight] for word, source_word, weight in prepared.table()]

    def receive(self, item: Sendable) -> dict[Any, Any]:
        """A generated image sent here: its prompt as source and target, its seed, steps and guidance (the edit
        redraws it from the same noise). Any other image is edited from its inversion."""
        settings = item.settings or {}
        if str(settings.get("job") or "") != "generate":
            raise gr.Error("Prompt-to-Prompt edits generated images (from their seed) or inverted ones: send this "
                           "image to Inversion first, invert it, then tick \"Edit the Inversion tab's image\" here.")
        source, target, seed, steps, guidance, use_inversion, _ = self.receives
        return {source: item.prompt, target: item.prompt, seed: settings.get("seed"), steps: settings.get("steps"),
                guidance: settings.get("guidance_scale"), use_inversion: False}

    def receive_mask(self, item: Sendable) -> dict[Any, Any]:
        """An attention map sent as a mask: its word becomes the local blend's word."""
        if not item.word:
            raise gr.Error("Only an attention map's word can steer the local blend: send a heat map of one word.")
        return {self.form["blend_words"]: item.word}

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        self.run_event = gr.on(
            [self.go.click, self.form["target_prompt"].submit], self.run, api_name="p2p", **JOB_EVENT,
            inputs_kwargs=with_inversion(self.form.inputs, self.inversion_state),
            outputs=[self.images, self.status, self.mask_view, self.settings, self.compare, self.difference,
                     self.downloads, self.hint, self.maps_state, self.sending])
        stop_button(self.stop, self.status, [self.run_event], tab=self.name, api_name="p2p_stop",
                    results=list(self.results))
        prompts = self.prompt_inputs
        gr.on([c.change for c in prompts[:3]], self.token_rows, prompts, self.form["reweights"],
              **instant("p2p-table"))
        pickers = [self.maps_state, self.word_pick]
        views = [self.word_pick, self.source_map, self.target_map, self.map_sending]
        self.maps_state.change(render_maps, pickers, views, **instant("p2p-view"))
        self.word_pick.input(lambda state, word: render_maps(state, word)[1:], pickers, views[1:],
                             **instant("p2p-view"))
        self.reuse_seed.click(reuse_seed, self.settings, self.form["seed"], **instant("p2p-seed"))
        self.load_settings.upload(self.read_settings, self.load_settings, self.form.restorable,
                                  api_name="p2p_read_settings", concurrency_id="settings")
        self.structure_panel.wire(self.form, self.engine)
        if self.inversion_state is not None:
            fixed = self.form.components(["source_prompt", "steps", "guidance_scale"])
            gr.on([self.form["use_inversion"].change, self.inversion_state.change], inversion_view,
                  [self.form["use_inversion"], self.inversion_state, self.kept_form, *fixed],
                  [*fixed, self.kept_form], **instant("p2p-inversion-view"))
