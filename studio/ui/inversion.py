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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from studio import specs
from studio.errors import InvalidInputError
from studio.events import CancelToken, Event, InversionResult, NullTextLoss
from studio.images import MAX_INPUT_PIXELS, prepare_image, working_size
from studio.inversion import METHOD_LABELS, METHODS, Inversion, InversionSpec
from studio.inversion.result import (BDIA_GAMMA, EDICT_MIX, IMAGE_WEIGHT, INNER_STEPS, INVERSION_STEPS, LEARNING_RATE,
                                     LR_DECAY, MIN_IMPROVEMENT, SMOOTHNESS, TOLERANCE)
from studio.plots import line_chart
from studio.ui.form import Field, number, slider, spec_values, text, textbox
from studio.ui.parts import Tab, instant, model_line, settings_view
from studio.ui.stream import JOB_EVENT, Outputs, progress_html, run_and_stop, status_box, stop_button, stream_job

DEFAULTS = InversionSpec()
TABLE_HEADERS = ["method", "PSNR (dB)", "SSIM", "latent MSE", "UNet passes (inversion)", "backward passes",
                 "UNet passes (reconstruction)", "seconds", "× DDIM seconds"]
DEFAULT_METHODS = ["ddim", "null_text"]


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


def comparison_rows(results: list[InversionResult]) -> list[list[Any]]:
    """One row per method plus the VAE ceiling (encode -> decode, no diffusion) first."""
    if not results:
        return []
    first = results[0]
    ddim_seconds = next((r.inversion_seconds for r in results if r.method == "ddim"), None)
    rows = [["VAE encode → decode (ceiling)", round(first.vae_psnr, 2), round(first.vae_ssim, 4), 0.0,
             0, 0, 0, None, None]]
    for r in results:
        ratio = None if not ddim_seconds else round(r.inversion_seconds / ddim_seconds, 2)
        rows.append([METHOD_LABELS[r.method], round(r.psnr, 2), round(r.ssim, 4), float(f"{r.latent_mse:.3g}"),
                     r.inversion_unet_passes, r.backward_passes, r.reconstruction_unet_passes,
                     round(r.inversion_seconds, 2), ratio])
    return rows


def error_plot(results: list[InversionResult]) -> Image.Image | None:
    """log10 latent MSE between each reconstruction step and the inverted trajectory, per method."""
    if not results:
        return None
    series = {}
    for result in results:
        errors = [math.log10(max(e, 1e-30)) for e in result.step_errors]
        series[METHOD_LABELS[result.method]] = (list(range(1, len(errors) + 1)), errors)
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


def chosen(index: int | None, inversions: list[Inversion]) -> Inversion | None:
    """The inversion picked under "Edit this image"."""
    if index is None or not inversions or not (0 <= int(index) < len(inversions)):
        return None
    return inversions[int(index)]


# --------------------------------------------------------------------------------------------
# The form


FIELDS = (
    Field("upload", lambda engine: gr.File(
        label="Image (any size or mode: it is centre-cropped and resized to the model's size)", type="filepath",
        elem_id="inversion-upload"), in_spec=False),
    Field("keep_size", lambda engine: gr.Checkbox(
        False, label=f"Keep the image's size (its shorter side, down to a multiple of {engine.size_multiple} px) "
                     f"instead of the model's {engine.native_size}×{engine.native_size}",
        elem_id="inversion-keep-size"), bool),
    Field("prompt", textbox(label="Caption (empty: the null prompt)",
                                              placeholder="a big red circle on a blue background",
                                              elem_id="inversion-prompt"), text),
    Field("methods", lambda engine: gr.CheckboxGroup([(METHOD_LABELS[m], m) for m in METHODS], value=DEFAULT_METHODS,
                                                     label="Methods", elem_id="inversion-methods"), in_spec=False),
    Field("steps", slider(INVERSION_STEPS, DEFAULTS.steps, elem_id="inversion-steps"), int),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, label="Guidance scale w",
                                   elem_id="inversion-guidance"), float),
    Field("inversion_guidance", slider(specs.GUIDANCE, DEFAULTS.inversion_guidance,
                                       label="DDIM: guidance of the inversion itself (1 = guidance-neutral; try w to "
                                             "see why 1)", elem_id="inversion-ddim-w"), float),
    Field("inner_steps", slider(INNER_STEPS, DEFAULTS.inner_steps, elem_id="inversion-inner"), int),
    Field("learning_rate", number(LEARNING_RATE, DEFAULTS.learning_rate, elem_id="inversion-lr"), float),
    Field("lr_decay", slider(LR_DECAY, DEFAULTS.lr_decay, label="NTI lr decay", elem_id="inversion-lr-decay"), float),
    Field("tolerance", number(TOLERANCE, DEFAULTS.tolerance, label="NTI early-stop tolerance (L_rec)",
                              elem_id="inversion-tolerance"), float),
    Field("min_improvement", number(MIN_IMPROVEMENT, DEFAULTS.min_improvement,
                                    label="NTI: stop when 2 iterations gain less than (fraction)",
                                    elem_id="inversion-min-improvement"), float),
    Field("smoothness", number(SMOOTHNESS, DEFAULTS.smoothness, label="NTI smoothness λ",
                               elem_id="inversion-smoothness"), float),
    Field("image_weight", number(IMAGE_WEIGHT, DEFAULTS.image_weight, label="NTI image-space weight μ",
                                 elem_id="inversion-image-weight"), float),
    Field("edict_mix", slider(EDICT_MIX, DEFAULTS.edict_mix, elem_id="inversion-edict-p"), float),
    Field("bdia_gamma", slider(BDIA_GAMMA, DEFAULTS.bdia_gamma, label="BDIA γ", elem_id="inversion-bdia-gamma"), float),
    Field("float64", lambda engine: gr.Checkbox(False, label="EDICT/BDIA in float64 (CPU)", elem_id="inversion-float64"),
          bool),
    Field("null_start", lambda engine: gr.Radio(
        [("the caption's embedding (fast: where NPI lands)", "prompt"), ("the empty prompt's (Mokady et al.)", "empty")],
        value=DEFAULTS.null_start, label="NTI starts its null embedding from", elem_id="inversion-null-start"), str),
)


def specs_from_values(values: Mapping[str, Any]) -> list[InversionSpec]:
    """One spec per ticked method, in the table's order of methods."""
    chosen = values.get("methods") or []
    if not chosen:
        raise InvalidInputError("Tick at least one method.")
    common = spec_values(FIELDS, values)
    return [InversionSpec(method=method, **common) for method in METHODS if method in chosen]


# --------------------------------------------------------------------------------------------
# The tab


@dataclass
class Shown:
    """What one run has shown so far: the specs it runs, the results done, null-text inversion's live losses."""

    runs: list[InversionSpec] = field(default_factory=list)
    done: list[InversionResult] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)


class InversionTab(Tab):
    """The Inversion tab (the shape of every tab: `parts.Tab`). `inversion_state` is the session's Inversion picked
    under "Edit this image" (None before any), which the DiffEdit and Prompt-to-Prompt tabs read."""

    fields = FIELDS

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                self.upload, self.keep_size = form.place("upload", "keep_size")
                self.prepared = gr.Image(label="As the model sees it", type="pil", format="png",
                                         interactive=False, height=200, elem_id="inversion-prepared")
                self.note = gr.Markdown("", elem_id="inversion-note")
                form.place("prompt", "methods")
                with gr.Row():
                    form.place("steps", "guidance_scale")
                with gr.Accordion("Method settings", open=False):
                    form.place("inversion_guidance")
                    for row in (("inner_steps", "learning_rate", "lr_decay"),
                                ("tolerance", "min_improvement", "smoothness", "image_weight"),
                                ("edict_mix", "bdia_gamma", "float64")):
                        with gr.Row():
                            form.place(*row)
                    form.place("null_start")
                self.go, self.stop = run_and_stop("Invert", "inversion-btn", "inversion-stop")
                self.status = status_box("inversion-status")
            with gr.Column(scale=6, min_width=360):
                self.gallery = gr.Gallery(label="Original and reconstructions", columns=4, height=260, format="png",
                                          elem_id="inversion-gallery")
                self.table = gr.Dataframe(headers=TABLE_HEADERS, label="Comparison (seconds: inversion only, same run)",
                                          interactive=False, wrap=True, elem_id="inversion-table")
                with gr.Row():
                    self.errors = gr.Image(label="Latent error per step", type="pil", format="png", interactive=False,
                                           elem_id="inversion-errors")
                    self.losses = gr.Image(label="Null-text loss (live)", type="pil", format="png", interactive=False,
                                           elem_id="inversion-loss")
                self.pick = gr.Dropdown([], label="Edit this image (DiffEdit and Prompt-to-Prompt tabs use it)",
                                        elem_id="inversion-pick", interactive=True)
                self.settings = settings_view("inversion-settings", "Settings of the last inversion", height=None)
        self.inversions = gr.State([])  # this session's Inversions of the last run, in table order
        self.inversion_state = gr.State(None)
        gr.Markdown(
            f"{model_line(self.engine)}. Inversion finds the noise x_T (and, for null-text inversion, per-step null "
            "embeddings) from which the sampler redraws your image. DDIM inversion runs the sampler backwards (Song "
            "et al. 2021); null-text inversion (Mokady et al. 2023) optimises the unconditional embedding per step so "
            "guided sampling retraces it; negative-prompt inversion (Miyake et al. 2023) uses the caption as the "
            "negative prompt; EDICT (Wallace et al. 2023) and BDIA (Zhang et al. 2023) are exact to float precision. "
            "The ceiling row is the VAE alone: no inversion can beat it.", elem_id="inversion-help",
        )

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Invert the upload with each ticked method: streams progress and null-text inversion's loss, then after
        each method the gallery, the table, the error plot, the pick and the settings."""
        shown = Shown()

        def start(cancel: CancelToken) -> Iterator[Event]:
            shown.runs.extend(specs_from_values(values))
            image = load_upload(values.get("upload"))
            # every method's input is checked here, before the first one starts
            jobs = [self.engine.invert(spec, image, cancel) for spec in shown.runs]
            return (event for job in jobs for event in job)

        yield from stream_job("inversion", request, self.status, start, lambda event: self.render(event, shown),
                              "Inversion")

    def render(self, event: Event, shown: Shown) -> Outputs | None:
        if isinstance(event, NullTextLoss):
            if event.step == 1:
                shown.losses.clear()
            shown.losses.append(event.losses)
            return {self.losses: loss_plot(shown.losses)}
        if isinstance(event, InversionResult):
            done = shown.done
            done.append(event)
            inverted = [r.inversion for r in done]
            pictures = [(done[0].inversion.image, "original")] + [
                (r.images[0], f"{METHOD_LABELS[r.method]}: {r.psnr:.2f} dB") for r in done]
            index = default_choice(inverted)
            choices = [(choice_label(i, inv), i) for i, inv in enumerate(inverted)]
            finished = len(done) == len(shown.runs)
            text = (f"Done: {len(done)} method(s) · {html.escape(done[0].inversion.preparation or 'used as uploaded')}"
                    if finished else f"{len(done)} of {len(shown.runs)} methods done")
            return {self.status: progress_html(1, 1, text, "done" if finished else "running"), self.gallery: pictures,
                    self.table: comparison_rows(done), self.errors: error_plot(done),
                    self.pick: gr.update(choices=choices, value=index), self.settings: event.settings,
                    self.inversions: inverted, self.inversion_state: inverted[index]}
        return None

    def show_prepared(self, path: str | None, keep_size: bool) -> tuple:
        """The upload as the model will see it, and what was changed."""
        if not path:
            return None, ""
        try:
            image = load_upload(path)
            size = working_size(image, int(self.engine.native_size), self.engine.size_multiple, bool(keep_size))
            ready = prepare_image(image, size)
        except InvalidInputError as error:
            raise gr.Error(str(error)) from error
        return ready.image, f"Prepared: {html.escape(ready.note)}."

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        for changed in (self.upload, self.keep_size):
            changed.change(self.show_prepared, [self.upload, self.keep_size], [self.prepared, self.note],
                           **instant("inversion-preview"))
        self.run_event = self.go.click(
            self.run, inputs_kwargs=self.form.inputs, api_name="invert", **JOB_EVENT,
            outputs=[self.status, self.gallery, self.table, self.errors, self.losses, self.pick, self.settings,
                     self.inversions, self.inversion_state])
        stop_button(self.stop, self.status, [self.run_event], tab="inversion", api_name="inversion_stop")
        self.pick.input(chosen, [self.pick, self.inversions], self.inversion_state, **instant("inversion-preview"))
