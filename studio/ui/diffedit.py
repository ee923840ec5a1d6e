"""The DiffEdit tab: an image (or the Inversion tab's current inversion), a source and a target prompt.

"Find mask" runs Stage I and previews the mask live as the probes accumulate; the threshold and the
open/close kernel re-threshold the last soft map at once (no model work), and the mask lands on an editor
where the user can paint or erase before "Edit" runs Stage II with it. "Edit" without a mask on the editor
runs both stages. Endpoints ``/diffedit_mask`` and ``/diffedit`` stream progress, then their results.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

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
from studio.events import CancelToken, DiffEditResult, Mask, MaskResult, Preview
from studio.inversion import Inversion
from studio.ui.form import Field, Form, optional_whole, resolve_seed, seed_box, slider, spec_values, text, textbox
from studio.ui.stream import Outputs, done_html, progress_html, stop_button, stream_job

if TYPE_CHECKING:
    from studio.engine import Engine

DEFAULTS = DiffEditSpec("", "")
MASK_RGBA = (255, 0, 255, 255)  # how the found mask is painted on the editor's layer


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
    parsed["seed"] = resolve_seed(parsed.get("seed"))
    return DiffEditSpec(**parsed)


def chosen_inversion(values: Mapping[str, Any]) -> Inversion | None:
    """The Inversion tab's inversion when the box is ticked; an error when there is none yet."""
    if not values.get("use_inversion"):
        return None
    if values.get("inversion") is None:
        raise InvalidInputError("There is no inversion yet: run one on the Inversion tab, or untick the box.")
    return values["inversion"]


def build_diffedit_tab(engine: Engine, inversion_state: gr.State | None = None) -> dict[str, Any]:
    """Lay out the DiffEdit tab; `inversion_state` holds the Inversion tab's latest Inversion (or None)."""
    form = Form(FIELDS, engine)

    # 1. layout ---------------------------------------------------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            image, use_inversion = form.place("image", "use_inversion")
            use_inversion.visible = inversion_state is not None
            form.place("source_prompt", "target_prompt")
            with gr.Row():
                find = gr.Button("Find mask", elem_id="diffedit-mask-btn")
                go = gr.Button("Edit", variant="primary", elem_id="diffedit-edit-btn")
                stop = gr.Button("Stop", variant="stop", elem_id="diffedit-stop")
            with gr.Accordion("Stage I: mask", open=True):
                for row in (("deviation", "threshold"), ("probes", "noise_samples"), ("mask_strength", "clean_pixels")):
                    with gr.Row():
                        form.place(*row)
            with gr.Accordion("Stage II: edit", open=True):
                for row in (("edit_strength", "start"), ("steps", "guidance_scale"), ("seed", "composite")):
                    with gr.Row():
                        form.place(*row)
        with gr.Column(scale=6, min_width=360):
            status = gr.HTML(progress_html(0, 0, "Ready.", "idle"), elem_id="diffedit-status")
            with gr.Row(equal_height=False):
                mask_preview = gr.Image(label="Mask (live)", format="png", interactive=False, height=260, buttons=[],
                                        elem_id="diffedit-mask-preview")
                result = gr.Image(label="Edited", format="png", interactive=False, height=260,
                                  elem_id="diffedit-result")
            (mask_editor,) = form.place("mask")
            settings = gr.JSON(label="Settings", elem_id="diffedit-settings", height=200)
    found = gr.State(None)  # {"soft": (H, W) float map, "image": (H, W, 3) uint8} of the last Stage I

    # 2. handlers ---------------------------------------------------------------------------
    def find_mask(request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Stage I: streams (status, mask preview, mask editor, found state) after every probe. The mask is shown
        on the image it belongs to (the event's: a keep-size inversion's own size, not the model's)."""

        def start(cancel: CancelToken) -> Iterator:
            spec, inversion = spec_from_values(values), chosen_inversion(values)
            return engine.diffedit_mask(spec, None if inversion is not None else values.get("image"), inversion, cancel)

        def render(event: Any) -> Outputs | None:
            if isinstance(event, MaskResult):
                picture = np.asarray(event.image)
                text = f"Mask found: {100 * event.binary.mean():.1f}% of the image · adjust, touch up, then Edit"
                return {status: done_html(text), mask_preview: event.images[0],
                        mask_editor: editor_value(picture, event.binary), found: {"soft": event.soft, "image": picture}}
            if isinstance(event, Mask):
                return {mask_preview: overlay(event.image, event.binary)}
            return None

        yield from stream_job("diffedit", request, status, start, render, "DiffEdit mask")

    def rethreshold(state: dict | None, threshold_value: float, clean_value: float) -> tuple:
        """New threshold or kernel on the last soft map: preview and editor update at once (no model work)."""
        if not state:
            return gr.skip(), gr.skip()
        binary = binary_mask(state["soft"], float(threshold_value), int(clean_value))
        return overlay(Image.fromarray(state["image"]), binary), editor_value(state["image"], binary)

    def run_edit(request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Stage II with the editor's mask (Stages I and II when it is empty): streams (status, preview,
        result, settings)."""

        def start(cancel: CancelToken) -> Iterator:
            spec, inversion = spec_from_values(values), chosen_inversion(values)
            mask, background = edited_mask(values.get("mask"))
            # A touched-up mask belongs to the image on the editor (the one Stage I worked on, at its size).
            picture = background if mask is not None and inversion is None else values.get("image")
            return engine.diffedit(spec, None if inversion is not None else picture, mask, inversion, cancel)

        def render(event: Any) -> Outputs | None:
            if isinstance(event, Mask):
                return {mask_preview: Image.fromarray((event.binary * 255).astype(np.uint8))}
            if isinstance(event, Preview):
                return {result: event.images[0]}
            if isinstance(event, DiffEditResult):
                text = (f"Done in {event.timings['total']:.1f} s · mask {100 * event.mask.mean():.1f}% "
                        f"({event.mask_from}) · {event.unet_evaluations} UNet evaluations")
                return {status: done_html(text), result: event.images[0], settings: event.settings}
            return None

        yield from stream_job("diffedit", request, status, start, render, "DiffEdit")

    # 3. events -------------------------------------------------------------------------------
    inputs = {**form.inputs, "inversion": inversion_state if inversion_state is not None else gr.State(None)}
    stage_one_inputs = {name: component for name, component in inputs.items() if name != "mask"}
    finding = find.click(find_mask, inputs_kwargs=stage_one_inputs, outputs=[status, mask_preview, mask_editor, found],
                         api_name="diffedit_mask", concurrency_id="model", show_progress="hidden")
    editing = go.click(run_edit, inputs_kwargs=inputs, outputs=[status, mask_preview, result, settings],
                       api_name="diffedit", concurrency_id="model", show_progress="hidden")
    stop_button(stop, status, [finding, editing], tab="diffedit", api_name="diffedit_stop")
    threshold, clean = form.components(["threshold", "clean_pixels"])
    gr.on([threshold.release, clean.release], rethreshold, [found, threshold, clean], [mask_preview, mask_editor],
          api_visibility="private", concurrency_limit=None, concurrency_id="diffedit-threshold",
          show_progress="hidden")
    # A new image makes the old mask meaningless.
    image.change(lambda: (None, None), None, [mask_editor, found], api_visibility="private",
                 concurrency_limit=None, concurrency_id="diffedit-threshold", show_progress="hidden")
    gr.Markdown(
        f"Model **{html.escape(str(engine.model_name))}**. DiffEdit (Couairon et al. 2023): the mask is where the source and "
        "target predictions of the same noisy image disagree; the edit regenerates only there and puts the "
        "original back everywhere else at every step.", elem_id="diffedit-help",
    )
    return {"image": image, "mask_preview": mask_preview, "mask_editor": mask_editor, "result": result,
            "status": status, "run": editing, "find": finding}
