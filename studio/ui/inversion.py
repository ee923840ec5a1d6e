"""The Inversion tab: upload a real image, caption it, invert it with several methods and compare.

Layout and handlers only. The upload is any file: it is opened here (a clear error when it is not an
image) and shown as the model will see it, with what was changed (crop, resize, mode). "Invert" runs
each ticked method in turn (`engine.invert`), streaming progress and null-text inversion's loss per
step, then shows each reconstruction beside the original, a comparison table (PSNR, SSIM, latent MSE,
UNet passes, seconds, and seconds relative to DDIM inversion in the same run) with the VAE's own
round trip as the ceiling row, and the latent error per step. The session keeps the inversions; the
one picked under "Edit this image" is `InversionTab.inversion_state`, which the DiffEdit and
Prompt-to-Prompt tabs read. Endpoint ``/invert``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr
from PIL import Image, UnidentifiedImageError

from studio import specs
from studio.errors import InvalidInputError
from studio.events import CancelToken
from studio.images import MAX_INPUT_PIXELS, prepare_image, working_size
from studio.inversion import METHOD_LABELS, METHODS, Inversion, InversionResult, InversionSpec
from studio.inversion.null_text import NullTextLoss
from studio.inversion.result import BDIA_GAMMA, EDICT_MIX, INNER_STEPS, LEARNING_RATE, TOLERANCE
from studio.plots import line_chart
from studio.ui.stream import EditJobs, progress_html

DEFAULTS = InversionSpec()
TABLE_HEADERS = ["method", "PSNR (dB)", "SSIM", "latent MSE", "UNet passes (inversion)", "backward passes",
                 "UNet passes (reconstruction)", "seconds", "× DDIM seconds"]
DEFAULT_METHODS = ["ddim", "null_text"]


@dataclass
class InversionTab:
    inversion_state: gr.State  # the session's Inversion picked under "Edit this image" (None before any)
    components: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Pure helpers


def load_upload(path: str | None) -> Image.Image:
    """Open an uploaded file as an image, or say clearly why not. Size is checked before decoding."""
    if not path:
        raise InvalidInputError("Upload an image to invert.")
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise InvalidInputError(f"The image is too large; the limit is {MAX_INPUT_PIXELS / 1e6:.0f} MP.") from error
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError("The upload is not an image this app can read (use PNG, JPEG, WebP, TIFF, ...).") from error
    return image


def table_rows(results: list[InversionResult]) -> list[list[Any]]:
    """One row per method plus the VAE ceiling (encode -> decode, no diffusion) first."""
    if not results:
        return []
    first = results[0].settings
    ddim_seconds = next((r.settings["inversion_seconds"] for r in results if r.settings["method"] == "ddim"), None)
    rows = [["VAE encode → decode (ceiling)", round(first["vae_psnr"], 2), round(first["vae_ssim"], 4), 0.0,
             0, 0, 0, None, None]]
    for result in results:
        s = result.settings
        ratio = None if not ddim_seconds else round(s["inversion_seconds"] / ddim_seconds, 2)
        rows.append([METHOD_LABELS[s["method"]], round(s["psnr"], 2), round(s["ssim"], 4), float(f"{s['latent_mse']:.3g}"),
                     s["inversion_unet_passes"], s["backward_passes"], s["reconstruction_unet_passes"],
                     round(s["inversion_seconds"], 2), ratio])
    return rows


def error_plot(results: list[InversionResult]) -> Image.Image | None:
    """log10 latent MSE between each reconstruction step and the inverted trajectory, per method."""
    if not results:
        return None
    series = {}
    for result in results:
        errors = [math.log10(max(e, 1e-30)) for e in result.step_errors]
        series[METHOD_LABELS[result.settings["method"]]] = (list(range(1, len(errors) + 1)), errors)
    return line_chart(series, x_label="sampling step", y_label="log10 latent MSE to the inverted trajectory",
                      title="Error per step")


def loss_plot(losses: list[list[float]]) -> Image.Image:
    """Null-text inversion's L_rec per outer step: where each step started and where it stopped."""
    steps = list(range(1, len(losses) + 1))
    return line_chart({"first iteration": (steps, [math.log10(max(l[0], 1e-30)) for l in losses]),
                       "kept": (steps, [math.log10(max(min(l), 1e-30)) for l in losses])},
                      x_label="step", y_label="log10 L_rec", title="Null-text inversion loss", markers=True)


def choice_label(index: int, inversion: Inversion) -> str:
    return f"{index + 1}. {inversion.label}"


def default_choice(inversions: list[Inversion]) -> int | None:
    """Editing prefers an inversion that reconstructs under guidance: null-text, then negative-prompt."""
    for method in ("null_text", "negative_prompt"):
        for index, inversion in enumerate(inversions):
            if inversion.method == method:
                return index
    return 0 if inversions else None


# --------------------------------------------------------------------------------------------
# The tab


def build_inversion_tab(engine: Any) -> InversionTab:
    """Lay out the Inversion tab in the current Blocks/Tab and wire it."""
    jobs = EditJobs()
    native = int(engine.native_size)

    # 1. layout ---------------------------------------------------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            upload = gr.File(label="Image (any size or mode: it is centre-cropped and resized to the model's size)",
                             type="filepath", elem_id="inversion-upload")
            keep_size = gr.Checkbox(False, label=f"Keep the image's size (its shorter side, down to a multiple of "
                                    f"{engine.size_multiple} px) instead of the model's {native}×{native}",
                                    elem_id="inversion-keep-size")
            prepared = gr.Image(label="As the model sees it", type="pil", format="png",
                                interactive=False, height=200, elem_id="inversion-prepared")
            note = gr.Markdown("", elem_id="inversion-note")
            prompt = gr.Textbox(label="Caption (empty: the null prompt)", placeholder="a big red circle on a blue background",
                                elem_id="inversion-prompt")
            methods = gr.CheckboxGroup([(METHOD_LABELS[m], m) for m in METHODS], value=DEFAULT_METHODS,
                                       label="Methods", elem_id="inversion-methods")
            with gr.Row():
                steps = gr.Slider(2, specs.STEPS.high, value=DEFAULTS.steps, step=1, label="Steps", elem_id="inversion-steps")
                guidance = gr.Slider(specs.GUIDANCE.low, specs.GUIDANCE.high, value=DEFAULTS.guidance_scale,
                                     step=specs.GUIDANCE.step, label="Guidance scale w", elem_id="inversion-guidance")
            with gr.Accordion("Method settings", open=False):
                inversion_guidance = gr.Slider(specs.GUIDANCE.low, specs.GUIDANCE.high, value=DEFAULTS.inversion_guidance,
                                               step=specs.GUIDANCE.step, label="DDIM: guidance of the inversion itself "
                                               "(1 = guidance-neutral; try w to see why 1)", elem_id="inversion-ddim-w")
                with gr.Row():
                    inner = gr.Slider(INNER_STEPS.low, INNER_STEPS.high, value=DEFAULTS.inner_steps, step=1,
                                      label="NTI inner iterations", elem_id="inversion-inner")
                    learning_rate = gr.Number(DEFAULTS.learning_rate, label="NTI learning rate", minimum=LEARNING_RATE.low,
                                              maximum=LEARNING_RATE.high, elem_id="inversion-lr")
                    lr_decay = gr.Slider(0, 1, value=DEFAULTS.lr_decay, step=0.05, label="NTI lr decay",
                                         elem_id="inversion-lr-decay")
                with gr.Row():
                    tolerance = gr.Number(DEFAULTS.tolerance, label="NTI early-stop tolerance (L_rec)",
                                          minimum=TOLERANCE.low, maximum=TOLERANCE.high, elem_id="inversion-tolerance")
                    min_improvement = gr.Number(DEFAULTS.min_improvement, minimum=0, maximum=1,
                                                label="NTI: stop when 2 iterations gain less than (fraction)",
                                                elem_id="inversion-min-improvement")
                    smoothness = gr.Number(DEFAULTS.smoothness, label="NTI smoothness λ", minimum=0,
                                           elem_id="inversion-smoothness")
                    image_weight = gr.Number(DEFAULTS.image_weight, label="NTI image-space weight μ", minimum=0,
                                             elem_id="inversion-image-weight")
                with gr.Row():
                    edict_mix = gr.Slider(EDICT_MIX.low, EDICT_MIX.high, value=DEFAULTS.edict_mix, step=EDICT_MIX.step,
                                          label="EDICT mixing p", elem_id="inversion-edict-p")
                    bdia_gamma = gr.Slider(BDIA_GAMMA.low, BDIA_GAMMA.high, value=DEFAULTS.bdia_gamma,
                                           step=BDIA_GAMMA.step, label="BDIA γ", elem_id="inversion-bdia-gamma")
                    float64 = gr.Checkbox(False, label="EDICT/BDIA in float64 (CPU)", elem_id="inversion-float64")
                null_start = gr.Radio([("the caption's embedding (fast: where NPI lands)", "prompt"),
                                       ("the empty prompt's (Mokady et al.)", "empty")], value=DEFAULTS.null_start,
                                      label="NTI starts its null embedding from", elem_id="inversion-null-start")
            with gr.Row():
                go = gr.Button("Invert", variant="primary", elem_id="inversion-btn", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="inversion-stop", scale=1)
            status = gr.HTML(progress_html(0, 1, "Ready"), elem_id="inversion-status")
        with gr.Column(scale=6, min_width=360):
            gallery = gr.Gallery(label="Original and reconstructions", columns=4, height=260, format="png",
                                 elem_id="inversion-gallery")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Comparison (seconds: inversion only, same run)",
                                 interactive=False, wrap=True, elem_id="inversion-table")
            with gr.Row():
                errors = gr.Image(label="Latent error per step", type="pil", format="png", interactive=False,
                                  elem_id="inversion-errors")
                losses = gr.Image(label="Null-text loss (live)", type="pil", format="png", interactive=False,
                                  elem_id="inversion-loss")
            pick = gr.Dropdown([], label="Edit this image (DiffEdit and Prompt-to-Prompt tabs use it)",
                               elem_id="inversion-pick", interactive=True)
            settings = gr.JSON(label="Settings of the last inversion", elem_id="inversion-settings")
    inversions = gr.State([])  # this session's Inversions of the last run, in table order
    inversion_state = gr.State(None)

    # 2. handlers -------------------------------------------------------------------------
    def preview(path: str | None, keep: bool) -> tuple:
        if not path:
            return None, ""
        try:
            image = load_upload(path)
            ready = prepare_image(image, working_size(image, native, engine.size_multiple, bool(keep)))
        except InvalidInputError as error:
            raise gr.Error(str(error)) from error
        return ready.image, f"Prepared: {html.escape(ready.note)}."

    def invert(path: str | None, caption: str, chosen: list[str], steps_value: float, guidance_value: float,
               ddim_w: float, inner_value: float, lr_value: float, decay_value: float, tolerance_value: float,
               improvement_value: float, smoothness_value: float, image_weight_value: float, mix_value: float,
               gamma_value: float, float64_value: bool, keep_value: bool = False, null_start_value: str = "prompt",
               request: gr.Request = None) -> Iterator[tuple]:
        """Streams (status, gallery, table, error plot, loss plot, pick, settings, inversions, inversion_state)."""
        skip = gr.skip()
        done: list[InversionResult] = []
        live_losses: list[list[float]] = []

        def start(cancel: CancelToken) -> Iterator:
            if not chosen:
                raise InvalidInputError("Tick at least one method.")
            image = load_upload(path)
            common = dict(prompt=caption or "", steps=int(steps_value), guidance_scale=float(guidance_value),
                          inversion_guidance=float(ddim_w), inner_steps=int(inner_value),
                          learning_rate=float(lr_value or 0), lr_decay=float(decay_value),
                          tolerance=float(tolerance_value or 0), min_improvement=float(improvement_value or 0),
                          smoothness=float(smoothness_value or 0),
                          image_weight=float(image_weight_value or 0), edict_mix=float(mix_value),
                          bdia_gamma=float(gamma_value), float64=bool(float64_value), keep_size=bool(keep_value),
                          null_start=str(null_start_value))
            # every method's input is checked here, before the first one starts
            runs = [engine.invert(InversionSpec(method=method, **common), image, cancel) for method in METHODS
                    if method in chosen]
            return (event for run in runs for event in run)

        def render(event: Any, total: int) -> tuple | None:
            if isinstance(event, NullTextLoss):
                if event.step == 1:
                    live_losses.clear()
                live_losses.append(event.losses)
                return skip, skip, skip, skip, loss_plot(live_losses), skip, skip, skip, skip
            if isinstance(event, InversionResult):
                done.append(event)
                inverted = [r.inversion for r in done]
                original = done[0].inversion.image
                pictures = [(original, "original")] + [(r.images[0], f"{METHOD_LABELS[r.settings['method']]}: "
                                                       f"{r.settings['psnr']:.2f} dB") for r in done]
                index = default_choice(inverted)
                choices = [(choice_label(i, inv), i) for i, inv in enumerate(inverted)]
                finished = len(done) == len([m for m in METHODS if m in chosen])
                text = (f"Done: {len(done)} method(s) · {html.escape(done[0].inversion.preparation or 'used as uploaded')}"
                        if finished else f"{len(done)} of {len(chosen)} methods done")
                return (progress_html(total, total, text, "done" if finished else "running"), pictures,
                        table_rows(done), error_plot(done), skip, gr.update(choices=choices, value=index),
                        event.settings, inverted, inverted[index])
            return None

        yield from jobs.run(request, start, 9, render, "Inversion")

    def choose(index: int | None, held: list[Inversion]) -> Inversion | None:
        if index is None or not held or not (0 <= int(index) < len(held)):
            return None
        return held[int(index)]

    # 3. events ---------------------------------------------------------------------------
    for changed in (upload, keep_size):
        changed.change(preview, [upload, keep_size], [prepared, note], api_visibility="private",
                       concurrency_limit=None, concurrency_id="inversion-preview", show_progress="hidden")
    form = [upload, prompt, methods, steps, guidance, inversion_guidance, inner, learning_rate, lr_decay, tolerance,
            min_improvement, smoothness, image_weight, edict_mix, bdia_gamma, float64, keep_size, null_start]
    running = go.click(invert, form, [status, gallery, table, errors, losses, pick, settings, inversions,
                                      inversion_state],
                       api_name="invert", concurrency_id="model", show_progress="hidden")
    stop.click(jobs.stop, None, status, cancels=[running], api_name="inversion_stop", api_visibility="undocumented",
               concurrency_limit=None, concurrency_id="stop", show_progress="hidden")
    pick.input(choose, [pick, inversions], inversion_state, api_visibility="private", concurrency_limit=None,
               concurrency_id="inversion-preview", show_progress="hidden")
    gr.Markdown(
        f"Model **{html.escape(str(engine.model_name))}**. Inversion (seed §3) finds the noise x_T (and, for "
        "null-text inversion, per-step null embeddings) from which the sampler redraws your image. DDIM inversion "
        "runs the sampler backwards; null-text inversion optimises the unconditional embedding per step so guided "
        "sampling retraces it; negative-prompt inversion uses the caption as the negative prompt; EDICT and BDIA "
        "are exact to float precision. The ceiling row is the VAE alone: no inversion can beat it.",
        elem_id="inversion-help",
    )
    components = {"upload": upload, "prepared": prepared, "note": note, "gallery": gallery, "table": table,
                  "errors": errors, "losses": losses, "pick": pick, "status": status, "run": running}
    return InversionTab(inversion_state=inversion_state, components=components)
