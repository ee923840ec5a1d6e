"""Control rows and the image-prompt row, as fields of any tab's form: ControlNet (Zhang, Rao & Agrawala 2023),
T2I-Adapter (Mou et al. 2024) and IP-Adapter (Ye et al. 2023, eq. 5: Z = Attn(Q, K, V) + lambda Attn(Q, K', V')).

The Structure tab, the Generate tab's condition table and the editing tabs build their rows from here (field names
row1_control ..., image_prompt_...; elem ids prefixed by the tab), parse them into a StructureSpec
(`structure_from_values`), derive a row's map from a picture (`MAP_SOURCES`, `derive_map`) and plot a run's
StructureSchedule (`schedule_plot`). This module imports no tab, so every tab can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.errors import InvalidInputError
from studio.plots import line_chart
from studio.structure import maps
from studio.structure.runtime import StructureSchedule
from studio.structure.spec import (
    CONTROL_MODES,
    CONTROL_SCALE,
    IMAGE_PROMPT_MODES,
    IMAGE_PROMPT_SCALE,
    ControlSpec,
    ImagePromptSpec,
    StructureImages,
    StructureSpec,
)
from studio.ui.form import Field, Form, number, slider
from studio.ui.parts import rgb

if TYPE_CHECKING:
    from studio.engine import Engine

CONTROL_DEFAULTS = ControlSpec(control="")
IMAGE_PROMPT_DEFAULTS = ImagePromptSpec()
ROWS = 2  # control rows: e.g. a layout ControlNet and an outline control at once, each with its own map
NO_CONTROL = "none"
MAP_SOURCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "drawing": maps.map_from_drawing,  # the strokes as drawn, any colour on a plain canvas
    "outline (Canny)": maps.outline_from_image,  # any picture's edges, as ControlNet's canny preprocessor
    "layout (colours)": maps.layout_from_image,  # a shapes picture: every object's region, flat white
}
# the map source that fits a control's trained_for
SOURCE_FOR = {"layout": "layout (colours)", "outline": "outline (Canny)", "canny": "outline (Canny)"}
MODE_LABELS = {  # the names users of diffusers and A1111 know
    "balanced": "balanced · diffusers' default, A1111 'Balanced'",
    "prompt": "prompt · A1111 'My prompt is more important'",
    "control": "control · A1111 'ControlNet is more important'",
    "guess": "guess · diffusers' guess_mode",
    "channel": "channel · its own guidance weight w(t)·(ε_k − ε_u)",
}
KIND_LABELS = {"controlnet": "ControlNet", "t2i_adapter": "T2I-Adapter"}
MODES_HELP = (
    "**Modes.** balanced: the control on both classifier-free guidance branches, every layer at the scale "
    "(diffusers' default). prompt: deeper layers weaker (scale·0.825^(n−1−k), A1111). control: the conditional "
    "branch only, layers as in prompt (A1111). guess: conditional branch only, layer scales from 0.1 to 1 "
    "(diffusers' guess_mode). channel: a "
    "guidance term of its own, w(t)·(ε<sub>control</sub> − ε<sub>uncond</sub>), with the row's weight and schedule "
    "(composable guidance, Liu et al. 2022; InstructPix2Pix eq. 3), which per-channel dropout in training makes "
    "meaningful. Control scale: diffusers' controlnet_conditioning_scale / adapter_conditioning_scale. start/stop: "
    "the fraction of the run the control is on."
)


# --------------------------------------------------------------------------------------------
# Maps, controls and the rows' values


def derive_map(picture: np.ndarray, source: str, width: int, height: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The control map a row reads from a picture, prepared at width x height (height None: a square), and the
    notes of what the preparation changed. An empty map raises InvalidInputError."""
    if source not in MAP_SOURCES:
        raise InvalidInputError(f"Map from {source!r} is not offered: choose one of {', '.join(MAP_SOURCES)}.")
    return maps.prepare_control_map(MAP_SOURCES[source](picture), width, width if height is None else height)


def structure_images(values: Mapping[str, Any], structure: StructureSpec, rows: list[int],
                     picture_of: Callable[[int], np.ndarray | None], size: tuple[int, int],
                     label: str = "Row") -> tuple[StructureImages, list[str]]:
    """The images of a structure: each picked row's map derived from its picture (`picture_of(row)`, RGB uint8) by
    the row's map source, prepared at size (width, height), and the image prompt's reference from `values`; with
    the notes of what the preparation changed. A row without a picture, an empty map (both naming the row) or an
    image prompt without its reference raises InvalidInputError. Shared by every tab with control rows."""
    control_maps, notes = [], []
    for row, control in zip(rows, structure.controls):
        source = values.get(row_field(row, "map")) or "drawing"
        what = f"{label} {row} ({control.control}, map from {source})"
        picture = picture_of(row)
        if picture is None:
            raise InvalidInputError(f"{what} has no image: upload its map or a picture to derive it from, or set "
                                    "the row's control to none.")
        try:
            control_map, row_notes = derive_map(picture, source, *size)
        except InvalidInputError as error:
            raise InvalidInputError(f"{what}: {error}") from error
        control_maps.append(control_map)
        notes += [f"{what}: {note}" for note in row_notes]
    return StructureImages(controls=tuple(control_maps), image_prompt=image_prompt_reference(values)), notes


def notes_text(notes: list[str]) -> str:
    return " ".join(notes)


def control_choices(engine: Engine) -> list[tuple[str, str]]:
    """The control dropdown's choices: none, then each loaded control with its kind and the maps it was trained on."""
    choices = [("none", NO_CONTROL)]
    for name, control in engine.model.controls.items():
        reads = f"trained for {control.trained_for} maps" if control.trained_for else "trained for unknown maps"
        choices.append((f"{name} · {KIND_LABELS.get(control.kind, control.kind)} · {reads}", name))
    return choices


def default_controls(engine: Engine) -> list[str]:
    """Each row's control at start: a layout control first, then an outline one, then any others; none after."""
    names = sorted(engine.model.controls,
                   key=lambda name: ({"layout": 0, "outline": 1}.get(engine.model.controls[name].trained_for, 2), name))
    return (names + [NO_CONTROL] * ROWS)[:ROWS]


def source_for(engine: Engine, control: str) -> str:
    """The map source that fits a control: its trained_for's ("layout (colours)" for a layout control)."""
    found = engine.model.controls.get(control)
    return SOURCE_FOR.get(found.trained_for if found is not None else "", "drawing")


def row_field(row: int, name: str) -> str:
    """The form field of a control row's setting (rows count from 1)."""
    return f"row{row}_{name}"


IMAGE_PROMPT_PREFIX = "image_prompt_"


ROW_LAYOUT = (("control", "map"), ("scale", "start", "stop"), ("mode", "weight", "schedule"))  # a control row's lines


def place_row_settings(form: Form, row: int) -> None:
    """A control row's settings, line by line (ROW_LAYOUT), wherever a tab shows the row."""
    for settings in ROW_LAYOUT:
        with gr.Row():
            form.place(*(row_field(row, setting) for setting in settings))


def _popped(parsed: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {name[len(prefix):]: parsed.pop(name) for name in list(parsed) if name.startswith(prefix)}


def structure_from_values(parsed: dict[str, Any], values: Mapping[str, Any]) -> tuple[StructureSpec, list[int]]:
    """The StructureSpec of a form's parsed row and image-prompt settings (popped from `parsed`, so what is left
    are the job's own) and the rows (counted from 1) its controls come from: the rows with a control picked, and
    the image prompt when `values` has it on. Shared by every tab with control rows."""
    rows = [_popped(parsed, f"row{row}_") for row in range(1, ROWS + 1)]
    image_prompt = _popped(parsed, IMAGE_PROMPT_PREFIX)
    picked = [row for row, settings in enumerate(rows, start=1) if settings.get("control", NO_CONTROL) != NO_CONTROL]
    structure = StructureSpec(controls=tuple(ControlSpec(**rows[row - 1]) for row in picked),
                              image_prompt=ImagePromptSpec(**image_prompt) if values.get("image_prompt_on") else None)
    return structure, picked


def image_prompt_reference(values: Mapping[str, Any]) -> np.ndarray | None:
    """The image prompt's reference (RGB uint8) when the form has the image prompt on, else None; on without a
    reference raises InvalidInputError."""
    if not values.get("image_prompt_on"):
        return None
    reference = values.get("image_prompt_reference")
    if reference is None:
        raise InvalidInputError("The image prompt is on but has no reference image: upload one, or untick "
                                "'Image prompt'.")
    return rgb(reference)


def schedule_plot(schedule: StructureSchedule) -> Image.Image:
    """Chart of a run's StructureSchedule (steps from 1): each row's scale per step (0 outside its window) and each
    channel row's guidance weight w(t)."""
    scales, weights = schedule.scales.numpy(), schedule.channel_weights.numpy()  # (N, R), (N, K)
    steps = list(range(1, len(scales) + 1))
    series = {f"{label}: scale": (steps, scales[:, r].tolist()) for r, label in enumerate(schedule.labels)}
    series.update({f"{label}: weight w(t)": (steps, weights[:, k].tolist())
                   for k, label in enumerate(schedule.channel_labels)})
    top = max([1.0, *scales.ravel().tolist(), *weights.ravel().tolist()])
    return line_chart(series, x_label="step", y_label="per step", size=(460, 180), markers=len(steps) <= 12,
                      y_range=(0.0, 1.1 * top))  # headroom: a scale of 1 all along is a line, not the frame


# --------------------------------------------------------------------------------------------
# The rows as form fields


def _saved_row(row: int, name: str) -> Callable[[Mapping[str, Any]], Any]:
    """Restore a control row's setting from a record's structure spec; a row the record has no control for is
    set to none. Records without a structure leave the rows as they are."""

    def restore(settings: Mapping[str, Any]) -> Any:
        if "structure" not in settings:
            return None
        controls = list((settings.get("structure") or {}).get("controls") or [])
        if row > len(controls):
            return NO_CONTROL if name == "control" else None
        return controls[row - 1].get(name)

    return restore


def _saved_image_prompt(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """Restore an image-prompt setting ("on": whether the record had an image prompt)."""

    def restore(settings: Mapping[str, Any]) -> Any:
        if "structure" not in settings:
            return None
        found = (settings.get("structure") or {}).get("image_prompt")
        if name == "on":
            return found is not None
        return None if found is None else found.get(name)

    return restore


def _mode_box(elem_id: str, value: str) -> Callable[[Engine], gr.Dropdown]:
    return lambda engine: gr.Dropdown([(MODE_LABELS[mode], mode) for mode in CONTROL_MODES], value=value,
                                      label="Control mode", elem_id=elem_id, scale=3, min_width=200)


def _schedule_box(elem_id: str, value: str, visible: bool) -> Callable[[Engine], gr.Dropdown]:
    return lambda engine: gr.Dropdown(list(specs.GUIDANCE_SCHEDULES), value=value, label="Schedule (channel mode)",
                                      elem_id=elem_id, min_width=120, visible=visible)


def channel_only(mode: str) -> tuple[Any, Any]:
    """The weight and schedule of a row show in the channel mode only (the other modes have no term of their own)."""
    return gr.update(visible=mode == "channel"), gr.update(visible=mode == "channel")


def control_row_fields(row: int, tab: str = "structure", start_off: bool = False,
                       picture: str = "the canvas") -> tuple[Field, ...]:
    """A control row: which control, where its map comes from, its scale and window, its mode, and for the channel
    mode its guidance weight and schedule. `tab` prefixes the elem_ids; `start_off`: the row starts at "none" (the
    editing tabs run without structure unless asked); `picture`: what the map source reads, for its label."""
    prefix, defaults = f"{tab}-row{row}", CONTROL_DEFAULTS
    channel = defaults.mode == "channel"

    def first(engine: Engine) -> str:
        return NO_CONTROL if start_off else default_controls(engine)[row - 1]

    def control_box(engine: Engine) -> gr.Dropdown:
        return gr.Dropdown(control_choices(engine), value=first(engine), label=f"Control {row}",
                           elem_id=f"{prefix}-control", scale=3, min_width=200)

    def map_box(engine: Engine) -> gr.Radio:
        return gr.Radio(list(MAP_SOURCES), value=source_for(engine, first(engine)),
                        label=f"Map from {picture}", elem_id=f"{prefix}-map", scale=3)

    return (
        Field(row_field(row, "control"), control_box, str, _saved_row(row, "control")),
        Field(row_field(row, "map"), map_box, in_spec=False),  # how this run reads the canvas: not a setting
        Field(row_field(row, "scale"), slider(CONTROL_SCALE, defaults.scale, elem_id=f"{prefix}-scale", scale=2),
              float, _saved_row(row, "scale")),
        Field(row_field(row, "start"), number(specs.START, defaults.start, elem_id=f"{prefix}-start", min_width=80),
              float, _saved_row(row, "start")),
        Field(row_field(row, "stop"), number(specs.STOP, defaults.stop, elem_id=f"{prefix}-stop", min_width=80),
              float, _saved_row(row, "stop")),
        Field(row_field(row, "mode"), _mode_box(f"{prefix}-mode", defaults.mode), str, _saved_row(row, "mode")),
        Field(row_field(row, "weight"), number(specs.CONDITION_WEIGHT, defaults.weight, label="Weight (channel mode)",
                                               elem_id=f"{prefix}-weight", min_width=100, visible=channel), float,
              _saved_row(row, "weight")),
        Field(row_field(row, "schedule"), _schedule_box(f"{prefix}-schedule", defaults.schedule, channel), str,
              _saved_row(row, "schedule")),
    )


def image_prompt_fields(tab: str = "structure") -> tuple[Field, ...]:
    """The image-prompt row (IP-Adapter); `tab` prefixes the elem_ids."""
    prefix = f"{tab}-image-prompt"
    return (
        Field("image_prompt_on", lambda engine: gr.Checkbox(
            label="Image prompt", value=False, elem_id=f"{prefix}-on",
            info="IP-Adapter: the reference's colours and arrangement through a second cross-attention"),
              restore=_saved_image_prompt("on"), in_spec=False),
        Field("image_prompt_reference", lambda engine: gr.Image(
            label="Reference image", type="numpy", image_mode="RGB", height=160, sources=["upload", "clipboard"],
            elem_id=f"{prefix}-reference"), in_spec=False),
        Field("image_prompt_scale", slider(IMAGE_PROMPT_SCALE, IMAGE_PROMPT_DEFAULTS.scale,
                                           elem_id=f"{prefix}-scale", info="λ of IP-Adapter eq. 5"),
              float, _saved_image_prompt("scale")),
        Field("image_prompt_mode", lambda engine: gr.Dropdown(
            [(MODE_LABELS[mode], mode) for mode in IMAGE_PROMPT_MODES],
            value=IMAGE_PROMPT_DEFAULTS.mode, label="Image prompt mode", elem_id=f"{prefix}-mode"),
              str, _saved_image_prompt("mode")),
        Field("image_prompt_weight", number(specs.CONDITION_WEIGHT, IMAGE_PROMPT_DEFAULTS.weight,
                                            label="Weight (channel mode)", elem_id=f"{prefix}-weight",
                                            visible=IMAGE_PROMPT_DEFAULTS.mode == "channel"),
              float, _saved_image_prompt("weight")),
        Field("image_prompt_schedule", _schedule_box(f"{prefix}-schedule", IMAGE_PROMPT_DEFAULTS.schedule,
                                                     IMAGE_PROMPT_DEFAULTS.mode == "channel"),
              str, _saved_image_prompt("schedule")),
    )
