"""The DiffEdit tab: an image (or the Inversion tab's current inversion), a source and a target prompt.

"Find mask" runs Stage I and previews the mask live as the probes accumulate; the threshold and the
open/close kernel re-threshold the last soft map at once (no model work), and the mask lands on an editor
where the user can paint or erase before "Edit" runs Stage II with it. "Edit" without a mask on the editor
runs both stages. Endpoints ``/diffedit_mask`` and ``/diffedit`` stream progress, then their results.
"""

from __future__ import annotations

import html
from typing import Any, Iterator

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.editing import masks
from studio.editing.diffedit import (
    CLEAN,
    DEVIATIONS,
    NOISE_SAMPLES,
    PROBES,
    STARTS,
    DIFFEDIT_STRENGTH,
    MASK_THRESHOLD,
    DiffEditResult,
    DiffEditSpec,
    MaskResult,
    binary_mask,
    overlay,
)
from studio.errors import InvalidInputError
from studio.events import CancelToken, Mask, Preview
from studio.images import prepare_image
from studio.ui.stream import EditJobs, progress_html

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


def build_diffedit_tab(engine: Any, inversion_state: gr.State | None = None) -> dict[str, Any]:
    """Lay out the DiffEdit tab; `inversion_state` holds the Inversion tab's latest Inversion (or None)."""
    jobs = EditJobs()
    native = int(engine.native_size)

    # 1. layout ---------------------------------------------------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            image = gr.Image(label="Image to edit", type="numpy", image_mode="RGB", format="png", height=260,
                             elem_id="diffedit-image")
            use_inversion = gr.Checkbox(label="Edit the current inversion (Inversion tab) instead", value=False,
                                        visible=inversion_state is not None, elem_id="diffedit-use-inversion")
            source = gr.Textbox(label="Source prompt (what the image shows)", elem_id="diffedit-source",
                                placeholder="a big red circle on a blue background")
            target = gr.Textbox(label="Target prompt (what it should show)", elem_id="diffedit-target",
                                placeholder="a big green circle on a blue background")
            with gr.Row():
                find = gr.Button("Find mask", elem_id="diffedit-mask-btn")
                go = gr.Button("Edit", variant="primary", elem_id="diffedit-edit-btn")
                stop = gr.Button("Stop", variant="stop", elem_id="diffedit-stop")
            with gr.Accordion("Stage I: mask", open=True):
                with gr.Row():
                    deviation = gr.Radio(list(DEVIATIONS), value=DEFAULTS.deviation, label="Compare",
                                         info="eps or x0 predictions", elem_id="diffedit-deviation")
                    threshold = gr.Slider(MASK_THRESHOLD.low, MASK_THRESHOLD.high, value=DEFAULTS.threshold,
                                          step=MASK_THRESHOLD.step, label=MASK_THRESHOLD.label, elem_id="diffedit-threshold")
                with gr.Row():
                    probes = gr.Slider(PROBES.low, PROBES.high, value=DEFAULTS.probes, step=1, label=PROBES.label,
                                       elem_id="diffedit-probes")
                    noise_samples = gr.Slider(NOISE_SAMPLES.low, NOISE_SAMPLES.high, value=DEFAULTS.noise_samples,
                                              step=1, label=NOISE_SAMPLES.label, elem_id="diffedit-samples")
                with gr.Row():
                    mask_strength = gr.Slider(DIFFEDIT_STRENGTH.low, DIFFEDIT_STRENGTH.high, value=DEFAULTS.mask_strength,
                                              step=DIFFEDIT_STRENGTH.step, label="Probe noise up to (fraction of T)",
                                              elem_id="diffedit-mask-strength")
                    clean = gr.Slider(CLEAN.low, CLEAN.high, value=DEFAULTS.clean_pixels, step=1, label=CLEAN.label,
                                      elem_id="diffedit-clean")
            with gr.Accordion("Stage II: edit", open=True):
                with gr.Row():
                    edit_strength = gr.Slider(DIFFEDIT_STRENGTH.low, DIFFEDIT_STRENGTH.high, value=DEFAULTS.edit_strength,
                                              step=DIFFEDIT_STRENGTH.step, label="t_edit (fraction of T)",
                                              elem_id="diffedit-edit-strength")
                    start = gr.Radio(list(STARTS), value=DEFAULTS.start, label="Start from",
                                     info="DDIM inversion of the source, or the image noised",
                                     elem_id="diffedit-start")
                with gr.Row():
                    steps = gr.Slider(specs.STEPS.low, 100, value=DEFAULTS.steps, step=1, label="Steps (whole schedule)",
                                      elem_id="diffedit-steps")
                    guidance = gr.Slider(specs.GUIDANCE.low, specs.GUIDANCE.high, value=DEFAULTS.guidance_scale,
                                         step=specs.GUIDANCE.step, label=specs.GUIDANCE.label,
                                         elem_id="diffedit-guidance")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=specs.SEED.high,
                                     elem_id="diffedit-seed")
                    composite = gr.Checkbox(label="Paste original pixels outside the mask", value=DEFAULTS.composite,
                                            elem_id="diffedit-composite")
        with gr.Column(scale=6, min_width=360):
            status = gr.HTML(progress_html(0, 0, "Ready.", "idle"), elem_id="diffedit-status")
            with gr.Row(equal_height=False):
                mask_preview = gr.Image(label="Mask (live)", format="png", interactive=False, height=260, buttons=[],
                                        elem_id="diffedit-mask-preview")
                result = gr.Image(label="Edited", format="png", interactive=False, height=260,
                                  elem_id="diffedit-result")
            mask_editor = gr.ImageEditor(
                label="Touch up the mask (paint adds, eraser removes), then Edit", type="numpy", image_mode="RGBA",
                format="png", canvas_size=(native, native), height=300, sources=(), transforms=(),
                brush=gr.Brush(default_size=8, colors=["#ff00ff"], color_mode="fixed"),
                layers=gr.LayerOptions(allow_additional_layers=False, layers=["mask"]),
                elem_id="diffedit-mask-editor",
            )
            settings = gr.JSON(label="Settings", elem_id="diffedit-settings", height=200)
    found = gr.State(None)  # {"soft": (H, W) float map, "image": (H, W, 3) uint8} of the last Stage I

    # 2. handlers ---------------------------------------------------------------------------
    def _spec(source_text: str, target_text: str, deviation_value: str, threshold_value: float, probes_value: float,
              samples_value: float, mask_strength_value: float, clean_value: float, edit_strength_value: float,
              start_value: str, steps_value: float, guidance_value: float, seed_value: float | None,
              composite_value: bool) -> DiffEditSpec:
        if seed_value is None:
            raise InvalidInputError("Enter a seed.")
        return DiffEditSpec(
            source_prompt=source_text or "", target_prompt=target_text or "", steps=int(steps_value),
            guidance_scale=float(guidance_value), mask_strength=float(mask_strength_value), probes=int(probes_value),
            noise_samples=int(samples_value), deviation=deviation_value, threshold=float(threshold_value),
            clean_pixels=int(clean_value), edit_strength=float(edit_strength_value), start=start_value,
            seed=int(seed_value), composite=bool(composite_value),
        )

    def _inversion(use: bool, state: Any) -> Any:
        if not use:
            return None
        if state is None:
            raise InvalidInputError("There is no inversion yet: run one on the Inversion tab, or untick the box.")
        return state

    def find_mask(image_value: np.ndarray | None, use: bool, inversion: Any, *form: Any,
                  request: gr.Request = None) -> Iterator[tuple]:
        """Stage I: streams (status, mask preview, mask editor, found state) after every probe."""
        skip = gr.skip()

        def start(cancel: CancelToken) -> Iterator:
            spec = _spec(*form)
            chosen = _inversion(use, inversion)
            return engine.diffedit_mask(spec, None if chosen is not None else image_value, chosen, cancel)

        shown: dict[str, Any] = {}

        def render(event: Any, total: int) -> tuple | None:
            if isinstance(event, MaskResult):
                picture = np.asarray(shown["image"])
                text = f"Mask found: {100 * event.binary.mean():.1f}% of the image · adjust, touch up, then Edit"
                return (progress_html(total, total, text, "done"), event.images[0],
                        editor_value(picture, event.binary), {"soft": event.soft, "image": picture})
            if isinstance(event, Mask):
                if "image" not in shown:
                    shown["image"] = _prepared(image_value, inversion if use else None)
                return skip, overlay(shown["image"], event.binary), skip, skip
            return None

        yield from jobs.run(request, start, 4, render, "DiffEdit mask")

    def _prepared(image_value: np.ndarray | None, inversion: Any) -> Image.Image:
        return prepare_image(inversion.image if inversion is not None else image_value, native).image

    def rethreshold(state: dict | None, threshold_value: float, clean_value: float) -> tuple:
        """New threshold or kernel on the last soft map: preview and editor update at once (no model work)."""
        if not state:
            return gr.skip(), gr.skip()
        binary = binary_mask(state["soft"], float(threshold_value), int(clean_value))
        return overlay(Image.fromarray(state["image"]), binary), editor_value(state["image"], binary)

    def run_edit(image_value: np.ndarray | None, use: bool, inversion: Any, editor: dict | None, *form: Any,
                 request: gr.Request = None) -> Iterator[tuple]:
        """Stage II with the editor's mask (Stages I and II when it is empty): streams (status, preview,
        result, settings)."""
        skip = gr.skip()

        def start(cancel: CancelToken) -> Iterator:
            spec = _spec(*form)
            chosen = _inversion(use, inversion)
            mask, background = edited_mask(editor)
            # A touched-up mask belongs to the image on the editor (already at the model's size).
            picture = background if mask is not None and chosen is None else image_value
            return engine.diffedit(spec, None if chosen is not None else picture, mask, chosen, cancel)

        def render(event: Any, total: int) -> tuple | None:
            if isinstance(event, Mask):
                return skip, Image.fromarray((event.binary * 255).astype(np.uint8)), skip, skip
            if isinstance(event, Preview):
                return skip, skip, event.images[0], skip
            if isinstance(event, DiffEditResult):
                text = (f"Done in {event.timings['total']:.1f} s · mask {100 * event.mask.mean():.1f}% "
                        f"({event.settings['mask_from']}) · {event.unet_evaluations} UNet evaluations")
                return progress_html(total, total, text, "done"), skip, event.images[0], event.settings
            return None

        yield from jobs.run(request, start, 4, render, "DiffEdit")

    # 3. events -------------------------------------------------------------------------------
    inversion_input = inversion_state if inversion_state is not None else gr.State(None)
    form = [source, target, deviation, threshold, probes, noise_samples, mask_strength, clean, edit_strength, start,
            steps, guidance, seed, composite]
    finding = find.click(find_mask, [image, use_inversion, inversion_input, *form],
                         [status, mask_preview, mask_editor, found], api_name="diffedit_mask", concurrency_id="model",
                         show_progress="hidden")
    editing = go.click(run_edit, [image, use_inversion, inversion_input, mask_editor, *form],
                       [status, mask_preview, result, settings], api_name="diffedit", concurrency_id="model",
                       show_progress="hidden")
    stop.click(jobs.stop, None, status, cancels=[finding, editing], api_name="diffedit_stop",
               api_visibility="undocumented", concurrency_limit=None, concurrency_id="stop", show_progress="hidden")
    gr.on([threshold.release, clean.release], rethreshold, [found, threshold, clean], [mask_preview, mask_editor],
          api_visibility="private", concurrency_limit=None, concurrency_id="diffedit-threshold",
          show_progress="hidden")
    # A new image makes the old mask meaningless.
    image.change(lambda: (None, None), None, [mask_editor, found], api_visibility="private",
                 concurrency_limit=None, concurrency_id="diffedit-threshold", show_progress="hidden")
    gr.Markdown(
        f"Model **{html.escape(str(engine.model_name))}**. DiffEdit (seed §4.3): the mask is where the source and "
        "target predictions of the same noisy image disagree; the edit regenerates only there and puts the "
        "original back everywhere else at every step.", elem_id="diffedit-help",
    )
    return {"image": image, "mask_preview": mask_preview, "mask_editor": mask_editor, "result": result,
            "status": status, "run": editing, "find": finding}
