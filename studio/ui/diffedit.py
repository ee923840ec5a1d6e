"""The DiffEdit tab: an image (or the Inversion tab's current inversion), a source and a target prompt.

"Find mask" runs Stage I and previews the mask live as the probes accumulate; the threshold and the
open/close kernel re-threshold the last soft map at once (no model work), and the mask lands on an editor
where the user can paint or erase before "Edit" runs Stage II with it. "Edit" without a mask on the editor
runs both stages. Endpoints ``/diffedit_mask`` and ``/diffedit`` stream progress, then their results.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.editing import masks
from studio.editing.diffedit import (
    CLEAN,
    DEVIATIONS,
    DIFFEDIT_STRENGTH,
    MASK_THRESHOLD,
    NOISE_SAMPLES,
    PROBES,
    STARTS,
    DiffEditSpec,
    binary_mask,
    overlay,
)
from studio.errors import InvalidInputError
from studio.events import CancelToken, DiffEditResult, Event, Mask, MaskResult, Preview
from studio.ui.form import Field, optional_whole, seed_from_form, seed_box, slider, spec_values, text, textbox
from studio.ui.parts import Tab, chosen_inversion, instant, model_line, settings_view, with_inversion
from studio.ui.stream import JOB_EVENT, Outputs, done_html, status_box, stop_button, stream_job

DEFAULTS = DiffEditSpec("", "")
MASK_RGBA = (255, 0, 255, 255)  # how the found mask is painted on the editor's layer
NO_INVERSION = "There is no inversion yet: run one on the Inversion tab, or untick the box."


# --------------------------------------------------------------------------------------------
# Pure helpers


def mask_layer(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> RGBA layer painted where the mask is (alpha 0 elsewhere), for the editor."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = MASK_RGBA
    return layer


def editor_value(image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    return {"background": image, "layers": [mask_layer(mask)], "composite": None}


def edited_mask(value: dict | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mask or None, the editor's background RGB) from the mask editor: None when nothing is painted."""
    if not value or value.get("background") is None:
        return None, None
    background = np.asarray(value["background"])[..., :3]
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    painted = np.zeros(background.shape[:2], bool)
    for layer in layers:
        layer_mask = masks.painted_mask(layer)
        if layer_mask.shape != painted.shape:
            raise InvalidInputError(
                f"The mask is {layer_mask.shape[1]}x{layer_mask.shape[0]} but the image is "
                f"{painted.shape[1]}x{painted.shape[0]}: press 'Find mask' again to start from this image."
            )
        painted |= layer_mask
    return (painted if painted.any() else None), background


def rethreshold(found: dict | None, threshold: float, clean_pixels: float) -> tuple:
    """New threshold or kernel on the last soft map: preview and editor update at once (no model work)."""
    if not found:
        return gr.skip(), gr.skip()
    binary = binary_mask(found["soft"], float(threshold), int(clean_pixels))
    return overlay(Image.fromarray(found["image"]), binary), editor_value(found["image"], binary)


# --------------------------------------------------------------------------------------------
# The form


FIELDS = (
    Field("image", lambda engine: gr.Image(label="Image to edit", type="numpy", image_mode="RGB", format="png",
                                           height=260, elem_id="diffedit-image"), in_spec=False),
    Field("use_inversion", lambda engine: gr.Checkbox(label="Edit the current inversion (Inversion tab) instead",
                                                      value=False, elem_id="diffedit-use-inversion"), in_spec=False),
    Field("source_prompt", textbox(label="Source prompt (what the image shows)",
                                                     elem_id="diffedit-source",
                                                     placeholder="a big red circle on a blue background"), text),
    Field("target_prompt", textbox(label="Target prompt (what it should show)",
                                                     elem_id="diffedit-target",
                                                     placeholder="a big green circle on a blue background"), text),
    # Stage I
    Field("deviation", lambda engine: gr.Radio(list(DEVIATIONS), value=DEFAULTS.deviation, label="Compare",
                                               info="eps or x0 predictions", elem_id="diffedit-deviation"), str),
    Field("threshold", slider(MASK_THRESHOLD, DEFAULTS.threshold, elem_id="diffedit-threshold"), float),
    Field("probes", slider(PROBES, DEFAULTS.probes, elem_id="diffedit-probes"), int),
    Field("noise_samples", slider(NOISE_SAMPLES, DEFAULTS.noise_samples, elem_id="diffedit-samples"), int),
    Field("mask_strength", slider(DIFFEDIT_STRENGTH, DEFAULTS.mask_strength, label="Probe noise up to (fraction of T)",
                                  elem_id="diffedit-mask-strength"), float),
    Field("clean_pixels", slider(CLEAN, DEFAULTS.clean_pixels, elem_id="diffedit-clean"), int),
    # Stage II
    Field("edit_strength", slider(DIFFEDIT_STRENGTH, DEFAULTS.edit_strength, label="t_edit (fraction of T)",
                                  elem_id="diffedit-edit-strength"), float),
    Field("start", lambda engine: gr.Radio(list(STARTS), value=DEFAULTS.start, label="Start from",
                                           info="DDIM inversion of the source, or the image noised",
                                           elem_id="diffedit-start"), str),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, label="Steps (whole schedule)", elem_id="diffedit-steps"), int),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="diffedit-guidance"), float),
    Field("seed", seed_box("diffedit-seed"), optional_whole),
    Field("composite", lambda engine: gr.Checkbox(label="Paste original pixels outside the mask",
                                                  value=DEFAULTS.composite, elem_id="diffedit-composite"), bool),
    # the found mask, touched up by the user: an input of the edit only
    Field("mask", lambda engine: gr.ImageEditor(
        label="Touch up the mask (paint adds, eraser removes), then Edit", type="numpy", image_mode="RGBA",
        format="png", canvas_size=(engine.native_size,) * 2, height=300, sources=(), transforms=(),
        brush=gr.Brush(default_size=8, colors=["#ff00ff"], color_mode="fixed"),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["mask"]),
        elem_id="diffedit-mask-editor"), in_spec=False),
)


def spec_from_values(values: Mapping[str, Any]) -> DiffEditSpec:
    parsed = spec_values(FIELDS, values)
    parsed["seed"] = seed_from_form(parsed.get("seed"))
    return DiffEditSpec(**parsed)


STAGES = (  # the two accordions' rows of fields
    ("Stage I: mask", (("deviation", "threshold"), ("probes", "noise_samples"), ("mask_strength", "clean_pixels"))),
    ("Stage II: edit", (("edit_strength", "start"), ("steps", "guidance_scale"), ("seed", "composite"))),
)


# --------------------------------------------------------------------------------------------
# The tab


class DiffEditTab(Tab):
    """The DiffEdit tab (the shape of every tab: `parts.Tab`), with two jobs: `find_mask` (Stage I, rendered by
    `render_mask`) and `run` (Stage II)."""

    fields = FIELDS

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                self.image, use_inversion = form.place("image", "use_inversion")
                use_inversion.visible = self.inversion_state is not None
                form.place("source_prompt", "target_prompt")
                with gr.Row():
                    self.find = gr.Button("Find mask", elem_id="diffedit-mask-btn")
                    self.go = gr.Button("Edit", variant="primary", elem_id="diffedit-edit-btn")
                    self.stop = gr.Button("Stop", variant="stop", elem_id="diffedit-stop")
                for title, rows in STAGES:
                    with gr.Accordion(title, open=True):
                        for row in rows:
                            with gr.Row():
                                form.place(*row)
            with gr.Column(scale=6, min_width=360):
                self.status = status_box("diffedit-status")
                with gr.Row(equal_height=False):
                    self.mask_preview = gr.Image(label="Mask (live)", format="png", interactive=False, height=260,
                                                 buttons=[], elem_id="diffedit-mask-preview")
                    self.result = gr.Image(label="Edited", format="png", interactive=False, height=260,
                                           elem_id="diffedit-result")
                (self.mask_editor,) = form.place("mask")
                self.settings = settings_view("diffedit-settings", "Settings")
        self.found = gr.State(None)  # {"soft": (H, W) float map, "image": (H, W, 3) uint8} of the last Stage I
        gr.Markdown(
            f"{model_line(self.engine)}. DiffEdit (Couairon et al. 2023): the mask is where the source and "
            "target predictions of the same noisy image disagree; the edit regenerates only there and puts the "
            "original back everywhere else at every step.", elem_id="diffedit-help",
        )

    # 2. handlers -------------------------------------------------------------------------
    def find_mask(self, request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Stage I: streams the mask after every probe (preview, editor and the found state). The mask is shown
        on the image it belongs to (the event's: a keep-size inversion's own size, not the model's)."""

        def start(cancel: CancelToken) -> Iterator[Event]:
            spec, inversion = spec_from_values(values), chosen_inversion(values, NO_INVERSION)
            return self.engine.diffedit_mask(spec, None if inversion is not None else values.get("image"), inversion,
                                             cancel)

        yield from stream_job("diffedit", request, self.status, start, self.render_mask, "DiffEdit mask")

    def run(self, request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Stage II with the editor's mask (Stages I and II when it is empty): streams progress, the mask, previews,
        then the edited image and the settings."""

        def start(cancel: CancelToken) -> Iterator[Event]:
            spec, inversion = spec_from_values(values), chosen_inversion(values, NO_INVERSION)
            mask, background = edited_mask(values.get("mask"))
            # A touched-up mask belongs to the image on the editor (the one Stage I worked on, at its size).
            picture = background if mask is not None and inversion is None else values.get("image")
            return self.engine.diffedit(spec, None if inversion is not None else picture, mask, inversion, cancel)

        yield from stream_job("diffedit", request, self.status, start, self.render, "DiffEdit")

    def render_mask(self, event: Event) -> Outputs | None:
        if isinstance(event, MaskResult):
            picture = np.asarray(event.image)
            text = f"Mask found: {100 * event.binary.mean():.1f}% of the image · adjust, touch up, then Edit"
            return {self.status: done_html(text), self.mask_preview: event.images[0],
                    self.mask_editor: editor_value(picture, event.binary),
                    self.found: {"soft": event.soft, "image": picture}}
        if isinstance(event, Mask):
            return {self.mask_preview: overlay(event.image, event.binary)}
        return None

    def render(self, event: Event) -> Outputs | None:
        if isinstance(event, Mask):
            return {self.mask_preview: Image.fromarray((event.binary * 255).astype(np.uint8))}
        if isinstance(event, Preview):
            return {self.result: event.images[0]}
        if isinstance(event, DiffEditResult):
            text = (f"Done in {event.timings['total']:.1f} s · mask {100 * event.mask.mean():.1f}% "
                    f"({event.mask_from}) · {event.unet_evaluations} UNet evaluations")
            return {self.status: done_html(text), self.result: event.images[0], self.settings: event.settings}
        return None

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        inputs = with_inversion(self.form.inputs, self.inversion_state)
        stage_one_inputs = {name: component for name, component in inputs.items() if name != "mask"}
        finding = self.find.click(self.find_mask, inputs_kwargs=stage_one_inputs, api_name="diffedit_mask",
                                  outputs=[self.status, self.mask_preview, self.mask_editor, self.found], **JOB_EVENT)
        self.run_event = self.go.click(self.run, inputs_kwargs=inputs, api_name="diffedit", **JOB_EVENT,
                                       outputs=[self.status, self.mask_preview, self.result, self.settings])
        stop_button(self.stop, self.status, [finding, self.run_event], tab="diffedit", api_name="diffedit_stop")
        threshold, clean = self.form.components(["threshold", "clean_pixels"])
        gr.on([threshold.release, clean.release], rethreshold, [self.found, threshold, clean],
              [self.mask_preview, self.mask_editor], **instant("diffedit-threshold"))
        # A new image makes the old mask meaningless.
        self.image.change(lambda: (None, None), None, [self.mask_editor, self.found], **instant("diffedit-threshold"))
