"""The Generate tab: text-to-image with a live preview, a Stop button and live cross-attention maps.

Layout, a table of fields and render(event). The form (`FIELDS`: spec field, component, converters) holds
global guidance too (issue #4): a condition table (prompt, signed weight, schedule, exponent, start/stop),
guidance rescale, a classifier-guidance panel shown only when the model has a classifier, and a plot of every
weight over the steps (from `engine.guidance_plan`, i.e. exactly what the sampler will apply). The handler turns
the form into a typed `GenerateSpec`, runs `engine.generate(spec, cancel=cancel)` through the one stream helper and
renders each event it yields:

    Progress         -> progress bar text (the stream helper)
    Preview          -> live preview image (and the image under the heat map)
    AttentionMaps    -> attention state -> token picker + heat-map overlay (rendered by a .change event)
    GenerationResult -> gallery (PNGs carrying their settings, captioned with each item's own seed), settings
                        JSON, PNG downloads, the item offered to other tabs

A stopped run offers its last preview in the gallery, captioned and labelled partial, as PNGs carrying the run's
settings and the step it shows (`stopped_at_step`). Every picture's own download carries its settings too: the
live preview and the heat map (with its word), so any of them can be loaded back or remade.

Endpoints: ``/generate`` (streams; the last message holds the result) and ``/read_settings``
(settings from a PNG made here, or one with A1111 ``parameters``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import model_limits, png_settings, specs
from studio.attention.maps import heat_map_overlay
from studio.errors import InvalidInputError
from studio.events import (
    AttentionMaps,
    CancelToken,
    Event,
    GenerationResult,
    Notice,
    Preview,
)
from studio.generation import batch_seeds
from studio.jobs import resolve_seed
from studio.plots import line_chart
from studio.specs import ClassifierGuidanceSpec, Condition, GenerateSpec
from studio.structure.spec import StructureImages, StructureSpec
from studio.ui.form import (
    ComponentFactory,
    Field,
    number,
    optional_whole,
    saved,
    seed_box,
    seed_from_form,
    slider,
    spec_values,
    text,
    textbox,
)
from studio.ui.gpu import engine_job
from studio.ui.parts import (
    DOWNLOADS,
    Sendable,
    Tab,
    instant,
    load_settings_box,
    mask_from_map,
    mask_row,
    model_line,
    model_panel,
    rgb,
    send_row,
    settings_view,
    table_rows,
    tagged,
    warn_about_limits,
)
from studio.ui.session_concepts import personalized
from studio.ui.stream import (
    JOB_EVENT,
    KEYS_HELP,
    Outputs,
    done_html,
    run_and_stop,
    status_box,
    stop_button,
    stream_job,
)
from studio.ui.structure_rows import (
    IMAGE_PROMPT_PREFIX,
    MODES_HELP,
    ROWS,
    channel_only,
    control_row_fields,
    image_prompt_fields,
    place_row_settings,
    row_field,
    schedule_plot,
    source_for,
    structure_from_values,
    structure_images,
)

if TYPE_CHECKING:
    from studio.engine import Engine

# Attention maps are the tab's headline, so the form starts with them on; the engine's GenerateSpec leaves them off
# (benchmarks and the diffusers parity run time and compare generation without the capture).
DEFAULTS = GenerateSpec(prompt="", capture_attention=True)
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
STRUCTURE_HELP = (
    "**Control rows** steer where things go: each reads its own map, an uploaded map (white on black) or a "
    "picture it is derived from, resized to the image with a note. **Image prompt**: the reference's colours and "
    "arrangement (IP-Adapter). A row in the channel mode is a condition like a sub-prompt: its own weight, "
    "schedule and window, one more prediction per image in the same batched UNet call. " + MODES_HELP
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


def _picked_map(attention: dict, token: int | None, resolution: int | None) -> tuple[int, int, np.ndarray]:
    """The picks made valid (an unknown word: the first content word; an unknown resolution: all) and the map."""
    tokens: list[str] = attention["tokens"]
    if token is None or not (0 <= int(token) < len(tokens)):
        token = _default_token(tokens)
    per_resolution: dict[int, np.ndarray] = attention.get("per_resolution") or {}
    if resolution not in per_resolution:
        resolution = ALL_LAYERS
    maps = attention["maps"] if resolution == ALL_LAYERS else per_resolution[resolution]
    return int(token), resolution, maps[int(token)]


def _layers_label(resolution: int) -> str:
    return "all" if resolution == ALL_LAYERS else f"{resolution}×{resolution}"


def render_attention(attention: dict | None, token: int | None, resolution: int | None = ALL_LAYERS) -> tuple[Any, Any, Any]:
    """Word picker, resolution picker and heat-map image for the attention state and the picks. The heat map's
    download carries the run's settings (when the state holds them) with the word and layers it shows."""
    if not attention:
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None), None
    tokens: list[str] = attention["tokens"]
    token, resolution, attention_map = _picked_map(attention, token, resolution)
    overlay = heat_map_overlay(Image.fromarray(attention["image"]), attention_map)
    if attention.get("settings"):
        overlay = tagged(overlay, attention["settings"], picture="heat map", word=tokens[token],
                         layers=_layers_label(resolution), step=attention["step"])
    word_choices = [(word, index) for index, word in enumerate(tokens)]
    resolution_choices = [(_layers_label(size), size) for size in (ALL_LAYERS, *sorted(attention.get("per_resolution") or {}, reverse=True))]
    return gr.update(choices=word_choices, value=token), gr.update(choices=resolution_choices, value=resolution), overlay


def map_sendable(attention: dict | None, token: int | None, resolution: int | None = ALL_LAYERS) -> Sendable | None:
    """The heat map shown as a mask for another tab: the picked word's map at the picked resolution, thresholded
    at the image's size (parts.mask_from_map), with the image under it and the run's settings. None when there
    is no map, or the map is flat (no region to mask)."""
    if not attention:
        return None
    token, _, attention_map = _picked_map(attention, token, resolution)
    image = attention["image"]
    try:
        mask = mask_from_map(attention_map, (image.shape[1], image.shape[0]))
    except InvalidInputError:
        return None
    return Sendable(image=image, settings=attention.get("settings") or {}, word=attention["tokens"][token], mask=mask)


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


def attention_state(event: AttentionMaps, image: np.ndarray, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the heat-map view needs from an AttentionMaps event: the maps, the image under them and the settings
    of the run they belong to."""
    return {
        "step": event.step,
        "tokens": list(event.tokens),
        "maps": np.asarray(event.maps, dtype=np.float32),
        "per_resolution": dict(event.per_resolution),
        "image": image,
        "settings": dict(settings),
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


def item_seeds(settings: Mapping[str, Any]) -> list[int]:
    """Each batch item's own seed (seed, seed + 1, ...: item i alone with seed + i makes the same image)."""
    seeds = settings.get("seeds")
    return list(seeds) if seeds else batch_seeds(int(settings["seed"]), int(settings.get("batch_size") or 1))


def item_settings(settings: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The settings that remake batch item `index` alone: its own seed, batch size 1."""
    seed = item_seeds(settings)[index]
    return {**settings, "seed": seed, "seeds": [seed], "batch_size": 1}


def run_settings(spec: GenerateSpec, model_name: str, native_size: int) -> dict[str, Any]:
    """The settings of a run known before its result (the seed already drawn): what a stopped run's partial
    images, the live preview and the heat maps carry. The result's own record replaces them when it lands."""
    width, height = spec.size_on(native_size)
    fields = {name: value for name, value in asdict(spec).items()
              if name not in ("capture_attention", "attention_every", "preview_every")}  # view options, not settings
    return {"model": model_name, "job": "generate", **fields, "width": width, "height": height,
            "seeds": batch_seeds(spec.seed, spec.batch_size)}


def result_pictures(result: GenerationResult) -> list[tuple[Image.Image, str]]:
    """The result's images, each carrying the settings (and its place in the batch), captioned with its own seed."""
    seeds, count = item_seeds(result.settings), len(result.images)
    return [(png_settings.with_settings(image, dict(result.settings), index),
             f"seed {seeds[index]}" + (f" · #{index}" if count > 1 else ""))
            for index, image in enumerate(result.images)]


def result_downloads(result: GenerationResult) -> list[str]:
    """The PNG downloads, each carrying the settings (and its place in the batch)."""
    images = result.images
    names = [f"{result.seed}-{index}.png" if len(images) > 1 else f"{result.seed}.png" for index in range(len(images))]
    return DOWNLOADS.pngs([(name, image, result.settings) for name, image in zip(names, images)], batch=True)


def partial_settings(settings: Mapping[str, Any], step: int) -> dict[str, Any]:
    """A stopped run's settings for its partial images: the run's, and the step whose x0 prediction they show."""
    return {**settings, "stopped_at_step": step}


def pick_item(items: list[Sendable], event: gr.SelectData) -> Sendable | None:
    """The gallery image picked, as the send buttons carry it."""
    return items[event.index] if items and 0 <= event.index < len(items) else None


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
        record = settings["classifier_guidance"]
        found = asdict(ClassifierGuidanceSpec.from_record(record) if record else CLASSIFIER_DEFAULTS)
        return (found["target"] or NO_CLASSIFIER) if name == "target" else found[name]

    return restore


def _saved_conditions(settings: Mapping[str, Any]) -> list[list[Any]] | None:
    return table_from_conditions(settings["conditions"]) if "conditions" in settings else None


def _map_image(row: int) -> Field:
    """A control row's image: a map (white on black), a drawing, or a picture the row derives its map from."""
    return Field(row_field(row, "image"), lambda engine: gr.Image(
        label=f"Map {row} (or a picture to derive it from)", type="numpy", image_mode="RGB", height=140,
        sources=["upload", "clipboard"], elem_id=f"generate-row{row}-image", elem_classes=["dcs-image"]),
        in_spec=False)


# control rows (off at start: Generate runs without structure unless a row picks a control) and the image prompt
STRUCTURE_FIELDS = (
    *(field for row in range(1, ROWS + 1)
      for field in (*control_row_fields(row, "generate", start_off=True, picture="its image"), _map_image(row))),
    *image_prompt_fields("generate"),
)


def _restored_seed_is_fixed(settings: Mapping[str, Any]) -> bool | None:
    return False if settings.get("seed") is not None else None  # a restored seed means "this exact image"


CLASSIFIER_PREFIX = "classifier_"  # the classifier panel's fields: CLASSIFIER_PREFIX + a ClassifierGuidanceSpec field
FIELDS = (
    Field("prompt", textbox(
        label="Prompt", placeholder="a big red circle on the left and a small blue square on the right", lines=2,
        elem_id="prompt"), text, saved("prompt")),
    Field("negative_prompt", textbox(label="Negative prompt", lines=1, elem_id="negative-prompt"),
          text, saved("negative_prompt")),
    Field("seed", seed_box("seed", scale=2, min_width=120), optional_whole, saved("seed", specs.SEED)),
    Field("random_seed", lambda engine: gr.Checkbox(label="Random seed", value=True, elem_id="random-seed"),
          restore=_restored_seed_is_fixed, in_spec=False),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, elem_id="steps"), int, saved("steps", specs.STEPS)),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="guidance"), float,
          saved("guidance_scale", specs.GUIDANCE)),
    Field("scheduler", lambda engine: gr.Dropdown(list(specs.SCHEDULERS), value=DEFAULTS.scheduler, label="Scheduler",
                                                  elem_id="scheduler", scale=2, min_width=120), str, saved("scheduler")),
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
        elem_id="classifier-schedule", scale=2, min_width=150), str, _saved_classifier("schedule")),
    Field("classifier_exponent", number(specs.SCHEDULE_EXPONENT, CLASSIFIER_DEFAULTS.exponent, label="Exponent",
                                        elem_id="classifier-exponent", min_width=80), float, _saved_classifier("exponent")),
    Field("classifier_start", number(specs.START, CLASSIFIER_DEFAULTS.start, elem_id="classifier-start", min_width=80),
          float, _saved_classifier("start")),
    Field("classifier_stop", number(specs.STOP, CLASSIFIER_DEFAULTS.stop, elem_id="classifier-stop", min_width=80),
          float, _saved_classifier("stop")),
    *STRUCTURE_FIELDS,
    # after the structure rows, which came before it: the endpoints' earlier parameters keep their places
    Field("classifier_normalise", lambda engine: gr.Checkbox(
        label="Normalise the gradient", value=CLASSIFIER_DEFAULTS.normalise, elem_id="classifier-normalise",
        info="Step along the classifier's gradient by a fixed share of the noise estimate (7.5% per unit of "
             "strength), the same for every target; off: Dhariwal & Nichol's raw gradient (eq. 14), whose right "
             "strength differs from target to target."),
        bool, _saved_classifier("normalise")),
)
PLAN_FIELDS = ("steps", "guidance_scale", "scheduler", "conditions", "guidance_rescale",
               *(name for name in (f.name for f in FIELDS) if name.startswith(CLASSIFIER_PREFIX)),
               *(field.name for field in STRUCTURE_FIELDS
                 if field.name.rpartition("_")[2] not in ("map", "image", "reference")))  # what the plan reads


def spec_and_rows(values: Mapping[str, Any]) -> tuple[GenerateSpec, list[int]]:
    """The typed spec for the form's values (fields left out keep the spec's defaults; no control picked and no
    image prompt: no structure) and the control rows (counted from 1) its structure's controls come from."""
    parsed = spec_values(FIELDS, values)
    structure, rows = structure_from_values(parsed, values)
    panel = {name[len(CLASSIFIER_PREFIX):]: parsed.pop(name) for name in list(parsed) if name.startswith(CLASSIFIER_PREFIX)}
    if panel.get("target", NO_CLASSIFIER) not in ("", NO_CLASSIFIER):
        parsed["classifier_guidance"] = ClassifierGuidanceSpec(**panel)
    parsed["seed"] = seed_from_form(parsed.get("seed"), bool(values.get("random_seed", False)))
    return GenerateSpec(**parsed, structure=None if structure.empty else structure), rows


def spec_from_values(values: Mapping[str, Any]) -> GenerateSpec:
    """The typed spec for the form's values; the engine checks ranges and control names."""
    return spec_and_rows(values)[0]


def row_images(values: Mapping[str, Any], structure: StructureSpec | None, rows: list[int],
               size: tuple[int, int]) -> tuple[StructureImages | None, list[str]]:
    """The images of a run's structure, each control row's map from the row's own image (structure_rows'
    structure_images), with the notes of what the preparation changed; (None, []) without structure."""
    if structure is None:
        return None, []

    def picture_of(row: int) -> np.ndarray | None:
        image = values.get(row_field(row, "image"))
        return None if image is None else rgb(image)

    return structure_images(values, structure, rows, picture_of, size, label="Control row")


# --------------------------------------------------------------------------------------------
# The tab


@dataclass
class Shown:
    """What one run has shown so far: its settings (before the result: the run's, the seed drawn), the latest
    image (under the heat map), the last preview (what a stopped run offers) and the attention-map state."""

    settings: dict[str, Any]
    image: np.ndarray | None = None
    preview: Preview | None = None
    attention: dict[str, Any] | None = None
    offered: tuple[int, dict[Any, Any]] | None = None  # (preview step, partial outputs), made once per preview


GALLERY_COLUMNS = 3  # at most: each image stays above the model's 128 px in the tab's 420 px gallery
RESULT_LABELS = {"gallery": "Results", "downloads": "PNG with settings", "settings": "Settings of this result"}


class GenerateTab(Tab):
    """The Generate tab (the shape of every tab: `parts.Tab`)."""

    name = "generate"
    restores_records_of = ("structure",)  # the condition table holds the Structure tab's control rows too
    fields = FIELDS

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                form.place("prompt", "negative_prompt")
                self.go, self.stop = run_and_stop("Generate", "generate-btn", "stop-btn")
                # the sizes, the batch and the attention maps stay above the fold (1400x900); the rest folds away
                with gr.Row():
                    form.place("seed")
                    with gr.Column(scale=2, min_width=120):
                        form.place("random_seed")
                        self.reuse_seed = gr.Button("Reuse last seed", size="sm", elem_id="reuse-seed")
                    form.place("scheduler")
                with gr.Row():
                    form.place("steps", "guidance_scale")
                with gr.Row():
                    form.place("width", "height")
                self.size_note = gr.Markdown(visible=False, elem_id="size-note")
                with gr.Row():
                    form.place("batch_size", "capture_attention")
                model_panel(self.engine, "generate-model")  # native size, words, model card
                self.guidance_panel()
                self.load_png = load_settings_box("load-png")
                gr.Markdown(f"{model_line(self.engine)} on `{html.escape(str(self.engine.device))}` · {KEYS_HELP}",
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
        with gr.Accordion("Global guidance: conditions, rescale, classifier", open=False, elem_id="global-guidance"):
            form.place("conditions")
            gr.Markdown(CONDITIONS_HELP, elem_id="conditions-help")
            self.structure_rows()
            initial = self.engine.guidance_plan(GenerateSpec(prompt="prompt"))
            self.weight_plot = gr.Image(
                weight_plot(initial.labels, initial.weights.numpy()), type="pil", format="png", interactive=False,
                label="Weight of each condition per step", elem_id="weight-plot", buttons=[])
            self.structure_plot = gr.Image(
                type="pil", format="png", interactive=False, visible=False, elem_id="generate-structure-plot",
                label="Each structure row per step: its scale (0 outside its window), a channel row's weight",
                buttons=[])
            form.place("guidance_rescale")
            with gr.Group(visible=bool(self.engine.classifier_targets), elem_id="classifier-panel"):
                with gr.Row():
                    form.place("classifier_target", "classifier_strength")
                with gr.Row():
                    form.place("classifier_schedule", "classifier_exponent", "classifier_start", "classifier_stop")
                form.place("classifier_normalise")

    def structure_rows(self) -> None:
        """The condition table's structure rows: control rows when the model has controls, the image-prompt row
        when it has an IP-Adapter; otherwise a line that says why there are none."""
        form, model = self.form, self.engine.model
        with gr.Group(visible=bool(model.controls), elem_id="generate-structure"):
            for row in range(1, ROWS + 1):
                with gr.Row(equal_height=False, elem_id=f"generate-row{row}"):
                    with gr.Column(scale=3, min_width=240):
                        place_row_settings(form, row)
                    with gr.Column(scale=1, min_width=140):
                        form.place(row_field(row, "image"))
        if not model.controls:
            gr.Markdown("No control rows: this model has no ControlNet or T2I-Adapter loaded (`--controlnet`, "
                        "`--t2i-adapter`).", elem_id="generate-no-controls")
        with gr.Group(visible=model.image_prompt is not None, elem_id="generate-image-prompt"), gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=240):
                form.place("image_prompt_on", "image_prompt_scale")
                with gr.Row():
                    form.place("image_prompt_mode", "image_prompt_weight", "image_prompt_schedule")
            with gr.Column(scale=2, min_width=160):
                form.place("image_prompt_reference")
        if model.image_prompt is None:
            gr.Markdown("No image-prompt row: this model has no IP-Adapter loaded (`--ip-adapter FILE`).",
                        elem_id="generate-no-image-prompt")
        if model.controls or model.image_prompt is not None:
            gr.Markdown(STRUCTURE_HELP, elem_id="generate-structure-help")

    def results_panel(self) -> None:
        """Progress, the live preview beside the attention heat map, the images, their PNGs and settings, and the
        buttons that send the picked image (or the heat map as a mask) to the other tabs."""
        self.status = status_box("status")
        with gr.Row(equal_height=False):
            self.preview = gr.Image(label="Live preview", format="png", interactive=False, elem_id="preview",
                                    elem_classes=["dcs-image"], height=300, buttons=["download"])
            with gr.Column():
                self.heatmap = gr.Image(label="Attention heat map", format="png", interactive=False,
                                        elem_id="heatmap", elem_classes=["dcs-image"], height=300, buttons=["download"])
                self.resolution_pick = gr.Radio(choices=[], label="Layers (UNet resolution of the maps)",
                                                elem_id="resolution-pick")
                self.map_sending = gr.State(None)
                self.mask_buttons = mask_row("generate", own=self.name)
        self.token_pick = gr.Radio(choices=[], label="Attention for word", elem_id="token-pick")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                # Gradio narrows the grid to the images' count; the height follows the rows, so a batch is whole
                self.gallery = gr.Gallery(label=RESULT_LABELS["gallery"], format="png", columns=GALLERY_COLUMNS,
                                          height="auto",
                                          object_fit="contain", elem_id="gallery", elem_classes=["dcs-gallery"],
                                          buttons=["download", "fullscreen"])
                self.sending = gr.State(None)
                self.items = gr.State([])  # a Sendable per gallery image, for the send buttons after a pick
                self.send_buttons = send_row("generate", own=self.name)
            with gr.Column(scale=2, min_width=240):
                self.downloads = gr.File(label=RESULT_LABELS["downloads"], file_count="multiple", elem_id="downloads")
                self.settings = settings_view("settings", RESULT_LABELS["settings"], height=240)

    @property
    def results(self) -> dict[Any, str]:
        """The result components and their labels, which say whose run they show (stream_job, stop_button)."""
        return {self.gallery: RESULT_LABELS["gallery"], self.downloads: RESULT_LABELS["downloads"],
                self.settings: RESULT_LABELS["settings"]}

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, row1_image: np.ndarray | None = None, row2_image: np.ndarray | None = None,
            image_prompt_reference: np.ndarray | None = None, **values: Any) -> Iterator[Outputs]:
        """Generate images from a prompt; streams progress, previews and attention maps, then the result.

        Parameters:
            conditions: rows of (prompt, weight, schedule, exponent, start, stop)
            classifier_target: "none" turns classifier guidance off
            row1_control: a loaded control's name, or "none" (likewise row2_control)
            row1_image: the row's map, or a picture it derives its map from (likewise row2_image)
            row1_map: how the row reads its image: drawing, outline (Canny) or layout (colours)
            image_prompt_reference: the image prompt's reference (with image_prompt_on)
        Returns:
            gallery: the images, each a PNG carrying its settings, captioned with its own seed (seed, seed + 1, ...)
            preview: the latest preview; the first image once done
            status: the progress line (HTML): step and time while running, then time, seed and UNet work
            settings: the settings of the result, the seed used included
            downloads: the images as PNG files carrying their settings
        """
        shown: Shown | None = None
        # the structure images default to None (API callers without structure leave them out); the rows read values
        values.update({row_field(1, "image"): row1_image, row_field(2, "image"): row2_image,
                       "image_prompt_reference": image_prompt_reference})

        def start(cancel: CancelToken) -> Iterator[Event]:
            nonlocal shown
            spec, rows = spec_and_rows(values)
            # the seed is drawn here, not in the engine, so a stopped run's partial images know theirs
            spec = personalized(replace(spec, seed=resolve_seed(spec.seed, span=spec.batch_size)), request)
            size = spec.size_on(int(self.engine.native_size))
            images, notes = row_images(values, spec.structure, rows, size)
            warn_about_limits(self.engine, [spec.prompt, spec.negative_prompt, *(c.prompt for c in spec.conditions)],
                              size=size, concepts=spec.concepts)
            for note in notes:
                gr.Info(note)
            shown = Shown(run_settings(spec, str(self.engine.model_name), int(self.engine.native_size)),
                          image=_blank(spec, int(self.engine.native_size)))
            return engine_job(self.engine, "generate", spec, structure_images=images, cancel=cancel)

        yield from stream_job(self.name, request, self.status, start, lambda event: self.render(event, shown),
                              "Generation", results=self.results, partial=lambda: self.partial(shown))

    def render(self, event: Event, shown: Shown) -> Outputs | None:
        if isinstance(event, Notice):  # how the job read an input (the reference image, say)
            gr.Info(event.text)
            return None
        if isinstance(event, Preview):
            shown.preview, shown.image = event, np.asarray(event.images[0].convert("RGB"))
            preview = tagged(event.images[0], shown.settings, picture="preview", step=event.step)
            if shown.attention is None:
                return {self.preview: preview}
            shown.attention = {**shown.attention, "image": shown.image}
            return {self.preview: preview, self.attention: shown.attention}
        if isinstance(event, AttentionMaps):
            shown.attention = attention_state(event, shown.image, shown.settings)
            return {self.attention: shown.attention}
        if isinstance(event, GenerationResult):
            record = dict(event.settings)
            if shown.attention is not None:
                shown.attention = {**shown.attention, "image": rgb(event.images[0]), "settings": record}
            items = [Sendable(rgb(image), item_settings(record, index)) for index, image in enumerate(event.images)]
            return {self.gallery: result_pictures(event),
                    self.preview: png_settings.with_settings(event.images[0], record, 0),
                    self.status: done_html(result_text(event)), self.settings: record,
                    self.downloads: result_downloads(event), self.attention: shown.attention,
                    self.items: items, self.sending: items[0]}
        return None

    def partial(self, shown: Shown | None) -> Outputs:
        """What a stopped run offers: its last preview in the gallery, captioned and labelled partial, and as PNGs
        carrying the run's settings and the step they show (made once per preview: Stop asks twice). The send
        buttons then carry these partial images, not the previous run's at the same place in the gallery."""
        if shown is None or shown.preview is None:
            return {}
        preview = shown.preview
        if shown.offered is None or shown.offered[0] != preview.step:
            settings = partial_settings(shown.settings, preview.step)
            seeds, steps = item_seeds(settings), settings["steps"]
            pictures = [(png_settings.with_settings(image, settings, index),
                         f"partial · step {preview.step} / {steps} · seed {seeds[index]}")
                        for index, image in enumerate(preview.images)]
            downloads = DOWNLOADS.pngs([(f"{seeds[index]}-partial-step{preview.step}.png", image, settings)
                                        for index, (image, _) in enumerate(pictures)])
            items = [Sendable(rgb(image), item_settings(settings, index)) for index, image in enumerate(preview.images)]
            shown.offered = (preview.step, {self.gallery: pictures, self.downloads: downloads,
                                            self.settings: settings, self.items: items, self.sending: items[0]})
        return shown.offered[1]

    def plot_weights(self, **values: Any) -> tuple[Any, Any]:
        """The weight plot for the guidance plan as the form now stands, and the structure rows' plot (hidden
        without structure); half-typed rows keep the last plots."""
        try:
            spec = spec_from_values({**values, "prompt": "prompt", "random_seed": True})
            plan = self.engine.guidance_plan(spec)
        except InvalidInputError:
            return gr.skip(), gr.skip()  # the table is being edited: errors show when Generate is pressed
        target = spec.classifier_guidance.target if spec.classifier_guidance else ""
        structure = (gr.update(value=None, visible=False) if plan.structure is None
                     else gr.update(value=schedule_plot(plan.structure), visible=True))
        return weight_plot(plan.labels, plan.weights.numpy(), plan.classifier_strengths, target), structure

    def show_size_note(self, width: float, height: float) -> Any:
        """The note beside the size sliders at a size the model was not trained at (hidden at a trained size)."""
        warning = model_limits.size_warning(self.engine.model_limits, int(width), int(height))
        return gr.update(value=f"⚠ {warning}" if warning else "", visible=bool(warning))

    def show_attention(self, attention: dict | None, token: int | None, resolution: int | None) -> tuple[Any, ...]:
        """The pickers, the heat map and the map offered as a mask, for the attention state and the picks."""
        return (*render_attention(attention, token, resolution), map_sendable(attention, token, resolution))

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        form = self.form
        self.run_event = gr.on(
            [self.go.click, form["prompt"].submit], self.run, inputs_kwargs=form.inputs, api_name="generate",
            outputs=[self.gallery, self.preview, self.status, self.attention, self.settings, self.downloads,
                     self.items, self.sending],
            **JOB_EVENT)
        stop_button(self.stop, self.status, [self.run_event], tab=self.name, api_name="stop",
                    results=[*self.results, self.items, self.sending])
        pickers = [self.attention, self.token_pick, self.resolution_pick]
        self.attention.change(self.show_attention, pickers,
                              [self.token_pick, self.resolution_pick, self.heatmap, self.map_sending],
                              **instant("attention-view"))
        gr.on([self.token_pick.input, self.resolution_pick.input], lambda *picks: self.show_attention(*picks)[2:],
              pickers, [self.heatmap, self.map_sending], **instant("attention-view"))
        gr.on([form["width"].change, form["height"].change], self.show_size_note, form.components(["width", "height"]),
              self.size_note, **instant("size-note"))
        self.gallery.select(pick_item, self.items, self.sending, **instant("generate-pick"))
        self.load_png.upload(self.read_settings, self.load_png, form.restorable, api_name="read_settings",
                             concurrency_id="settings")
        plan_inputs = {name: form[name] for name in PLAN_FIELDS}  # the weight plot follows the guidance plan
        gr.on([component.change for component in plan_inputs.values()], self.plot_weights, inputs_kwargs=plan_inputs,
              outputs=[self.weight_plot, self.structure_plot], **instant("weight-plot"))
        for row in range(1, ROWS + 1):  # a control just picked reads its image as its maps were made
            control = form[row_field(row, "control")]
            control.input(lambda picked: source_for(self.engine, picked), control, form[row_field(row, "map")],
                          **instant("generate-structure"))
        for prefix in [*(f"row{row}_" for row in range(1, ROWS + 1)), IMAGE_PROMPT_PREFIX]:
            form[f"{prefix}mode"].change(channel_only, form[f"{prefix}mode"],
                                         form.components([f"{prefix}weight", f"{prefix}schedule"]),
                                         **instant("generate-structure"))
        self.reuse_seed.click(reuse_last_seed, self.settings, form.components(["seed", "random_seed"]),
                              api_visibility="private", concurrency_id="settings")


CSS = """
/* the chip over a picture's top-left corner would hide the top of the plot or image under it */
#weight-plot .image-container, #preview .image-container, #heatmap .image-container { padding-top: 36px; }
"""
