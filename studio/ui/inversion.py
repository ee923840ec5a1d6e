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
from dataclasses import dataclass, field, replace
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.editing.p2p import EDIT_PREFERENCE
from studio.errors import InvalidInputError
from studio.events import CancelToken, Event, InversionResult, NullTextLoss, Progress
from studio.images import open_image, prepare_image, working_size
from studio.inversion import METHOD_LABELS, METHODS, Inversion, InversionSpec
from studio.inversion.file import INVERSION_SUFFIX, load_inversion, save_inversion
from studio.inversion.result import (BDIA_GAMMA, EDICT_MIX, FIXED_POINT_ITERATIONS, FIXED_POINT_TOLERANCE, IMAGE_WEIGHT,
                                     INNER_STEPS, INVERSION_STEPS, LEARNING_RATE, LR_DECAY, MIN_IMPROVEMENT, SMOOTHNESS,
                                     TOLERANCE)
from studio.jobs import inversion_record
from studio.plots import line_chart
from studio.ui.form import Field, number, saved, slider, spec_values, text, textbox
from studio.ui.gpu import engine_job
from studio.ui.inputs import public_message
from studio.ui.parts import (DOWNLOADS, Sendable, Tab, downloads_box, instant, load_settings_box, model_line,
                             model_panel, rgb, send_row, settings_view, tagged, warn_about_limits)
from studio.ui.session_concepts import personalized
from studio.ui.stream import (JOB_EVENT, KEYS_HELP, Outputs, progress_html, run_and_stop, status_box, stop_button,
                              stream_job)
from studio.ui.structure_panel import StructurePanel

DEFAULTS = InversionSpec()
# short headers (the table's label says what the passes and seconds count), each word wider than no column
TABLE_HEADERS = ["method", "PSNR dB", "SSIM", "latent MSE", "UNet inverting", "UNet backward", "UNet redrawing",
                 "seconds", "× DDIM"]
# shares of the table's box, so the last column is inside it at any width the tab gets
TABLE_WIDTHS = ["16%", "10%", "9%", "11%", "11%", "11%", "12%", "10%", "10%"]
TABLE_LABEL = ("Comparison (UNet passes while inverting, backward through it, redrawing; seconds: inversion only, "
               "same run)")
# DDIM inversion as the baseline beside the inversion edits prefer (the edit bench's best P2P row)
DEFAULT_METHODS = list(dict.fromkeys(["ddim", EDIT_PREFERENCE[0]]))
GUIDANCE_INFO = (f"{InversionSpec().guidance_scale:g}, not 7.5: P2P and DiffEdit edits of this inversion keep its w, "
                 "and the higher it is the more an edit moves the background (the edit bench's best P2P w on "
                 "shapes-sd)")
GALLERY_COLUMNS = 3  # original + up to five reconstructions: two rows of three (Gradio narrows to fewer)

CSS = """
#inversion-gallery .caption-label { white-space: normal; max-width: 100%; overflow: visible; text-overflow: clip; }
#inversion-gallery img, #inversion-prepared img { image-rendering: pixelated; }
#inversion-table th, #inversion-table th * { overflow-wrap: normal; word-break: keep-all; hyphens: none; }
"""


# --------------------------------------------------------------------------------------------
# Pure helpers


def load_upload(path: str | None) -> Image.Image:
    """Open an uploaded file as an image, or say clearly why not. Size is checked from the header, before decoding."""
    if not path:
        raise InvalidInputError("Upload an image to invert.")
    return open_image(path, "The upload")


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


def run_progress(jobs: list[Iterator[Event]]) -> Iterator[Event]:
    """The methods' events in turn, each Progress told as the whole run's (which method of how many, in the method's
    own words and count), so the running line and Stop's "Stopped after …" say the same thing."""
    for index, job in enumerate(jobs):
        for event in job:
            if isinstance(event, Progress):
                text = f"method {index + 1} of {len(jobs)} · {event.message}"
                if event.step:
                    text += f" · step {event.step} / {event.total}"
                event = Progress(index * event.total + event.step, len(jobs) * event.total, text)
            yield event


def gallery_pictures(results: list[InversionResult]) -> list[tuple[Image.Image, str]]:
    """The original beside each reconstruction, captioned with its PSNR; every PNG carries its settings."""
    first = results[0]
    return [(tagged(first.inversion.image, first.settings, picture="original (prepared)"), "original")] + [
        (tagged(r.images[0], r.settings, picture="reconstruction"), f"{METHOD_LABELS[r.method]}: {r.psnr:.2f} dB")
        for r in results]


def reconstruction_pngs(results: list[InversionResult]) -> list[str]:
    """Each method's reconstruction as a PNG carrying the settings that made it."""
    return DOWNLOADS.pngs([(f"{r.method}-reconstruction.png", r.images[0], r.settings) for r in results])


def inversion_file(inversion: Inversion | None) -> str | None:
    """The inversion as one `.inversion.safetensors` file (data only), for `studio edit ... --inversion` or
    "Load an inversion"."""
    if inversion is None:
        return None
    return str(save_inversion(inversion, DOWNLOADS.folder() / f"{inversion.method}{INVERSION_SUFFIX}"))


def inversion_sendable(inversion: Inversion | None) -> Sendable | None:
    """The inverted image as other tabs take it, with what the inversion was made with (its caption the prompt)."""
    if inversion is None:
        return None
    return Sendable(rgb(inversion.image), {"job": "invert", **inversion_record(inversion)})


def choice_label(index: int, inversion: Inversion) -> str:
    return f"{index + 1}. {inversion.label}"


def choices(inversions: list[Inversion]) -> list[tuple[str, int]]:
    return [(choice_label(i, inversion), i) for i, inversion in enumerate(inversions)]


def default_choice(inversions: list[Inversion]) -> int | None:
    """The inversion edits start from: the one of the methods edits prefer (p2p.EDIT_PREFERENCE) that ranks first."""
    if not inversions:
        return None
    rank = {method: i for i, method in enumerate(EDIT_PREFERENCE)}
    return min(range(len(inversions)), key=lambda i: rank.get(inversions[i].method, len(rank)))


def chosen(index: int | None, inversions: list[Inversion]) -> Inversion | None:
    """The inversion picked under "Edit this image"."""
    if index is None or not inversions or not (0 <= int(index) < len(inversions)):
        return None
    return inversions[int(index)]


# --------------------------------------------------------------------------------------------
# The form


def restored_methods(settings: Mapping[str, Any]) -> list[str] | None:
    """An inversion's record names its one method (the run of several methods made one record per method)."""
    method = settings.get("method")
    return [method] if method in METHODS else None


def with_restore(fields: tuple[Field, ...]) -> tuple[Field, ...]:
    """Every spec field restores from a saved record (a PNG's), checked against the spec's range."""
    return tuple(replace(f, restore=saved(f.name, InversionSpec.RANGES.get(f.name))) if f.in_spec else f
                 for f in fields)


FIELDS = with_restore((
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
                                                     label="Methods", elem_id="inversion-methods"),
          restore=restored_methods, in_spec=False),
    Field("steps", slider(INVERSION_STEPS, DEFAULTS.steps, elem_id="inversion-steps"), int),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, label="Guidance scale w",
                                   info=GUIDANCE_INFO, elem_id="inversion-guidance"), float),
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
    Field("fixed_point_iterations", slider(FIXED_POINT_ITERATIONS, DEFAULTS.fixed_point_iterations,
                                           label="Fixed-point: iterations per step",
                                           elem_id="inversion-fixed-point-iterations"), int),
    Field("fixed_point_tolerance", number(FIXED_POINT_TOLERANCE, DEFAULTS.fixed_point_tolerance,
                                          label="Fixed-point: stop a step's iterations below (mean squared change)",
                                          elem_id="inversion-fixed-point-tolerance"), float),
    Field("seed", number(specs.SEED, DEFAULTS.seed, label="DDPM inversion: noise seed", precision=0,
                         info="Direct inversion has no settings: exact by construction (Ju et al. 2024)",
                         elem_id="inversion-ddpm-seed"), int),
    Field("null_start", lambda engine: gr.Radio(
        [("the caption's embedding (fast: where NPI lands)", "prompt"), ("the empty prompt's (Mokady et al.)", "empty")],
        value=DEFAULTS.null_start, label="NTI starts its null embedding from", elem_id="inversion-null-start"), str),
))


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
    under "Edit this image" (None before any), which the DiffEdit and Prompt-to-Prompt tabs read. It changes only
    when a run has finished all its methods (or an inversion is loaded): a stopped run never replaces it."""

    name = "inversion"
    structure_panel = StructurePanel(name)  # an inversion made under structure carries it to its edits
    fields = (*FIELDS, *structure_panel.fields)

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                self.upload, self.keep_size = form.place("upload", "keep_size")
                self.prepared = gr.Image(label="As the model sees it", type="pil", format="png", interactive=False,
                                         height=200, elem_id="inversion-prepared", elem_classes=["dcs-image"])
                self.note = gr.Markdown("", elem_id="inversion-note")
                self.prompt, _ = form.place("prompt", "methods")
                model_panel(self.engine, "inversion-model")  # native size, words, model card
                with gr.Row():
                    form.place("steps", "guidance_scale")
                with gr.Accordion("Method settings", open=False):
                    form.place("inversion_guidance")
                    for row in (("inner_steps", "learning_rate", "lr_decay"),
                                ("tolerance", "min_improvement", "smoothness", "image_weight"),
                                ("edict_mix", "bdia_gamma", "float64"),
                                ("fixed_point_iterations", "fixed_point_tolerance", "seed")):
                        with gr.Row():
                            form.place(*row)
                    form.place("null_start")
                self.structure_panel.place(form, self.engine)
                self.go, self.stop = run_and_stop("Invert", "inversion-btn", "inversion-stop")
                self.status = status_box("inversion-status")
                with gr.Row():
                    self.load_file = gr.File(label=f"Load an inversion ({INVERSION_SUFFIX}, from here or `studio "
                                                   "invert`)", file_types=[".safetensors"], type="filepath",
                                             elem_id="inversion-load", height=100)
                    self.load_settings = load_settings_box("inversion-load-settings")
            with gr.Column(scale=6, min_width=360):
                self.gallery = gr.Gallery(label="Original and reconstructions", columns=GALLERY_COLUMNS, height=540,
                                          format="png", object_fit="contain", elem_id="inversion-gallery",
                                          elem_classes=["dcs-gallery"])
                self.send_buttons = send_row("inversion", own=self.name)
                self.sending = gr.State(None)
                self.pick = gr.Dropdown([], label="Edit this image (DiffEdit and Prompt-to-Prompt tabs use it)",
                                        elem_id="inversion-pick", interactive=True)
                with gr.Row():
                    self.inversion_download = gr.File(label="The picked inversion (for `studio edit … --inversion` "
                                                            "or Load)", interactive=False,
                                                      elem_id="inversion-file", height=100)
                    self.downloads = downloads_box("inversion-downloads", "Reconstructions (PNGs with settings)")
                self.table = gr.Dataframe(headers=TABLE_HEADERS, label=TABLE_LABEL, interactive=False, wrap=True,
                                          column_widths=TABLE_WIDTHS, elem_id="inversion-table")
                with gr.Row():  # the plots carry their own titles: no label chip over them
                    self.errors = gr.Image(label="Latent error per step", show_label=False, type="pil", format="png",
                                           interactive=False, elem_id="inversion-errors")
                    self.losses = gr.Image(label="Null-text loss (live)", show_label=False, type="pil", format="png",
                                           interactive=False, elem_id="inversion-loss")
                self.settings = settings_view("inversion-settings", "Settings of the last inversion", height=None)
        self.inversions = gr.State([])  # this session's Inversions (the last finished run's, and those loaded)
        self.inversion_state = gr.State(None)
        self.receives = [self.upload, self.prompt]
        self.results = {self.gallery: self.gallery.label, self.table: TABLE_LABEL, self.errors: self.errors.label}
        gr.Markdown(
            f"{model_line(self.engine)}. Inversion finds the noise x_T (and, for null-text inversion, per-step null "
            "embeddings) from which the sampler redraws your image. DDIM inversion runs the sampler backwards (Song "
            "et al. 2021); null-text inversion (Mokady et al. 2023) optimises the unconditional embedding per step so "
            "guided sampling retraces it; negative-prompt inversion (Miyake et al. 2023) uses the caption as the "
            "negative prompt; EDICT (Wallace et al. 2023) and BDIA (Zhang et al. 2024) are exact to float precision. "
            f"The ceiling row is the VAE alone: no inversion can beat it. {KEYS_HELP}.",
            elem_id="inversion-help",
        )

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, structure_picture: dict | None = None,
            image_prompt_reference: np.ndarray | None = None, **values: Any) -> Iterator[Outputs]:
        """Invert the upload with each ticked method: streams progress and null-text inversion's loss, then after
        each method the gallery, the table and the error plot; once every method is done, the pick, the downloads
        and the inversion the editing tabs use.

        Parameters:
            structure_picture: the Structure panel's own picture (optional: its rows read this tab's image)
            image_prompt_reference: the image prompt's reference (with image_prompt_on)
        """
        # optional images (None by default, so API callers may leave them out): the panel reads them from values
        values.update(structure_picture=structure_picture, image_prompt_reference=image_prompt_reference)
        shown = Shown()

        def start(cancel: CancelToken) -> Iterator[Event]:
            runs = specs_from_values(values)
            image = load_upload(values.get("upload"))
            structure, images = self.structure_panel.structure(values, rgb(image), int(self.engine.native_size))
            shown.runs.extend(personalized(replace(spec, structure=structure), request) for spec in runs)
            warn_about_limits(self.engine, [shown.runs[0].prompt], concepts=shown.runs[0].concepts)  # the upload is prepared to the model's size
            # every method's input is checked here, before the first one starts
            return run_progress([engine_job(self.engine, "invert", spec, image, structure_images=images, cancel=cancel)
                                 for spec in shown.runs])

        yield {self.losses: None}  # the previous run's loss plot is not this run's
        yield from stream_job(self.name, request, self.status, start, lambda event: self.render(event, shown),
                              "Inversion", results=self.results, partial=lambda: self.partial(shown))

    def render(self, event: Event, shown: Shown) -> Outputs | None:
        if isinstance(event, NullTextLoss):
            if event.step == 1:
                shown.losses.clear()
            shown.losses.append(event.losses)
            return {self.losses: loss_plot(shown.losses)}
        if not isinstance(event, InversionResult):
            return None
        done = shown.done
        done.append(event)
        shown_now = {self.gallery: gallery_pictures(done), self.table: comparison_rows(done), self.errors: error_plot(done)}
        if len(done) < len(shown.runs):
            return {**shown_now, self.status: progress_html(len(done), len(shown.runs),
                                                            f"{len(done)} of {len(shown.runs)} methods done")}
        inverted = [r.inversion for r in done]
        index = default_choice(inverted)
        text = f"Done: {len(done)} method(s) · {html.escape(done[0].inversion.preparation or 'used as uploaded')}"
        return {**shown_now, self.status: progress_html(1, 1, text, "done"), self.settings: event.settings,
                self.pick: gr.update(choices=choices(inverted), value=index), self.inversions: inverted,
                self.inversion_state: inverted[index], self.inversion_download: inversion_file(inverted[index]),
                self.downloads: reconstruction_pngs(done), self.sending: inversion_sendable(inverted[index])}

    def partial(self, shown: Shown) -> Outputs:
        """A stopped run offers the methods it finished (the inversion the editing tabs use stays the last
        finished run's)."""
        if not shown.done:
            return {}
        done = shown.done
        return {self.gallery: gallery_pictures(done), self.table: comparison_rows(done), self.errors: error_plot(done)}

    def picked(self, index: int | None, inversions: list[Inversion]) -> tuple[Inversion | None, str | None, Any]:
        """The inversion picked under "Edit this image", its file and what the send buttons carry."""
        inversion = chosen(index, inversions)
        return inversion, inversion_file(inversion), inversion_sendable(inversion)

    def load(self, path: str | None, inversions: list[Inversion]) -> tuple:
        """An inversion file (written here or by `studio invert`) added to the session's inversions and picked."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            inversion = load_inversion(path, self.engine.device)
        except InvalidInputError as error:
            raise gr.Error(public_message(str(error))) from error
        inversions = [*inversions, inversion]
        text = f"Loaded {inversion.label}: {inversion.steps} steps at w = {inversion.guidance_scale:g}, caption " \
               f"{inversion.prompt!r}"
        return (inversions, gr.update(choices=choices(inversions), value=len(inversions) - 1), inversion,
                inversion_sendable(inversion), progress_html(1, 1, text, "done"))

    def receive(self, item: Sendable) -> dict[Any, Any]:
        """An image sent from another tab: it becomes the upload, its prompt the caption."""
        path, = DOWNLOADS.pngs([("sent.png", item.image, item.settings)])
        return {self.upload: path, self.prompt: item.prompt}

    def show_prepared(self, path: str | None, keep_size: bool) -> tuple:
        """The upload as the model will see it, and what was changed."""
        if not path:
            return None, ""
        try:
            image = load_upload(path)
            size = working_size(image, int(self.engine.native_size), self.engine.size_multiple, bool(keep_size))
            ready = prepare_image(image, size)
        except InvalidInputError as error:
            raise gr.Error(public_message(str(error))) from error
        return ready.image, f"Prepared: {html.escape(ready.note)}."

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        for changed in (self.upload, self.keep_size):
            changed.change(self.show_prepared, [self.upload, self.keep_size], [self.prepared, self.note],
                           **instant("inversion-preview"))
        self.run_event = self.go.click(
            self.run, inputs_kwargs=self.form.inputs, api_name="invert", **JOB_EVENT,
            outputs=[self.status, self.gallery, self.table, self.errors, self.losses, self.pick, self.settings,
                     self.inversions, self.inversion_state, self.inversion_download, self.downloads, self.sending])
        stop_button(self.stop, self.status, [self.run_event], tab=self.name, api_name="inversion_stop",
                    results=list(self.results))
        self.pick.input(self.picked, [self.pick, self.inversions],
                        [self.inversion_state, self.inversion_download, self.sending], **instant("inversion-preview"))
        self.load_file.upload(self.load, [self.load_file, self.inversions],
                              [self.inversions, self.pick, self.inversion_state, self.sending, self.status],
                              api_name="load_inversion", concurrency_id="inversion-load")
        self.load_settings.upload(self.read_settings, self.load_settings, self.form.restorable,
                                  api_name="inversion_read_settings", concurrency_id="settings")
        self.structure_panel.wire(self.form, self.engine)
