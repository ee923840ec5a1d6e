"""The Generate tab: text-to-image with a live preview, a Stop button and live cross-attention maps.

Layout and handlers only. The form holds global guidance too (issue #4): a condition table (prompt,
signed weight, schedule, exponent, start/stop), guidance rescale, a classifier-guidance panel shown
only when the model has a classifier, and a plot of every weight over the steps (from
`engine.guidance_plan`, i.e. exactly what the sampler will apply). The handler turns the form into a typed `GenerateSpec`, runs
`engine.generate(spec, cancel)` and renders each event it yields:

    Progress       -> progress bar text
    Preview        -> live preview image (and the image under the heat map)
    AttentionMaps  -> attention state -> token picker + heat-map overlay (rendered by a .change event)
    Result         -> gallery (PNGs carrying their settings), settings JSON, PNG downloads

Endpoints: ``/generate`` (streams; the last message holds the result) and ``/read_settings``
(settings from a PNG made here, or one with A1111 ``parameters``).
"""

from __future__ import annotations

import html
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np
import pandas as pd  # gr.Dataframe hands tables over as DataFrames unless type='array'
from PIL import Image

from studio import specs
from studio.attention.maps import heat_map_overlay
from studio.errors import CancelledError, InvalidInputError, StudioError
from studio.events import AttentionMaps, Preview, Progress, Result
from studio.specs import ClassifierGuidanceSpec, Condition, GenerateSpec
from studio.plots import line_chart
from studio import png_settings
from studio.ui.stream import SessionJobs, progress_html, session_id

log = logging.getLogger(__name__)

DEFAULTS = GenerateSpec(prompt="")
CLASSIFIER_DEFAULTS = ClassifierGuidanceSpec(target="")
CONDITION_COLUMNS = ("prompt", "weight", "schedule", "exponent", "start", "stop")
CONDITION_DEFAULTS = Condition(prompt="")
NO_CLASSIFIER = "none"  # the classifier-target choice that turns classifier guidance off
# "Compose": two background sub-prompts trading off against the prompt's red circle.
COMPOSE_EXAMPLES = [
    ["a big red circle", [["a blue background", 4.0, "constant", 0.5, 0.0, 1.0],
                          ["a yellow background", -2.0, "constant", 0.5, 0.0, 1.0]], 5.0],
    ["a big red circle", [["a blue background", -2.0, "constant", 0.5, 0.0, 1.0],
                          ["a yellow background", 4.0, "snr", 0.5, 0.0, 1.0]], 5.0],
]
# Words a heat map is rarely wanted for; the picker starts on the first other word.
_FUNCTION_WORDS = frozenset({"a", "an", "the", "and", "on", "in", "of", "with", "at", "to"})


# --------------------------------------------------------------------------------------------
# Rendering helpers (pure)


def _default_token(tokens: list[str]) -> int:
    for index, word in enumerate(tokens):
        if word.lower() not in _FUNCTION_WORDS:
            return index
    return 0


ALL_LAYERS = 0  # resolution picker value for "all resolutions, upsampled and averaged"


def render_attention(attention: dict | None, token: int | None, resolution: int | None = ALL_LAYERS) -> tuple[Any, Any, Any]:
    """Word picker, resolution picker and heat-map image for the attention state and the picks."""
    if not attention:
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None), None
    tokens: list[str] = attention["tokens"]
    if token is None or not (0 <= int(token) < len(tokens)):
        token = _default_token(tokens)
    token = int(token)
    per_resolution: dict[int, np.ndarray] = attention.get("per_resolution") or {}
    if resolution not in per_resolution:
        resolution = ALL_LAYERS
    maps = attention["maps"] if resolution == ALL_LAYERS else per_resolution[resolution]
    overlay = heat_map_overlay(Image.fromarray(attention["image"]), maps[token])
    word_choices = [(word, index) for index, word in enumerate(tokens)]
    resolution_choices = [("all", ALL_LAYERS)] + [(f"{size}×{size}", size) for size in sorted(per_resolution, reverse=True)]
    return gr.update(choices=word_choices, value=token), gr.update(choices=resolution_choices, value=resolution), overlay


# --------------------------------------------------------------------------------------------
# Form <-> spec


def spec_from_form(
    prompt: str,
    negative_prompt: str,
    seed: float | None,
    random_seed: bool,
    steps: float,
    guidance_scale: float,
    scheduler: str,
    width: float,
    height: float,
    batch_size: float,
    show_attention: bool,
    conditions: Any = None,
    guidance_rescale: float = 0.0,
    classifier_target: str | None = NO_CLASSIFIER,
    classifier_strength: float = CLASSIFIER_DEFAULTS.strength,
    classifier_schedule: str = CLASSIFIER_DEFAULTS.schedule,
    classifier_exponent: float = CLASSIFIER_DEFAULTS.exponent,
    classifier_start: float = CLASSIFIER_DEFAULTS.start,
    classifier_stop: float = CLASSIFIER_DEFAULTS.stop,
) -> GenerateSpec:
    """The typed spec for the form's values; the engine validates ranges."""
    if not random_seed and seed is None:
        raise InvalidInputError("Enter a seed, or tick 'random seed'.")
    classifier = None
    if classifier_target and classifier_target != NO_CLASSIFIER:
        classifier = ClassifierGuidanceSpec(
            target=classifier_target, strength=float(classifier_strength), schedule=classifier_schedule,
            exponent=float(classifier_exponent), start=float(classifier_start), stop=float(classifier_stop),
        )
    return GenerateSpec(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        seed=None if random_seed else int(seed),
        steps=int(steps),
        guidance_scale=float(guidance_scale),
        scheduler=scheduler,
        width=int(width),
        height=int(height),
        batch_size=int(batch_size),
        capture_attention=bool(show_attention),
        conditions=conditions_from_table(conditions),
        guidance_rescale=float(guidance_rescale or 0.0),
        classifier_guidance=classifier,
    )


def _rows(table: Any) -> list[list[Any]]:
    """Rows of a gr.Dataframe value: a list of lists (type="array"), a DataFrame, or the API's dict."""
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        return table.values.tolist()
    if isinstance(table, dict):
        return [list(row) for row in table.get("data") or []]
    return [list(row) for row in table]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value.strip())


def _number(value: Any, default: float, row: int, column: str) -> float:
    if _empty(value):
        return default
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"Condition {row}: {column} {value!r} is not a number.") from error


def conditions_from_table(table: Any) -> tuple[Condition, ...]:
    """The condition table as typed Conditions; empty cells take the defaults, wholly empty rows are
    skipped. Range checks are the engine's (GenerateSpec.validate), with the row in the message."""
    conditions = []
    for row, cells in enumerate(_rows(table), start=1):
        cells = (list(cells) + [None] * len(CONDITION_COLUMNS))[: len(CONDITION_COLUMNS)]
        prompt, weight, schedule, exponent, start, stop = cells
        if all(_empty(cell) or cell == 0 for cell in cells):
            continue
        defaults = CONDITION_DEFAULTS
        conditions.append(Condition(
            prompt="" if _empty(prompt) else str(prompt),
            weight=_number(weight, defaults.weight, row, "weight"),
            schedule=defaults.schedule if _empty(schedule) else str(schedule).strip(),
            exponent=_number(exponent, defaults.exponent, row, "exponent"),
            start=_number(start, defaults.start, row, "start"),
            stop=_number(stop, defaults.stop, row, "stop"),
        ))
    return tuple(conditions)


def table_from_conditions(conditions: Any) -> list[list[Any]]:
    """Settings' conditions (dicts or Conditions) as table rows, for restoring a PNG's settings."""
    rows = []
    for condition in conditions or ():
        if isinstance(condition, dict):
            condition = Condition(**condition)
        rows.append([getattr(condition, column) for column in CONDITION_COLUMNS])
    return rows


def weight_plot(labels: list[str], weights: Any, classifier_strengths: Any = None, classifier_target: str = "") -> Image.Image:
    """Chart of a GuidancePlan: each condition's signed weight per step (steps from 1), and the classifier
    strength s(t) when classifier guidance is on."""
    weights = np.asarray(weights, dtype=np.float64)  # (N, K)
    steps = list(range(1, len(weights) + 1))
    series = {
        ("prompt (guidance scale)" if k == 0 else f"{k}: {label}"): (steps, weights[:, k].tolist())
        for k, label in enumerate(labels)
    }
    if classifier_strengths is not None:
        series[f"classifier strength s(t): {classifier_target}"] = (steps, np.asarray(classifier_strengths).tolist())
    return line_chart(series, x_label="step", y_label="weight per step", size=(460, 200), markers=len(steps) <= 12)


def _round_up(value: float, multiple: int) -> int:
    return int(-(-value // multiple) * multiple)


# --------------------------------------------------------------------------------------------
# The tab


@dataclass
class GenerateTab:
    """Handles on the tab's components (tests and app.py refer to them)."""

    prompt: gr.Textbox
    gallery: gr.Gallery
    settings: gr.JSON
    run: Any  # the /generate event (Dependency)


def build_generate_tab(engine: Any) -> GenerateTab:
    """Lay out the Generate tab inside the current gr.Blocks/gr.Tab and wire its events."""
    jobs = SessionJobs()
    native = int(engine.native_size)
    multiple = int(engine.size_multiple)
    size_low = _round_up(specs.SIZE.low, multiple)

    # 1. layout ---------------------------------------------------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            prompt = gr.Textbox(
                label="Prompt",
                placeholder="a big red circle on the left and a small blue square on the right",
                lines=2,
                elem_id="prompt",
            )
            negative_prompt = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate-btn", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
            with gr.Row():
                seed = gr.Number(
                    label="Seed",
                    value=0,
                    precision=0,
                    minimum=specs.SEED.low,
                    maximum=specs.SEED.high,
                    elem_id="seed",
                    scale=3,
                )
                with gr.Column(scale=2, min_width=120):
                    random_seed = gr.Checkbox(label="Random seed", value=True, elem_id="random-seed")
                    reuse_seed = gr.Button("Reuse last seed", size="sm", elem_id="reuse-seed")
            steps = gr.Slider(specs.STEPS.low, specs.STEPS.high, value=DEFAULTS.steps, step=specs.STEPS.step, label=specs.STEPS.label, elem_id="steps")
            guidance_scale = gr.Slider(
                specs.GUIDANCE.low, specs.GUIDANCE.high, value=DEFAULTS.guidance_scale, step=specs.GUIDANCE.step,
                label=specs.GUIDANCE.label, elem_id="guidance",
            )
            scheduler = gr.Dropdown(list(specs.SCHEDULERS), value=DEFAULTS.scheduler, label="Scheduler", elem_id="scheduler")
            with gr.Accordion("Global guidance: conditions, rescale, classifier", open=True, elem_id="global-guidance"):
                conditions = gr.Dataframe(
                    value=[], headers=list(CONDITION_COLUMNS), datatype=["str", "number", "str", "number", "number", "number"],
                    column_count=(len(CONDITION_COLUMNS), "fixed"), type="array", interactive=True, label="Conditions",
                    show_label=True, elem_id="conditions", column_widths=["34%", "14%", "18%", "12%", "11%", "11%"],
                )
                gr.Markdown(
                    "Each row adds *w(t)·(ε<sub>row</sub> − ε<sub>uncond</sub>)* to the prompt's guidance; a negative "
                    f"weight ({specs.CONDITION_WEIGHT.low:g} to {specs.CONDITION_WEIGHT.high:g}) steers away from the row. "
                    f"Schedules: {', '.join(specs.GUIDANCE_SCHEDULES)} (snr: SNR(t)<sup>exponent</sup>, "
                    "sigma: σ(t)<sup>−exponent</sup>); start/stop are fractions of the run. "
                    "The negative prompt above replaces ε<sub>uncond</sub> for every row. "
                    "Each row adds one prediction per image to every (batched) UNet call.",
                    elem_id="conditions-help",
                )
                initial = engine.guidance_plan(GenerateSpec(prompt="prompt"))
                weight_plot_view = gr.Image(
                    weight_plot(initial.labels, initial.weights.numpy()), type="pil", format="png", interactive=False,
                    label="Weight of each condition per step", elem_id="weight-plot", buttons=[],
                )
                guidance_rescale = gr.Slider(
                    specs.GUIDANCE_RESCALE.low, specs.GUIDANCE_RESCALE.high, value=DEFAULTS.guidance_rescale,
                    step=specs.GUIDANCE_RESCALE.step, label=specs.GUIDANCE_RESCALE.label, elem_id="guidance-rescale",
                    info="Match the guided image estimate's spread to the prompt's (Lin et al. 2023): less over-saturation at high weights.",
                )
                targets = list(engine.classifier_targets)
                with gr.Group(visible=bool(targets), elem_id="classifier-panel"):
                    with gr.Row():
                        classifier_target = gr.Dropdown(
                            [NO_CLASSIFIER, *targets], value=NO_CLASSIFIER, label="Classifier guidance: target",
                            elem_id="classifier-target", scale=2,
                        )
                        classifier_strength = gr.Slider(
                            specs.CLASSIFIER_STRENGTH.low, specs.CLASSIFIER_STRENGTH.high, value=CLASSIFIER_DEFAULTS.strength,
                            step=specs.CLASSIFIER_STRENGTH.step, label=specs.CLASSIFIER_STRENGTH.label,
                            elem_id="classifier-strength", scale=3,
                        )
                    with gr.Row():
                        classifier_schedule = gr.Dropdown(
                            list(specs.GUIDANCE_SCHEDULES), value=CLASSIFIER_DEFAULTS.schedule, label="Schedule",
                            elem_id="classifier-schedule", min_width=100,
                        )
                        classifier_exponent = gr.Number(
                            CLASSIFIER_DEFAULTS.exponent, label="Exponent", minimum=specs.SCHEDULE_EXPONENT.low,
                            maximum=specs.SCHEDULE_EXPONENT.high, step=specs.SCHEDULE_EXPONENT.step,
                            elem_id="classifier-exponent", min_width=80,
                        )
                        classifier_start = gr.Number(
                            CLASSIFIER_DEFAULTS.start, label="Start", minimum=0, maximum=1, step=specs.START.step,
                            elem_id="classifier-start", min_width=80,
                        )
                        classifier_stop = gr.Number(
                            CLASSIFIER_DEFAULTS.stop, label="Stop", minimum=0, maximum=1, step=specs.STOP.step,
                            elem_id="classifier-stop", min_width=80,
                        )
            with gr.Row():
                width = gr.Slider(size_low, specs.SIZE.high, value=native, step=multiple, label="Width", elem_id="width")
                height = gr.Slider(size_low, specs.SIZE.high, value=native, step=multiple, label="Height", elem_id="height")
            batch_size = gr.Slider(
                specs.BATCH.low, specs.BATCH.high, value=DEFAULTS.batch_size, step=specs.BATCH.step, label=specs.BATCH.label,
                elem_id="batch-size",
            )
            show_attention = gr.Checkbox(
                label="Show attention maps", value=DEFAULTS.capture_attention, elem_id="show-attention",
                info="Capture cross-attention per prompt word while sampling (a little slower).",
            )
            load_png = gr.File(
                label="Load settings from PNG", file_types=[".png"], type="filepath", elem_id="load-png", height=120
            )
            gr.Markdown(
                f"Model **{html.escape(str(engine.model_name))}** on `{html.escape(str(engine.device))}` · "
                f"native size {native}px · sizes in steps of {multiple}px",
                elem_id="model-info",
            )

        with gr.Column(scale=6, min_width=360):
            status = gr.HTML(progress_html(0, 0, "Ready.", "idle"), label="Progress", elem_id="status")
            with gr.Row(equal_height=False):
                preview = gr.Image(
                    label="Live preview", format="png", interactive=False, elem_id="preview", height=300,
                    buttons=[],
                )
                with gr.Column():
                    heatmap = gr.Image(
                        label="Attention heat map", format="png", interactive=False, elem_id="heatmap", height=300,
                        buttons=[],
                    )
                    resolution_pick = gr.Radio(
                        choices=[], label="Layers (UNet resolution of the maps)", elem_id="resolution-pick",
                    )
            token_pick = gr.Radio(choices=[], label="Attention for word", elem_id="token-pick")
            with gr.Row(equal_height=False):
                gallery = gr.Gallery(
                    label="Results", format="png", columns=2, height=340, object_fit="contain", elem_id="gallery",
                    buttons=["download", "fullscreen"], scale=3,
                )
                with gr.Column(scale=2, min_width=240):
                    downloads = gr.File(label="PNG with settings", file_count="multiple", elem_id="downloads")
                    settings = gr.JSON(label="Settings of this result", elem_id="settings", height=240)

    # Latest attention maps and the image under them; a .change renders the overlay for the picked
    # word, so picking a word mid-run sticks and browsing works after the run.
    attention = gr.State(None)

    # 2. handlers ---------------------------------------------------------------------------
    def generate(
        prompt: str,
        negative_prompt: str | None = None,  # None lets API callers leave it out
        seed: float | None = 0,
        random_seed: bool = True,
        steps: float = DEFAULTS.steps,
        guidance_scale: float = DEFAULTS.guidance_scale,
        scheduler: str = DEFAULTS.scheduler,
        width: float = native,
        height: float = native,
        batch_size: float = DEFAULTS.batch_size,
        show_attention: bool = DEFAULTS.capture_attention,
        conditions: Any = None,
        guidance_rescale: float = DEFAULTS.guidance_rescale,
        classifier_target: str = NO_CLASSIFIER,
        classifier_strength: float = CLASSIFIER_DEFAULTS.strength,
        classifier_schedule: str = CLASSIFIER_DEFAULTS.schedule,
        classifier_exponent: float = CLASSIFIER_DEFAULTS.exponent,
        classifier_start: float = CLASSIFIER_DEFAULTS.start,
        classifier_stop: float = CLASSIFIER_DEFAULTS.stop,
        request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Generate images from a prompt; streams progress, previews and attention maps, then the result.

        `conditions` rows are (prompt, weight, schedule, exponent, start, stop); a classifier target of
        "none" turns classifier guidance off.
        Returns (gallery, preview, status HTML, attention state, settings, PNG files).
        """
        skip = gr.skip()
        try:
            spec = spec_from_form(
                prompt, negative_prompt, seed, random_seed, steps, guidance_scale, scheduler, width, height,
                batch_size, show_attention, conditions, guidance_rescale, classifier_target, classifier_strength,
                classifier_schedule, classifier_exponent, classifier_start, classifier_stop,
            )
        except (InvalidInputError, TypeError, ValueError) as error:
            raise gr.Error(str(error)) from error

        session = session_id(request)
        job = jobs.start(session, spec.steps)
        cancel = job.cancel
        events: Iterator | None = None
        started = time.monotonic()
        attention_state: dict | None = None
        current_image: np.ndarray | None = None
        step, total = 0, spec.steps
        # The PNG downloads are written here; Gradio copies returned files into its cache (cleaned by
        # delete_cache) before the generator resumes, so the folder goes when the run ends.
        run_folder = Path(tempfile.mkdtemp(prefix="dcs-run-"))
        try:
            # Earlier results stay until this run has new ones to show.
            yield skip, skip, progress_html(0, total, "Starting…"), skip, skip, skip
            events = engine.generate(spec, cancel)
            for event in events:
                if isinstance(event, Progress):
                    step, total = event.step, event.total
                    job.step, job.total = step, total  # for Stop's message
                    elapsed = time.monotonic() - started
                    text = event.message or f"Step {step} / {total} · {elapsed:.1f} s"
                    yield skip, skip, progress_html(step, total, text), skip, skip, skip
                elif isinstance(event, Preview):
                    current_image = np.asarray(event.images[0].convert("RGB"))
                    if attention_state is not None:
                        attention_state = {**attention_state, "image": current_image}
                    yield skip, event.images[0], skip, attention_state or skip, skip, skip
                elif isinstance(event, AttentionMaps):
                    maps = np.asarray(event.maps, dtype=np.float32)
                    under = current_image if current_image is not None else _blank(spec, engine)
                    attention_state = {
                        "step": event.step,
                        "tokens": list(event.tokens),
                        "maps": maps,
                        "per_resolution": dict(event.per_resolution),
                        "image": under,
                    }
                    yield skip, skip, skip, attention_state, skip, skip
                elif isinstance(event, Result):
                    yield _finish(event, attention_state, started, run_folder)
        except CancelledError as error:
            yield skip, skip, progress_html(step, total, f"Stopped: {error}", "stopped"), skip, skip, skip
        except StudioError as error:
            yield skip, skip, progress_html(step, total, str(error), "failed"), skip, skip, skip
            raise gr.Error(str(error)) from error
        except Exception as error:  # a bug, not bad input: keep the app alive, keep details in the log
            log.exception("generate failed for %r", spec)
            message = f"Generation failed unexpectedly ({type(error).__name__}); see the server log."
            yield skip, skip, progress_html(step, total, message, "failed"), skip, skip, skip
            raise gr.Error(message) from error
        finally:
            # Stop pressed (GeneratorExit at a yield), an error, or done: tell the engine and let it
            # unwind (its lock, its attention processors) before the next job.
            cancel.cancel()
            if events is not None and hasattr(events, "close"):
                events.close()
            jobs.finish(session, job)
            shutil.rmtree(run_folder, ignore_errors=True)

    def _finish(result: Result, attention_state: dict | None, started: float, folder: Path) -> tuple:
        settings = dict(result.settings)
        tagged = [png_settings.with_settings(image, settings, index) for index, image in enumerate(result.images)]
        files = _save_downloads(result.images, settings, folder)
        first = np.asarray(result.images[0].convert("RGB"))
        if attention_state is not None:
            attention_state = {**attention_state, "image": first}
        seconds = result.timings.get("total", time.monotonic() - started)
        text = (
            f"Done in {seconds:.1f} s · seed {settings.get('seed')} · "
            f"{result.unet_evaluations} UNet evaluations ({settings.get('nfe_per_step')} predictions each)"
        )
        if settings.get("classifier_gradient_evaluations") is not None:
            text += (
                f" · classifier gradient {1000 * settings['classifier_seconds_per_step']:.0f} ms "
                f"of {1000 * settings['sampling_seconds_per_step']:.0f} ms per step"
            )
        caption = f"seed {settings.get('seed')}"
        gallery_value = [(image, f"{caption} · #{index}" if len(tagged) > 1 else caption) for index, image in enumerate(tagged)]
        total = int(settings.get("steps") or 0)
        return (
            gallery_value,
            result.images[0],
            progress_html(total, total, text, "done"),
            attention_state,
            settings,
            files,
        )

    def _save_downloads(images: list[Image.Image], settings: dict, folder: Path) -> list[str]:
        seed_value = settings.get("seed")
        paths = []
        for index, image in enumerate(images):
            name = f"{seed_value}-{index}.png" if len(images) > 1 else f"{seed_value}.png"  # short: the UI truncates
            paths.append(str(png_settings.save_png(image, settings, folder / name, batch_index=index)))
        return paths

    def stop_job(request: gr.Request) -> Any:
        job = jobs.cancel(session_id(request))
        if job is None:
            return gr.skip()
        return progress_html(job.step, job.total, f"Stopped after step {job.step} of {job.total}.", "stopped")

    def read_settings(file: str | None) -> tuple:
        """Settings from a PNG made by this app (or one with A1111 'parameters'), for every form field.

        Returns (prompt, negative prompt, seed, random seed, steps, guidance scale, scheduler, width,
        height, batch size, conditions, guidance rescale, classifier target, strength, schedule, exponent,
        start, stop). Whether attention maps are shown is a view option, not a setting.
        """
        if not file:
            raise gr.Error("Upload a PNG to read its settings.")
        try:
            found = png_settings.read_png_settings(file)
        except InvalidInputError as error:
            raise gr.Error(str(error)) from error
        skip = gr.skip()
        values = png_settings.spec_fields(found)
        checks = {
            "steps": specs.STEPS, "guidance_scale": specs.GUIDANCE, "batch_size": specs.BATCH,
            "seed": specs.SEED, "width": specs.SIZE, "height": specs.SIZE,
        }
        for name, bounds in checks.items():
            value = values.get(name)
            if value is None:
                continue
            try:
                bounds.check(name, value)
            except InvalidInputError as error:
                gr.Warning(f"Not restored: {error}")
                values.pop(name)
        if values.get("scheduler") not in (None, *specs.SCHEDULERS):
            gr.Warning(f"Not restored: scheduler {values.pop('scheduler')!r} is not available here.")
        seed_value = values.get("seed")
        return (
            values.get("prompt", skip),
            values.get("negative_prompt", skip),
            seed_value if seed_value is not None else skip,
            False if seed_value is not None else skip,  # a restored seed means "this exact image"
            values.get("steps", skip),
            values.get("guidance_scale", skip),
            values.get("scheduler", skip),
            values.get("width") or skip,
            values.get("height") or skip,
            values.get("batch_size", skip),
            *_guidance_fields(values),
        )

    def _guidance_fields(values: dict) -> tuple:
        """Condition table, rescale and classifier panel from settings (left as they are when absent)."""
        skip = gr.skip()
        table = table_from_conditions(values["conditions"]) if "conditions" in values else skip
        rescale = values.get("guidance_rescale", skip)
        if "classifier_guidance" not in values:
            return (table, rescale, *[skip] * 6)
        # None in settings means "off": the panel goes back to its defaults.
        found = values["classifier_guidance"] or asdict(CLASSIFIER_DEFAULTS)
        target = found.get("target") or NO_CLASSIFIER
        if target not in (NO_CLASSIFIER, *targets):
            gr.Warning(f"Not restored: classifier guidance towards {target!r} needs a model with that classifier.")
            target = NO_CLASSIFIER
        panel = [found.get(name, skip) for name in ("strength", "schedule", "exponent", "start", "stop")]
        return (table, rescale, target, *panel)

    def plot_weights(steps: float, guidance_scale: float, scheduler: str, conditions: Any, guidance_rescale: float,
                     classifier_target: str, classifier_strength: float, classifier_schedule: str,
                     classifier_exponent: float, classifier_start: float, classifier_stop: float) -> Any:
        try:
            spec = spec_from_form(
                "prompt", "", 0, True, steps, guidance_scale, scheduler, native, native, 1, False, conditions,
                guidance_rescale, classifier_target, classifier_strength, classifier_schedule, classifier_exponent,
                classifier_start, classifier_stop,
            )
            plan = engine.guidance_plan(spec)
        except (InvalidInputError, TypeError, ValueError):
            return gr.skip()  # the table is being edited: errors show when Generate is pressed
        target = spec.classifier_guidance.target if spec.classifier_guidance else ""
        return weight_plot(plan.labels, plan.weights.numpy(), plan.classifier_strengths, target)

    def reuse_last_seed(shown: dict | None) -> tuple:
        if not shown or shown.get("seed") is None:
            raise gr.Error("Generate an image first; its seed is then reused.")
        return int(shown["seed"]), False

    # 3. events -----------------------------------------------------------------------------
    # The fields a PNG's settings restore; the form adds the view option "show attention maps".
    guidance_fields = [
        conditions, guidance_rescale, classifier_target, classifier_strength, classifier_schedule,
        classifier_exponent, classifier_start, classifier_stop,
    ]
    restorable = [
        prompt, negative_prompt, seed, random_seed, steps, guidance_scale, scheduler, width, height, batch_size,
        *guidance_fields,
    ]
    form = [prompt, negative_prompt, seed, random_seed, steps, guidance_scale, scheduler, width, height, batch_size,
            show_attention, *guidance_fields]
    run = gr.on(
        triggers=[go.click, prompt.submit],
        fn=generate,
        inputs=form,
        outputs=[gallery, preview, status, attention, settings, downloads],
        api_name="generate",
        concurrency_id="model",
        show_progress="hidden",
    )
    # Stop: cancel the event (GeneratorExit at the handler's next yield) and set the engine's token so
    # it stops between steps even while no event is being yielded. Runs beside the job, not behind it.
    stop.click(
        stop_job, None, status, cancels=[run], api_name="stop", api_visibility="undocumented",
        concurrency_limit=None, concurrency_id="stop", show_progress="hidden",
    )
    attention_view = dict(
        concurrency_limit=None, concurrency_id="attention-view", show_progress="hidden", api_visibility="private"
    )
    pickers = [attention, token_pick, resolution_pick]
    attention.change(render_attention, pickers, [token_pick, resolution_pick, heatmap], **attention_view)
    gr.on(
        [token_pick.input, resolution_pick.input], lambda *picks: render_attention(*picks)[2], pickers, heatmap,
        **attention_view,
    )
    load_png.upload(read_settings, load_png, restorable, api_name="read_settings", concurrency_id="settings")

    # The weight plot follows every input of the guidance plan; half-typed rows keep the last plot.
    plan_inputs = [steps, guidance_scale, scheduler, *guidance_fields]
    gr.on(
        [component.change for component in plan_inputs], plot_weights, plan_inputs, weight_plot_view,
        concurrency_limit=None, concurrency_id="weight-plot", show_progress="hidden", api_visibility="private",
    )
    gr.Examples(
        COMPOSE_EXAMPLES, [prompt, conditions, guidance_scale], label="Compose: sub-prompts with signed weights",
        elem_id="compose-examples",
    )
    reuse_seed.click(reuse_last_seed, settings, [seed, random_seed], api_visibility="private", concurrency_id="settings")
    return GenerateTab(prompt=prompt, gallery=gallery, settings=settings, run=run)


def _blank(spec: GenerateSpec, engine: Any) -> np.ndarray:
    height = spec.height or int(engine.native_size)
    width = spec.width or int(engine.native_size)
    return np.full((height, width, 3), 96, dtype=np.uint8)


CSS = """
.dcs-progress { padding: 2px 0 6px; }
.dcs-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.dcs-fill { height: 100%; background: var(--color-accent); transition: width 0.2s; }
.dcs-progress.done .dcs-fill { background: var(--color-green-500, #22c55e); }
.dcs-progress.stopped .dcs-fill, .dcs-progress.failed .dcs-fill { background: var(--color-red-500, #ef4444); }
.dcs-progress.failed .dcs-text { color: var(--color-red-500, #ef4444); }
.dcs-text { font-size: var(--text-sm); color: var(--body-text-color-subdued); margin-top: 4px; }
/* small models make small images: scale them up without blurring */
#preview img, #heatmap img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#gallery img { image-rendering: pixelated; }
"""
