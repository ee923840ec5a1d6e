"""The SDEdit tab: paint strokes (on a blank canvas or an image), optionally paint the editable region on the
"mask" layer, and get a strip of results over several t0 (faithfulness to the strokes vs realism).

The canvas is a gr.ImageEditor with two fixed layers: "strokes" (the guide's paint) and "mask" (where the
image may change; leave it empty for unmasked SDEdit). The guide is the background with the strokes layer
on top -- never the mask paint; the original (frozen pixels) is the background. Endpoint ``/sdedit`` streams
progress and ends with the strip, the images, a table of L2-to-guide and realism per image, and the settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from studio import specs
from studio.editing import masks
from studio.editing.sdedit import NOISE_FORMS, REPEATS, SDEditSpec
from studio.errors import InvalidInputError
from studio.events import CancelToken, Event, Preview, SDEditResult
from studio.shapes.vocabulary import COLOURS
from studio.ui.form import Field, optional_whole, seed_from_form, seed_box, slider, spec_values, text, textbox
from studio.ui.parts import Tab, model_line, settings_view
from studio.ui.stream import JOB_EVENT, Outputs, done_html, run_and_stop, status_box, stop_button, stream_job

DEFAULTS = SDEditSpec()
BRUSH_COLOURS = ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in COLOURS.values()]  # the shapes world's palette
TABLE_COLUMNS = ["t0", "repeat", "seed", "L2 to guide", "realism"]
STROKES, MASK = 0, 1  # layer order in the editor
STROKE_EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples" / "strokes"


# --------------------------------------------------------------------------------------------
# Pure helpers


def parse_strengths(text: str) -> tuple[float, ...]:
    """'0.3, 0.5 0.7' -> (0.3, 0.5, 0.7); the engine checks the range."""
    parts = [p for p in str(text or "").replace(",", " ").split() if p]
    if not parts:
        raise InvalidInputError("Enter at least one t0 between 0.05 and 1, e.g. 0.3, 0.5, 0.7.")
    try:
        return tuple(float(p) for p in parts)
    except ValueError as error:
        raise InvalidInputError(f"t0 values must be numbers separated by commas, got {text!r}.") from error


def _layer(layers: list, index: int) -> np.ndarray | None:
    return np.asarray(layers[index]) if len(layers) > index and layers[index] is not None else None


def _is_blank(image: np.ndarray | None) -> bool:
    if image is None:
        return True
    if image.ndim == 3 and image.shape[2] == 4 and not image[..., 3].any():
        return True
    return bool(np.ptp(image[..., :3]) == 0)


def canvas_inputs(value: dict | None, size: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(guide RGB, editable mask or None, original RGB or None) from an ImageEditor value.
    Raises InvalidInputError for a blank canvas."""
    value = value or {}
    layers = list(value.get("layers") or [])
    background = value.get("background")
    background = None if background is None else np.asarray(background)
    strokes, mask_layer = _layer(layers, STROKES), _layer(layers, MASK)
    stroke_pixels = masks.painted_mask(strokes)
    if _is_blank(background) and not stroke_pixels.any():
        raise InvalidInputError("The canvas is blank: paint some strokes (or upload an image) first.")
    if background is None:
        shape = strokes.shape[:2] if strokes is not None else (size, size)
        background = np.full((*shape, 3), 255, np.uint8)
    base = background[..., :3].astype(np.float32)
    if background.ndim == 3 and background.shape[2] == 4:  # transparent canvas: white underneath
        alpha = background[..., 3:4].astype(np.float32) / 255
        base = base * alpha + 255 * (1 - alpha)
    guide = base
    if stroke_pixels.any():
        if strokes.shape[:2] != base.shape[:2]:
            raise InvalidInputError(
                f"The strokes layer is {strokes.shape[1]}x{strokes.shape[0]} but the image is "
                f"{base.shape[1]}x{base.shape[0]}: clear the canvas and paint again."
            )
        alpha = strokes[..., 3:4].astype(np.float32) / 255
        guide = strokes[..., :3].astype(np.float32) * alpha + base * (1 - alpha)
    mask = masks.painted_mask(mask_layer)
    original = None if _is_blank(background) else base.round().astype(np.uint8)
    return guide.round().astype(np.uint8), (mask if mask.any() else None), original


# --------------------------------------------------------------------------------------------
# The form


FIELDS = (
    Field("canvas", lambda engine: gr.ImageEditor(
        label="Canvas: paint strokes; paint the region that may change on the 'mask' layer (optional)",
        type="numpy", image_mode="RGBA", format="png", canvas_size=(engine.native_size,) * 2, height=380,
        brush=gr.Brush(default_size=12, colors=BRUSH_COLOURS, default_color=BRUSH_COLOURS[0]),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["strokes", "mask"]),
        transforms=(), elem_id="sdedit-canvas"), in_spec=False),
    Field("prompt", textbox(label="Prompt (optional)", placeholder="a red circle on a blue background",
                                              elem_id="sdedit-prompt"), text),
    Field("strengths", textbox(
        value=", ".join(f"{s:g}" for s in DEFAULTS.strengths), label="t0 values (0-1)",
        info="Low t0 keeps the strokes; high t0 gives realism. One column each.", elem_id="sdedit-t0"), parse_strengths),
    Field("repeats", slider(REPEATS, DEFAULTS.repeats, elem_id="sdedit-repeats"), int),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, label="Steps (whole schedule)", elem_id="sdedit-steps"), int),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="sdedit-guidance"), float),
    Field("noise_form", lambda engine: gr.Radio(
        list(NOISE_FORMS), value=DEFAULTS.noise_form, label="Noise form",
        info="vp: sqrt(ab) x + sqrt(1-ab) eps, DDIM; ve: x + sigma eps, Euler", elem_id="sdedit-noise-form"), str),
    Field("seed", seed_box("sdedit-seed"), optional_whole),
    Field("random_seed", lambda engine: gr.Checkbox(label="Random seed", value=False, elem_id="sdedit-random-seed"),
          in_spec=False),
    Field("composite", lambda engine: gr.Checkbox(
        label="Paste original pixels outside the mask", value=DEFAULTS.composite,
        info="Masked runs: frozen latents come back exactly either way; the VAE blurs a few pixels across the mask "
             "border unless this is on.", elem_id="sdedit-composite"), bool),
)


def spec_from_values(values: Mapping[str, Any]) -> SDEditSpec:
    parsed = spec_values(FIELDS, values)
    parsed["seed"] = seed_from_form(parsed.get("seed"), bool(values.get("random_seed", False)))
    return SDEditSpec(**parsed)


# --------------------------------------------------------------------------------------------
# The tab


class SDEditTab(Tab):
    """The SDEdit tab (the shape of every tab: `parts.Tab`)."""

    fields = FIELDS

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form, native = self.form, int(self.engine.native_size)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                form.place("canvas", "prompt")
                self.go, self.stop = run_and_stop("Run SDEdit", "sdedit-btn", "sdedit-stop")
                form.place("strengths")
                for row in (("repeats", "steps"), ("guidance_scale", "noise_form"), ("seed", "random_seed", "composite")):
                    with gr.Row():
                        form.place(*row)
            with gr.Column(scale=6, min_width=360):
                self.status = status_box("sdedit-status")
                self.preview = gr.Image(label="Live preview", format="png", interactive=False, height=200, buttons=[],
                                        elem_id="sdedit-preview")
                self.strip = gr.Image(label="Results: guide, then one column per t0 (rows: repeats)", format="png",
                                      interactive=False, elem_id="sdedit-strip")
                self.table = gr.Dataframe(headers=TABLE_COLUMNS, label="Faithfulness (L2 to guide, 0-1 pixels) and "
                                          "realism (classifier confidence)", interactive=False, elem_id="sdedit-table")
                self.gallery = gr.Gallery(label="Images", format="png", columns=4, height=220, elem_id="sdedit-gallery")
                self.settings = settings_view("sdedit-settings", "Settings")
        gr.Examples(
            [[str(STROKE_EXAMPLES / "red_blob_on_blue.png"), "a red circle on a blue background", "0.3, 0.5, 0.7"],
             [str(STROKE_EXAMPLES / "purple_wedge_black_box_on_yellow.png"), "", "0.4, 0.6, 0.8"]],
            form.components(["canvas", "prompt", "strengths"]), label="Stroke drawings", elem_id="sdedit-examples",
        )
        gr.Markdown(
            f"{model_line(self.engine)} · canvas {native}×{native} px. SDEdit (Meng et al. 2022): the guide "
            "is noised to t0 and denoised back; with a mask, frozen pixels are re-noised from the original at every "
            "step and end exactly as they were.", elem_id="sdedit-help",
        )

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """SDEdit of the canvas: streams progress, then the strip, the table, the images and the settings."""

        def start(cancel: CancelToken) -> Iterator[Event]:
            spec = spec_from_values(values)
            guide, mask, original = canvas_inputs(values.get("canvas"), int(self.engine.native_size))
            return self.engine.sdedit(spec, guide, mask=mask, original=original, cancel=cancel)

        yield from stream_job("sdedit", request, self.status, start, self.render, "SDEdit")

    def render(self, event: Event) -> Outputs | None:
        if isinstance(event, Preview):
            return {self.preview: event.images[0]}
        if isinstance(event, SDEditResult):
            rows = [[r.t0, r.repeat, r.seed, round(r.l2_to_guide, 4),
                     None if r.realism is None else round(r.realism, 3)] for r in event.samples]
            masked = "masked" if event.masked else "unmasked"
            text = (f"Done in {event.timings['total']:.1f} s · {masked} · seed {event.seed} · "
                    f"{event.unet_evaluations} UNet evaluations")
            captions = [(image, f"t0 {r.t0:g} · seed {r.seed}") for image, r in zip(event.images, event.samples)]
            return {self.status: done_html(text), self.strip: event.strip, self.table: rows, self.gallery: captions,
                    self.settings: event.settings}
        return None

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        self.run_event = self.go.click(
            self.run, inputs_kwargs=self.form.inputs, api_name="sdedit", **JOB_EVENT,
            outputs=[self.status, self.preview, self.strip, self.table, self.gallery, self.settings])
        stop_button(self.stop, self.status, [self.run_event], tab="sdedit", api_name="sdedit_stop")
