"""The Generate tab: text-to-image with a live preview, a Stop button and live cross-attention maps.

Layout, a table of fields and render(event). The form (`FIELDS`: spec field, component, converters) holds
global guidance too (issue #4): a condition table (prompt, signed weight, schedule, exponent, start/stop),
guidance rescale, a classifier-guidance panel shown only when the model has a classifier, and a plot of every
weight over the steps (from `engine.guidance_plan`, i.e. exactly what the sampler will apply). The handler turns
the form into a typed `GenerateSpec`, runs `engine.generate(spec, cancel)` through the one stream helper and
renders each event it yields:

    Progress         -> progress bar text (the stream helper)
    Preview          -> live preview image (and the image under the heat map)
    AttentionMaps    -> attention state -> token picker + heat-map overlay (rendered by a .change event)
    GenerationResult -> gallery (PNGs carrying their settings), settings JSON, PNG downloads

Endpoints: ``/generate`` (streams; the last message holds the result) and ``/read_settings``
(settings from a PNG made here, or one with A1111 ``parameters``).
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import png_settings, specs
from studio.attention.maps import heat_map_overlay
from studio.errors import InvalidInputError
from studio.events import AttentionMaps, CancelToken, Event, GenerationResult, Preview
from studio.plots import line_chart
from studio.specs import ClassifierGuidanceSpec, Condition, GenerateSpec
from studio.ui.form import (ComponentFactory, Field, number, optional_whole, saved, seed_box, seed_from_form,
                            slider, spec_values, text, textbox)
from studio.ui.parts import Tab, instant, model_line, settings_view, table_rows
from studio.ui.stream import JOB_EVENT, Outputs, done_html, run_and_stop, status_box, stop_button, stream_job

if TYPE_CHECKING:
    from studio.engine import Engine

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
CONDITIONS_HELP = (
    "Each row adds *w(t)·(ε<sub>row</sub> − ε<sub>uncond</sub>)* to the prompt's guidance; a negative "
    f"weight ({specs.CONDITION_WEIGHT.low:g} to {specs.CONDITION_WEIGHT.high:g}) steers away from the row. "
    f"Schedules: {', '.join(specs.GUIDANCE_SCHEDULES)} (snr: SNR(t)<sup>exponent</sup>, "
    "sigma: σ(t)<sup>−exponent</sup>); start/stop are fractions of the run. "
    "The negative prompt above replaces ε<sub>uncond</sub> for every row. "
    "Each row adds one prediction per image to every (batched) UNet call."
)
# Words a heat map is rarely wanted for; the picker starts on the first other word.
_FUNCTION_WORDS = frozenset({"a", "an", "the", "and", "on", "in", "of", "with", "at", "to"})


# --------------------------------------------------------------------------------------------
# Pure helpers


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


def attention_state(event: AttentionMaps, image: np.ndarray) -> dict[str, Any]:
    """What the heat-map view needs from an AttentionMaps event: the maps and the image under them."""
    return {
        "step": event.step,
        "tokens": list(event.tokens),
        "maps": np.asarray(event.maps, dtype=np.float32),
        "per_resolution": dict(event.per_resolution),
        "image": image,
    }


def result_text(result: GenerationResult) -> str:
    """The status line of a finished generation: time, seed, UNet work, and the classifier's share of a step."""
    text = (
        f"Done in {result.timings.get('total', 0.0):.1f} s · seed {result.seed} · "
        f"{result.unet_evaluations} UNet evaluations ({result.nfe_per_step} predictions each)"
    )
    if result.classifier_gradient_evaluations is not None:
        text += (
            f" · classifier gradient {1000 * result.classifier_seconds_per_step:.0f} ms "
            f"of {1000 * result.sampling_seconds_per_step:.0f} ms per step"
        )
    return text


def _save_downloads(result: GenerationResult, folder: Path) -> list[str]:
    """The PNG downloads, each carrying the settings (and its place in the batch)."""
    images, paths = result.images, []
    for index, image in enumerate(images):
        name = f"{result.seed}-{index}.png" if len(images) > 1 else f"{result.seed}.png"  # short: the UI truncates
        paths.append(str(png_settings.save_png(image, result.settings, folder / name, batch_index=index)))
    return paths


def _blank(spec: GenerateSpec, native: int) -> np.ndarray:
    """The grey image under attention maps that arrive before the first preview."""
    return np.full((spec.height or native, spec.width or native, 3), 96, dtype=np.uint8)


def reuse_last_seed(settings: dict | None) -> tuple:
    """The seed of the result shown, fixed (the random-seed box unticked)."""
    if not settings or settings.get("seed") is None:
        raise gr.Error("Generate an image first; its seed is then reused.")
    return int(settings["seed"]), False


# --------------------------------------------------------------------------------------------
# The form: the condition table <-> typed Conditions, and the table of fields


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
    for row, cells in enumerate(table_rows(table), start=1):
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


def _size_slider(label: str, elem_id: str) -> ComponentFactory:
    """Image side: the spec's SIZE range, in steps of the model's pixels per latent cell (which the spec checks)."""

    def make(engine: Engine) -> gr.Slider:
        multiple = int(engine.size_multiple)
        low = int(-(-specs.SIZE.low // multiple) * multiple)  # SIZE.low rounded up to a multiple
        return gr.Slider(low, specs.SIZE.high, value=int(engine.native_size), step=multiple, label=label, elem_id=elem_id)

    return make


def _saved_classifier(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """Restore a classifier-panel field; settings holding None mean "off": the panel goes back to its defaults."""

    def restore(settings: Mapping[str, Any]) -> Any:
        if "classifier_guidance" not in settings:
            return None
        found = settings["classifier_guidance"] or asdict(CLASSIFIER_DEFAULTS)
        return (found.get("target") or NO_CLASSIFIER) if name == "target" else found.get(name)

    return restore


def _saved_conditions(settings: Mapping[str, Any]) -> list[list[Any]] | None:
    return table_from_conditions(settings["conditions"]) if "conditions" in settings else None


def _restored_seed_is_fixed(settings: Mapping[str, Any]) -> bool | None:
    return False if settings.get("seed") is not None else None  # a restored seed means "this exact image"


CLASSIFIER_PREFIX = "classifier_"  # the classifier panel's fields: CLASSIFIER_PREFIX + a ClassifierGuidanceSpec field
FIELDS = (
    Field("prompt", textbox(
        label="Prompt", placeholder="a big red circle on the left and a small blue square on the right", lines=2,
        elem_id="prompt"), text, saved("prompt")),
    Field("negative_prompt", textbox(label="Negative prompt", lines=1, elem_id="negative-prompt"),
          text, saved("negative_prompt")),
    Field("seed", seed_box("seed", scale=3), optional_whole, saved("seed", specs.SEED)),
    Field("random_seed", lambda engine: gr.Checkbox(label="Random seed", value=True, elem_id="random-seed"),
          restore=_restored_seed_is_fixed, in_spec=False),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, elem_id="steps"), int, saved("steps", specs.STEPS)),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="guidance"), float,
          saved("guidance_scale", specs.GUIDANCE)),
    Field("scheduler", lambda engine: gr.Dropdown(list(specs.SCHEDULERS), value=DEFAULTS.scheduler, label="Scheduler",
                                                  elem_id="scheduler"), str, saved("scheduler")),
    Field("width", _size_slider("Width", "width"), int, saved("width", specs.SIZE)),
    Field("height", _size_slider("Height", "height"), int, saved("height", specs.SIZE)),
    Field("batch_size", slider(specs.BATCH, DEFAULTS.batch_size, elem_id="batch-size"), int,
          saved("batch_size", specs.BATCH)),
    # a view option, not a setting: never restored
    Field("capture_attention", lambda engine: gr.Checkbox(
        label="Show attention maps", value=DEFAULTS.capture_attention, elem_id="show-attention",
        info="Capture cross-attention per prompt word while sampling (a little slower)."), bool),
    Field("conditions", lambda engine: gr.Dataframe(
        value=[], headers=list(CONDITION_COLUMNS), datatype=["str", "number", "str", "number", "number", "number"],
        column_count=(len(CONDITION_COLUMNS), "fixed"), type="array", interactive=True, label="Conditions",
        show_label=True, elem_id="conditions", column_widths=["34%", "14%", "18%", "12%", "11%", "11%"]),
        conditions_from_table, _saved_conditions),
    Field("guidance_rescale", slider(
        specs.GUIDANCE_RESCALE, DEFAULTS.guidance_rescale, elem_id="guidance-rescale",
        info="Match the guided image estimate's spread to the prompt's (Lin et al. 2023): less over-saturation at "
             "high weights."), float, saved("guidance_rescale", specs.GUIDANCE_RESCALE)),
    Field("classifier_target", lambda engine: gr.Dropdown(
        [NO_CLASSIFIER, *engine.classifier_targets], value=NO_CLASSIFIER, label="Classifier guidance: target",
        elem_id="classifier-target", scale=2), str, _saved_classifier("target")),
    Field("classifier_strength", slider(specs.CLASSIFIER_STRENGTH, CLASSIFIER_DEFAULTS.strength,
                                        elem_id="classifier-strength", scale=3), float, _saved_classifier("strength")),
    Field("classifier_schedule", lambda engine: gr.Dropdown(
        list(specs.GUIDANCE_SCHEDULES), value=CLASSIFIER_DEFAULTS.schedule, label="Schedule",
        elem_id="classifier-schedule", min_width=100), str, _saved_classifier("schedule")),
    Field("classifier_exponent", number(specs.SCHEDULE_EXPONENT, CLASSIFIER_DEFAULTS.exponent, label="Exponent",
                                        elem_id="classifier-exponent", min_width=80), float, _saved_classifier("exponent")),
    Field("classifier_start", number(specs.START, CLASSIFIER_DEFAULTS.start, elem_id="classifier-start", min_width=80),
          float, _saved_classifier("start")),
    Field("classifier_stop", number(specs.STOP, CLASSIFIER_DEFAULTS.stop, elem_id="classifier-stop", min_width=80),
          float, _saved_classifier("stop")),
)
PLAN_FIELDS = ("steps", "guidance_scale", "scheduler", "conditions", "guidance_rescale",
               *(name for name in (f.name for f in FIELDS) if name.startswith(CLASSIFIER_PREFIX)))


def spec_from_values(values: Mapping[str, Any]) -> GenerateSpec:
    """The typed spec for the form's values (fields left out keep the spec's defaults); the engine checks ranges."""
    parsed = spec_values(FIELDS, values)
    panel = {name[len(CLASSIFIER_PREFIX):]: parsed.pop(name) for name in list(parsed) if name.startswith(CLASSIFIER_PREFIX)}
    if panel.get("target", NO_CLASSIFIER) not in ("", NO_CLASSIFIER):
        parsed["classifier_guidance"] = ClassifierGuidanceSpec(**panel)
    parsed["seed"] = seed_from_form(parsed.get("seed"), bool(values.get("random_seed", False)))
    return GenerateSpec(**parsed)


# --------------------------------------------------------------------------------------------
# The tab


@dataclass
class Shown:
    """What one run has shown so far: the latest image (under the heat map), the attention-map state, and the
    folder its PNG downloads are written to."""

    folder: Path
    image: np.ndarray | None = None
    attention: dict[str, Any] | None = None


class GenerateTab(Tab):
    """The Generate tab (the shape of every tab: `parts.Tab`)."""

    fields = FIELDS

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form, engine = self.form, self.engine
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                form.place("prompt", "negative_prompt")
                self.go, self.stop = run_and_stop("Generate", "generate-btn", "stop-btn")
                with gr.Row():
                    form.place("seed")
                    with gr.Column(scale=2, min_width=120):
                        form.place("random_seed")
                        self.reuse_seed = gr.Button("Reuse last seed", size="sm", elem_id="reuse-seed")
                form.place("steps", "guidance_scale", "scheduler")
                self.guidance_panel()
                with gr.Row():
                    form.place("width", "height")
                form.place("batch_size", "capture_attention")
                self.load_png = gr.File(label="Load settings from PNG", file_types=[".png"], type="filepath",
                                        elem_id="load-png", height=120)
                gr.Markdown(f"{model_line(engine)} on `{html.escape(str(engine.device))}` · native size "
                            f"{int(engine.native_size)}px · sizes in steps of {engine.size_multiple}px",
                            elem_id="model-info")
            with gr.Column(scale=6, min_width=360):
                self.results_panel()
        # Latest attention maps and the image under them; a .change renders the overlay for the picked
        # word, so picking a word mid-run sticks and browsing works after the run.
        self.attention = gr.State(None)
        gr.Examples(COMPOSE_EXAMPLES, form.components(["prompt", "conditions", "guidance_scale"]),
                    label="Compose: sub-prompts with signed weights", elem_id="compose-examples")

    def guidance_panel(self) -> None:
        """Global guidance: the condition table, the plot of every weight per step, rescale and the classifier."""
        form = self.form
        with gr.Accordion("Global guidance: conditions, rescale, classifier", open=True, elem_id="global-guidance"):
            form.place("conditions")
            gr.Markdown(CONDITIONS_HELP, elem_id="conditions-help")
            initial = self.engine.guidance_plan(GenerateSpec(prompt="prompt"))
            self.weight_plot = gr.Image(
                weight_plot(initial.labels, initial.weights.numpy()), type="pil", format="png", interactive=False,
                label="Weight of each condition per step", elem_id="weight-plot", buttons=[])
            form.place("guidance_rescale")
            with gr.Group(visible=bool(self.engine.classifier_targets), elem_id="classifier-panel"):
                with gr.Row():
                    form.place("classifier_target", "classifier_strength")
                with gr.Row():
                    form.place("classifier_schedule", "classifier_exponent", "classifier_start", "classifier_stop")

    def results_panel(self) -> None:
        """Progress, the live preview beside the attention heat map, the images, their PNGs and settings."""
        self.status = status_box("status")
        with gr.Row(equal_height=False):
            self.preview = gr.Image(label="Live preview", format="png", interactive=False, elem_id="preview",
                                    height=300, buttons=[])
            with gr.Column():
                self.heatmap = gr.Image(label="Attention heat map", format="png", interactive=False,
                                        elem_id="heatmap", height=300, buttons=[])
                self.resolution_pick = gr.Radio(choices=[], label="Layers (UNet resolution of the maps)",
                                                elem_id="resolution-pick")
        self.token_pick = gr.Radio(choices=[], label="Attention for word", elem_id="token-pick")
        with gr.Row(equal_height=False):
            self.gallery = gr.Gallery(label="Results", format="png", columns=2, height=340, object_fit="contain",
                                      elem_id="gallery", buttons=["download", "fullscreen"], scale=3)
            with gr.Column(scale=2, min_width=240):
                self.downloads = gr.File(label="PNG with settings", file_count="multiple", elem_id="downloads")
                self.settings = settings_view("settings", "Settings of this result", height=240)

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Generate images from a prompt; streams progress, previews and attention maps, then the result.

        Parameters:
            conditions: rows of (prompt, weight, schedule, exponent, start, stop)
            classifier_target: "none" turns classifier guidance off
        Returns:
            gallery: the images, each a PNG carrying its settings, captioned with the seed
            preview: the latest preview; the first image once done
            status: the progress line (HTML): step and time while running, then time, seed and UNet work
            settings: the settings of the result, the seed used included
            downloads: the images as PNG files carrying their settings
        """
        # The PNG downloads are written here; Gradio copies returned files into its cache (cleaned by
        # delete_cache) before the generator resumes, so the folder goes when the run ends.
        with tempfile.TemporaryDirectory(prefix="dcs-run-") as folder:
            shown = Shown(Path(folder))

            def start(cancel: CancelToken) -> Iterator[Event]:
                spec = spec_from_values(values)
                shown.image = _blank(spec, int(self.engine.native_size))
                return self.engine.generate(spec, cancel)

            yield from stream_job("generate", request, self.status, start, lambda event: self.render(event, shown),
                                  "Generation")

    def render(self, event: Event, shown: Shown) -> Outputs | None:
        if isinstance(event, Preview):
            shown.image = np.asarray(event.images[0].convert("RGB"))
            if shown.attention is None:
                return {self.preview: event.images[0]}
            shown.attention = {**shown.attention, "image": shown.image}
            return {self.preview: event.images[0], self.attention: shown.attention}
        if isinstance(event, AttentionMaps):
            shown.attention = attention_state(event, shown.image)
            return {self.attention: shown.attention}
        if isinstance(event, GenerationResult):
            if shown.attention is not None:
                shown.attention = {**shown.attention, "image": np.asarray(event.images[0].convert("RGB"))}
            record = dict(event.settings)
            tagged = [png_settings.with_settings(image, record, index) for index, image in enumerate(event.images)]
            caption = f"seed {event.seed}"
            pictures = [(image, f"{caption} · #{index}" if len(tagged) > 1 else caption) for index, image in enumerate(tagged)]
            return {self.gallery: pictures, self.preview: event.images[0], self.status: done_html(result_text(event)),
                    self.settings: record, self.downloads: _save_downloads(event, shown.folder),
                    self.attention: shown.attention}
        return None

    def read_settings(self, file: str | None) -> Outputs:
        """Settings from a PNG made by this app (or one with A1111 'parameters'), for every form field they hold.

        Returns:
            every restorable field of the form, by name in the form's order: prompt, negative_prompt, seed,
            random_seed (unticked when the PNG holds a seed), steps, guidance_scale, scheduler, width, height,
            batch_size, conditions, guidance_rescale and the classifier panel (classifier_target, _strength,
            _schedule, _exponent, _start, _stop). Whether attention maps are shown is a view option, not a setting.
        """
        if not file:
            raise gr.Error("Upload a PNG to read its settings.")
        try:
            found = png_settings.read_png_settings(file)
        except InvalidInputError as error:
            raise gr.Error(str(error)) from error
        return self.form.restore(found)

    def plot_weights(self, **values: Any) -> Any:
        """The weight plot for the guidance plan as the form now stands; half-typed rows keep the last plot."""
        try:
            spec = spec_from_values({**values, "prompt": "prompt", "random_seed": True})
            plan = self.engine.guidance_plan(spec)
        except InvalidInputError:
            return gr.skip()  # the table is being edited: errors show when Generate is pressed
        target = spec.classifier_guidance.target if spec.classifier_guidance else ""
        return weight_plot(plan.labels, plan.weights.numpy(), plan.classifier_strengths, target)

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        form = self.form
        self.run_event = gr.on(
            [self.go.click, form["prompt"].submit], self.run, inputs_kwargs=form.inputs, api_name="generate",
            outputs=[self.gallery, self.preview, self.status, self.attention, self.settings, self.downloads],
            **JOB_EVENT)
        stop_button(self.stop, self.status, [self.run_event], tab="generate", api_name="stop")
        pickers = [self.attention, self.token_pick, self.resolution_pick]
        self.attention.change(render_attention, pickers, [self.token_pick, self.resolution_pick, self.heatmap],
                              **instant("attention-view"))
        gr.on([self.token_pick.input, self.resolution_pick.input], lambda *picks: render_attention(*picks)[2],
              pickers, self.heatmap, **instant("attention-view"))
        self.load_png.upload(self.read_settings, self.load_png, form.restorable, api_name="read_settings",
                             concurrency_id="settings")
        plan_inputs = {name: form[name] for name in PLAN_FIELDS}  # the weight plot follows the guidance plan
        gr.on([component.change for component in plan_inputs.values()], self.plot_weights, inputs_kwargs=plan_inputs,
              outputs=self.weight_plot, **instant("weight-plot"))
        self.reuse_seed.click(reuse_last_seed, self.settings, form.components(["seed", "random_seed"]),
                              api_visibility="private", concurrency_id="settings")


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
