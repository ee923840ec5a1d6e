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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from studio import specs
from studio.attention.controllers import WordWindow
from studio.attention.maps import heat_map_overlay
from studio.editing.p2p import (
    EDIT_TYPES,
    SELF_LAYERS,
    STYLE_ALPHA,
    BLEND_THRESHOLD,
    WEIGHT,
    EditAttentionMaps,
    P2PResult,
    P2PSpec,
    prepare_edit,
)
from studio.errors import CancelledError, InvalidInputError, StudioError
from studio.events import Mask, Preview, Progress
from studio.prompt_weights import parse_weighted_prompt
from studio.ui.stream import SessionJobs, progress_html, session_id

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


@dataclass
class P2PTab:
    source_prompt: gr.Textbox
    target_prompt: gr.Textbox
    images: gr.Gallery
    settings: gr.JSON
    run: Any


def _rows(table: Any) -> list[list[Any]]:
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        return table.values.tolist()
    return [list(row) for row in table]


def reweights_from_table(table: Any, target_prompt: str) -> tuple[tuple[str, float], ...]:
    """(word, weight) for each token-table row whose weight differs from the prompt's own (syntax) weight."""
    weighted = parse_weighted_prompt(target_prompt or "", "Target prompt")
    pairs = []
    for row in _rows(table):
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
    rows = _rows(table)
    rows[row] = [*rows[row][:2], float(weight)]
    return rows


def windows_from_table(table: Any) -> tuple[WordWindow, ...]:
    windows = []
    for row in _rows(table):
        if not row or not str(row[0]).strip():
            continue
        try:
            windows.append(WordWindow(str(row[0]).strip(), float(row[1]), float(row[2])))
        except (TypeError, ValueError, IndexError):
            raise InvalidInputError(f"Word windows: the row for {row[0]!r} needs a start and a stop between 0 and 1.") from None
    return tuple(windows)


def spec_from_form(source_prompt: str, target_prompt: str, edit: str, seed: Any, steps: float, guidance_scale: float,
                   cross_start: float, cross_stop: float, self_start: float, self_stop: float, self_max_fraction: float,
                   style_alpha: float, word_windows: Any, token_table: Any, blend_words: str, blend_threshold: float,
                   blend_start: float) -> P2PSpec:
    if seed is None or (isinstance(seed, float) and np.isnan(seed)):
        raise InvalidInputError("Enter a seed (a whole number).")
    return P2PSpec(
        source_prompt=(source_prompt or "").strip(), target_prompt=(target_prompt or "").strip(), edit=edit,
        seed=int(seed), steps=int(steps), guidance_scale=float(guidance_scale),
        cross_start=float(cross_start), cross_stop=float(cross_stop), self_start=float(self_start),
        self_stop=float(self_stop), self_max_fraction=float(self_max_fraction), style_alpha=float(style_alpha),
        word_windows=windows_from_table(word_windows), reweights=reweights_from_table(token_table, target_prompt),
        blend_words=tuple(w.strip() for w in (blend_words or "").split(",") if w.strip()),
        blend_threshold=float(blend_threshold), blend_start=float(blend_start),
    )


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


def build_p2p_tab(engine: Any, inversion_state: gr.State | None = None) -> P2PTab:
    """Lay out the tab inside the current gr.Tab; `inversion_state` holds the Inversion tab's latest
    Inversion (or None) for editing a real image."""
    jobs = SessionJobs()

    # 1. layout ---------------------------------------------------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            source_prompt = gr.Textbox(label="Source prompt", lines=1, elem_id="p2p-source",
                                       placeholder="a big red circle on a blue background")
            target_prompt = gr.Textbox(label="Target prompt", lines=1, elem_id="p2p-target",
                                       placeholder="a big red square on a blue background — weights as (word:1.3)")
            use_inversion = gr.Checkbox(
                label="Edit the Inversion tab's image (its prompt is the source prompt)", value=False,
                elem_id="p2p-use-inversion", visible=inversion_state is not None,
            )
            edit = gr.Radio(list(EDIT_TYPES), value=DEFAULTS.edit, label="Edit", elem_id="p2p-edit",
                            info="word swap: same word count; refine: insert, delete or reorder words; style: blend maps")
            with gr.Row():
                go = gr.Button("Edit", variant="primary", elem_id="p2p-go", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="p2p-stop", scale=1)
            token_table = gr.Dataframe(
                value=[], headers=list(TOKEN_COLUMNS), datatype=["str", "str", "number"], type="array",
                column_count=(3, "fixed"), interactive=True, label="Tokens (re-weight with the sliders or in the table)",
                elem_id="p2p-tokens",
            )

            # One slider per target word, drawn when the prompts change; a slider writes its weight into
            # the table, the one source the edit (and the /p2p endpoint) reads.
            prompt_inputs = [source_prompt, target_prompt, edit]
            if inversion_state is not None:
                prompt_inputs += [use_inversion, inversion_state]

            # one render at a time, in order: a late render of older prompts would replace newer sliders
            @gr.render(inputs=prompt_inputs, triggers=[c.change for c in prompt_inputs[:3]], concurrency_limit=1,
                       concurrency_id="p2p-slider-render", show_progress="hidden")
            def token_sliders(*prompts: Any) -> None:
                rows = token_rows(*prompts)
                if not isinstance(rows, list):
                    return
                with gr.Row(elem_id="p2p-sliders"):
                    for j, (word, source_word, weight) in enumerate(rows):
                        label = word if source_word in (word, "") else f"{word} ← {source_word}"
                        slider = gr.Slider(WEIGHT.low, WEIGHT.high, value=weight, step=WEIGHT.step, label=label,
                                           elem_id=f"p2p-weight-{j}", min_width=150, interactive=True)
                        gr.on([slider.input, slider.release], functools.partial(with_weight, j), [slider, token_table],
                              token_table, api_visibility="private", concurrency_limit=None,
                              concurrency_id="p2p-sliders", show_progress="hidden")
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=specs.SEED.low, maximum=specs.SEED.high,
                                 elem_id="p2p-seed")
                steps = gr.Slider(specs.STEPS.low, specs.STEPS.high, value=DEFAULTS.steps, step=1, label="Steps",
                                  elem_id="p2p-steps")
                guidance_scale = gr.Slider(specs.GUIDANCE.low, specs.GUIDANCE.high, value=DEFAULTS.guidance_scale,
                                           step=specs.GUIDANCE.step, label=specs.GUIDANCE.label, elem_id="p2p-guidance")
            with gr.Accordion("Windows (fractions of the run)", open=True):
                with gr.Row():
                    cross_start = gr.Number(DEFAULTS.cross_start, label="Cross-attention start", minimum=0, maximum=1, step=0.05, elem_id="p2p-cross-start")
                    cross_stop = gr.Number(DEFAULTS.cross_stop, label="Cross-attention stop", minimum=0, maximum=1, step=0.05, elem_id="p2p-cross-stop")
                    self_start = gr.Number(DEFAULTS.self_start, label="Self-attention start", minimum=0, maximum=1, step=0.05, elem_id="p2p-self-start")
                    self_stop = gr.Number(DEFAULTS.self_stop, label="Self-attention stop", minimum=0, maximum=1, step=0.05, elem_id="p2p-self-stop")
                self_max_fraction = gr.Slider(SELF_LAYERS.low, SELF_LAYERS.high, value=DEFAULTS.self_max_fraction,
                                              step=SELF_LAYERS.step, label=SELF_LAYERS.label, elem_id="p2p-self-layers")
                word_windows = gr.Dataframe(
                    value=[], headers=list(WINDOW_COLUMNS), datatype=["str", "number", "number"], type="array",
                    column_count=(3, "fixed"), interactive=True, label="Per-word cross-attention windows",
                    elem_id="p2p-word-windows",
                )
                style_alpha = gr.Slider(STYLE_ALPHA.low, STYLE_ALPHA.high, value=DEFAULTS.style_alpha, step=STYLE_ALPHA.step,
                                        label="Style alpha (style edit: share of the target's own maps)", elem_id="p2p-style-alpha")
            with gr.Accordion("Local blend", open=True):
                blend_words = gr.Textbox("", label="Words (comma-separated, from either prompt)", elem_id="p2p-blend-words")
                with gr.Row():
                    blend_threshold = gr.Slider(BLEND_THRESHOLD.low, BLEND_THRESHOLD.high, value=DEFAULTS.blend_threshold,
                                                step=BLEND_THRESHOLD.step, label=BLEND_THRESHOLD.label, elem_id="p2p-blend-threshold")
                    blend_start = gr.Slider(0, 1, value=DEFAULTS.blend_start, step=0.05, label="Blend from",
                                            elem_id="p2p-blend-start")
        with gr.Column(scale=6, min_width=360):
            status = gr.HTML(progress_html(0, 0, "Ready.", "idle"), elem_id="p2p-status")
            images = gr.Gallery(label="Source | edited", columns=2, height=300, format="png", object_fit="contain",
                                elem_id="p2p-images")
            word_pick = gr.Radio(choices=[], label="Attention for target word", elem_id="p2p-word")
            with gr.Row():
                source_map = gr.Image(label="Source attention", format="png", interactive=False, elem_id="p2p-source-map", height=220)
                target_map = gr.Image(label="Edited attention (fused map)", format="png", interactive=False,
                                      elem_id="p2p-target-map", height=220)
                mask_view = gr.Image(label="Local-blend mask", format="png", interactive=False, elem_id="p2p-mask", height=220)
            settings = gr.JSON(label="Settings of this result", elem_id="p2p-settings", height=200)
    maps_state = gr.State(None)

    # 2. handlers ---------------------------------------------------------------------------
    def token_rows(source: str, target: str, edit_type: str, use_inv: bool = False, inversion: Any = None) -> Any:
        """The token table for the prompts as typed (no model work); half-typed prompts keep the last table."""
        source = inversion.prompt if use_inv and inversion is not None else source
        if not (source or "").strip():
            return gr.skip()
        try:
            prepared = prepare_edit(engine, P2PSpec(source, target or "", edit=edit_type), source)
        except StudioError:
            return gr.skip()
        return [[word, source_word, weight] for word, source_word, weight in prepared.table()]

    def run_edit(source: str, target: str = "", edit_type: str = DEFAULTS.edit, seed_value: Any = 0,
                 steps_value: float = DEFAULTS.steps, guidance: float = DEFAULTS.guidance_scale,
                 c_start: float = DEFAULTS.cross_start, c_stop: float = DEFAULTS.cross_stop,
                 s_start: float = DEFAULTS.self_start, s_stop: float = DEFAULTS.self_stop,
                 s_fraction: float = DEFAULTS.self_max_fraction, alpha: float = DEFAULTS.style_alpha,
                 windows: Any = None, tokens: Any = None, words: str = "", threshold: float = DEFAULTS.blend_threshold,
                 b_start: float = DEFAULTS.blend_start, use_inv: bool = False, inversion: Any = None,
                 request: gr.Request = None) -> Iterator[tuple]:
        """Edit; streams progress, previews, attention maps and the blend mask.
        Returns (images, status HTML, maps state, mask, settings)."""
        skip = gr.skip()
        try:
            spec = spec_from_form(source, target, edit_type, seed_value, steps_value, guidance, c_start, c_stop,
                                  s_start, s_stop, s_fraction, alpha, windows, tokens, words, threshold, b_start)
            if use_inv and inversion is None:
                raise InvalidInputError("The Inversion tab has no inversion yet: invert an image there first.")
        except StudioError as error:
            raise gr.Error(str(error)) from error
        session = session_id(request)
        job = jobs.start(session, spec.steps)
        try:
            events = engine.p2p(spec, inversion if use_inv else None, job.cancel)  # checks input, no model work yet
        except StudioError as error:
            jobs.finish(session, job)
            raise gr.Error(str(error)) from error
        started, step, total = time.monotonic(), 0, spec.steps
        state: dict | None = None
        previews: list[np.ndarray] | None = None
        try:
            yield skip, progress_html(0, total, "Starting…"), skip, skip, skip
            for event in events:
                if isinstance(event, Progress):
                    step, total = event.step, event.total
                    job.step, job.total = step, total
                    text = event.message or f"Step {step} / {total} · {time.monotonic() - started:.1f} s"
                    yield skip, progress_html(step, total, text), skip, skip, skip
                elif isinstance(event, Preview):
                    previews = [np.asarray(image.convert("RGB")) for image in event.images]
                    yield event.images, skip, skip, skip, skip
                elif isinstance(event, EditAttentionMaps):
                    state = _maps_state(event, previews, state, engine)
                    yield skip, skip, state, skip, skip
                elif isinstance(event, Mask):
                    yield skip, skip, skip, Image.fromarray(np.uint8(event.binary * 255)), skip
                elif isinstance(event, P2PResult):
                    finals = [np.asarray(image.convert("RGB")) for image in event.images]
                    state = {**state, "images": finals} if state else state
                    mask = Image.fromarray(np.uint8(event.mask * 255)) if event.mask is not None else None
                    text = (f"Done in {event.timings['total']:.1f} s · {event.unet_evaluations} UNet evaluations · "
                            f"{1000 * event.settings['seconds_per_step']:.0f} ms per step")
                    yield (list(zip(event.images, ["source", "edited"])), progress_html(total, total, text, "done"),
                           state, mask, event.settings)
        except CancelledError as error:
            yield skip, progress_html(step, total, f"Stopped: {error}", "stopped"), skip, skip, skip
        except StudioError as error:
            yield skip, progress_html(step, total, str(error), "failed"), skip, skip, skip
            raise gr.Error(str(error)) from error
        finally:
            job.cancel.cancel()
            if hasattr(events, "close"):
                events.close()
            jobs.finish(session, job)

    def stop_job(request: gr.Request) -> Any:
        job = jobs.cancel(session_id(request))
        return gr.skip() if job is None else progress_html(job.step, job.total, f"Stopped after step {job.step}.", "stopped")

    # 3. wiring -----------------------------------------------------------------------------
    extra_inputs = [use_inversion, inversion_state] if inversion_state is not None else []
    form = [source_prompt, target_prompt, edit, seed, steps, guidance_scale, cross_start, cross_stop, self_start,
            self_stop, self_max_fraction, style_alpha, word_windows, token_table, blend_words, blend_threshold,
            blend_start, *extra_inputs]
    run = gr.on([go.click, target_prompt.submit], run_edit, form, [images, status, maps_state, mask_view, settings],
                api_name="p2p", concurrency_id="model", show_progress="hidden")
    stop.click(stop_job, None, status, cancels=[run], api_name="p2p_stop", api_visibility="undocumented",
               concurrency_limit=None, concurrency_id="stop", show_progress="hidden")
    gr.on([c.change for c in prompt_inputs[:3]], token_rows, prompt_inputs, token_table, api_visibility="private",
          concurrency_limit=None, concurrency_id="p2p-table", show_progress="hidden")
    view = dict(concurrency_limit=None, concurrency_id="p2p-view", show_progress="hidden", api_visibility="private")
    maps_state.change(render_maps, [maps_state, word_pick], [word_pick, source_map, target_map], **view)
    word_pick.input(lambda s, w: render_maps(s, w)[1:], [maps_state, word_pick], [source_map, target_map], **view)
    gr.Examples(EXAMPLES, [source_prompt, target_prompt, edit, seed, cross_stop, self_stop, blend_words],
                label="Edits on the embedded model", elem_id="p2p-examples")
    return P2PTab(source_prompt=source_prompt, target_prompt=target_prompt, images=images, settings=settings, run=run)


def _maps_state(event: EditAttentionMaps, previews: list[np.ndarray] | None, previous: dict | None, engine: Any) -> dict:
    if previews is None:
        previews = previous["images"] if previous else [np.full((engine.native_size,) * 2 + (3,), 96, np.uint8)] * 2
    # which source word each target word's map came from, for the side-by-side view
    return {
        "source": {"tokens": list(event.source.tokens), "maps": np.asarray(event.source.maps)},
        "target": {"tokens": list(event.target.tokens), "maps": np.asarray(event.target.maps)},
        "aligned": list(event.aligned),
        "images": previews,
    }
