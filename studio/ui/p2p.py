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
from dataclasses import dataclass
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
from studio.errors import InvalidInputError, StudioError
from studio.events import CancelToken, EditAttentionMaps, Event, Mask, P2PResult, Preview
from studio.inversion import Inversion
from studio.prompt_weights import parse_weighted_prompt
from studio.ui.form import Field, number, optional_whole, seed_from_form, seed_box, slider, spec_values, text, textbox
from studio.ui.parts import Tab, chosen_inversion, instant, settings_view, table_rows, with_inversion
from studio.ui.stream import JOB_EVENT, Outputs, done_html, run_and_stop, status_box, stop_button, stream_job

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


def render_maps(state: dict | None, word: str | None) -> tuple[Any, Any, Any]:
    """Word picker and the (source, target) heat maps for the picked target word."""
    if not state:
        return gr.update(choices=[], value=None), None, None
    target_words: list[str] = state["target"]["tokens"]
    if word not in target_words:
        word = next((w for w, s in zip(target_words, state["aligned"]) if s != w), target_words[0] if target_words else None)
    if word is None:
        return gr.update(choices=[], value=None), None, None
    j = target_words.index(word)
    source_word = state["aligned"][j]
    source_tokens: list[str] = state["source"]["tokens"]
    i = source_tokens.index(source_word) if source_word in source_tokens else None
    source_view = heat_map_overlay(Image.fromarray(state["images"][0]), state["source"]["maps"][i]) if i is not None else None
    target_view = heat_map_overlay(Image.fromarray(state["images"][1]), state["target"]["maps"][j])
    return gr.update(choices=target_words, value=word), source_view, target_view


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


FIELDS = (
    Field("source_prompt", textbox(label="Source prompt", lines=1, elem_id="p2p-source",
                                   placeholder="a big red circle on a blue background"), stripped),
    Field("target_prompt", textbox(
        label="Target prompt", lines=1, elem_id="p2p-target",
        placeholder="a big red square on a blue background — weights as (word:1.3)"), stripped),
    Field("use_inversion", lambda engine: gr.Checkbox(
        label="Edit the Inversion tab's image (its prompt is the source prompt)", value=False,
        elem_id="p2p-use-inversion"), in_spec=False),
    Field("edit", lambda engine: gr.Radio(
        list(EDIT_TYPES), value=DEFAULTS.edit, label="Edit", elem_id="p2p-edit",
        info="word swap: same word count; refine: insert, delete or reorder words; style: blend maps"), str),
    # the target's words, the source word each takes its attention from, and its re-weight (P2PSpec.reweights,
    # which reweights_from_table reads beside the target prompt's own (word:1.3) weights)
    Field("reweights", lambda engine: gr.Dataframe(
        value=[], headers=list(TOKEN_COLUMNS), datatype=["str", "str", "number"], type="array",
        column_count=(3, "fixed"), interactive=True, label="Tokens (re-weight with the sliders or in the table)",
        elem_id="p2p-tokens"), in_spec=False),
    Field("seed", seed_box("p2p-seed"), optional_whole),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, elem_id="p2p-steps"), int),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="p2p-guidance"), float),
    Field("cross_start", number(specs.START, DEFAULTS.cross_start,
                                       label="Cross-attention start", elem_id="p2p-cross-start"), float),
    Field("cross_stop", number(specs.STOP, DEFAULTS.cross_stop,
                                      label="Cross-attention stop", elem_id="p2p-cross-stop"), float),
    Field("self_start", number(specs.START, DEFAULTS.self_start,
                                      label="Self-attention start", elem_id="p2p-self-start"), float),
    Field("self_stop", number(specs.STOP, DEFAULTS.self_stop,
                                     label="Self-attention stop", elem_id="p2p-self-stop"), float),
    Field("self_max_fraction", slider(SELF_LAYERS, DEFAULTS.self_max_fraction, elem_id="p2p-self-layers"), float),
    Field("word_windows", lambda engine: gr.Dataframe(
        value=[], headers=list(WINDOW_COLUMNS), datatype=["str", "number", "number"], type="array",
        column_count=(3, "fixed"), interactive=True, label="Per-word cross-attention windows",
        elem_id="p2p-word-windows"), windows_from_table),
    Field("style_alpha", slider(STYLE_ALPHA, DEFAULTS.style_alpha, label="Style alpha (style edit: share of the "
                                "target's own maps)", elem_id="p2p-style-alpha"), float),
    Field("blend_words", textbox(label="Words (comma-separated, from either prompt)", elem_id="p2p-blend-words"),
          words),
    Field("blend_threshold", slider(BLEND_THRESHOLD, DEFAULTS.blend_threshold, elem_id="p2p-blend-threshold"), float),
    Field("blend_start", slider(specs.START, DEFAULTS.blend_start, label="Blend from", elem_id="p2p-blend-start"), float),
)


def spec_from_values(values: Mapping[str, Any]) -> P2PSpec:
    parsed = spec_values(FIELDS, values)
    parsed["seed"] = seed_from_form(parsed.get("seed"))
    parsed["reweights"] = reweights_from_table(values.get("reweights"), parsed.get("target_prompt", ""))
    return P2PSpec(**parsed)


# --------------------------------------------------------------------------------------------
# The tab


@dataclass
class Shown:
    """What one run has shown so far: the latest previews (under the heat maps) and the attention-map state."""

    previews: list[np.ndarray] | None = None
    maps: dict | None = None


class P2PTab(Tab):
    """The Prompt-to-Prompt tab (the shape of every tab: `parts.Tab`)."""

    fields = FIELDS

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                *_, use_inversion, edit = form.place("source_prompt", "target_prompt", "use_inversion", "edit")
                use_inversion.visible = self.inversion_state is not None
                self.go, self.stop = run_and_stop("Edit", "p2p-go", "p2p-stop")
                form.place("reweights")
                self.token_sliders()
                with gr.Row():
                    form.place("seed", "steps", "guidance_scale")
                with gr.Accordion("Windows (fractions of the run)", open=True):
                    with gr.Row():
                        form.place("cross_start", "cross_stop", "self_start", "self_stop")
                    form.place("self_max_fraction", "word_windows", "style_alpha")
                with gr.Accordion("Local blend", open=True):
                    form.place("blend_words")
                    with gr.Row():
                        form.place("blend_threshold", "blend_start")
            with gr.Column(scale=6, min_width=360):
                self.status = status_box("p2p-status")
                self.images = gr.Gallery(label="Source | edited", columns=2, height=300, format="png",
                                         object_fit="contain", elem_id="p2p-images")
                self.word_pick = gr.Radio(choices=[], label="Attention for target word", elem_id="p2p-word")
                with gr.Row():
                    self.source_map = gr.Image(label="Source attention", format="png", interactive=False,
                                               elem_id="p2p-source-map", height=220)
                    self.target_map = gr.Image(label="Edited attention (fused map)", format="png", interactive=False,
                                               elem_id="p2p-target-map", height=220)
                    self.mask_view = gr.Image(label="Local-blend mask", format="png", interactive=False,
                                              elem_id="p2p-mask", height=220)
                self.settings = settings_view("p2p-settings")
        self.maps_state = gr.State(None)
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
    def run(self, request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Edit the source image by its prompt: streams progress, previews, attention maps and the blend mask,
        then the source and edited images and the settings."""
        shown = Shown()

        def start(cancel: CancelToken) -> Iterator[Event]:
            spec, inversion = spec_from_values(values), chosen_inversion(values, NO_INVERSION)
            return self.engine.p2p(spec, inversion, cancel)  # checks input, no model work yet

        yield from stream_job("p2p", request, self.status, start, lambda event: self.render(event, shown),
                              "Prompt-to-Prompt")

    def render(self, event: Event, shown: Shown) -> Outputs | None:
        if isinstance(event, Preview):
            shown.previews = [np.asarray(image.convert("RGB")) for image in event.images]
            return {self.images: event.images}
        if isinstance(event, EditAttentionMaps):
            shown.maps = maps_state(event, shown.previews, shown.maps, int(self.engine.native_size))
            return {self.maps_state: shown.maps}
        if isinstance(event, Mask):
            return {self.mask_view: Image.fromarray(np.uint8(event.binary * 255))}
        if isinstance(event, P2PResult):
            finals = [np.asarray(image.convert("RGB")) for image in event.images]
            state = {**shown.maps, "images": finals} if shown.maps else shown.maps
            mask = Image.fromarray(np.uint8(event.mask * 255)) if event.mask is not None else None
            text = (f"Done in {event.timings['total']:.1f} s · {event.unet_evaluations} UNet evaluations · "
                    f"{1000 * event.seconds_per_step:.0f} ms per step")
            return {self.images: list(zip(event.images, ["source", "edited"])), self.status: done_html(text),
                    self.maps_state: state, self.mask_view: mask, self.settings: event.settings}
        return None

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

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        self.run_event = gr.on(
            [self.go.click, self.form["target_prompt"].submit], self.run, api_name="p2p", **JOB_EVENT,
            inputs_kwargs=with_inversion(self.form.inputs, self.inversion_state),
            outputs=[self.images, self.status, self.maps_state, self.mask_view, self.settings])
        stop_button(self.stop, self.status, [self.run_event], tab="p2p", api_name="p2p_stop")
        prompts = self.prompt_inputs
        gr.on([c.change for c in prompts[:3]], self.token_rows, prompts, self.form["reweights"],
              **instant("p2p-table"))
        pickers, maps = [self.maps_state, self.word_pick], [self.source_map, self.target_map]
        self.maps_state.change(render_maps, pickers, [self.word_pick, *maps], **instant("p2p-view"))
        self.word_pick.input(lambda state, word: render_maps(state, word)[1:], pickers, maps, **instant("p2p-view"))
