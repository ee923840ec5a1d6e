"""The DiffEdit tab: an image (or the Inversion tab's current inversion), a source and a target prompt.

"Find mask" runs Stage I and previews the mask live as the probes accumulate; the threshold and the
open/close kernel re-threshold the last soft map at once (no model work), and the mask lands on an editor
where the user can paint or erase before "Edit" runs Stage II with it. "Edit" without a mask on the editor
runs both stages. Endpoints ``/diffedit_mask`` and ``/diffedit`` stream progress, then their results: the
edited image beside a before/after view, what to change when the edit fails (studio.editing.hints), and PNGs of
the edit and its mask carrying their settings (the live previews carry the run's spec and their step). The mask
is painted translucent, over the image it masks. With the Inversion tab's inversion ticked, the image, the source
prompt (its caption), steps and guidance show the inversion's and are greyed: the edit uses those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.editing import hints, masks
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
from studio.inversion import Inversion
from studio.ui.form import (
    Field,
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
    chosen_inversion,
    compare_view,
    difference,
    downloads_box,
    instant,
    load_settings_box,
    model_line,
    model_panel,
    rgb,
    send_row,
    settings_view,
    tagged,
    warn_about_limits,
    with_inversion,
)
from studio.ui.session_concepts import personalized
from studio.ui.stream import (
    JOB_EVENT,
    KEYS_HELP,
    RUN_CLASS,
    STOP_CLASS,
    Outputs,
    done_html,
    remembering,
    status_box,
    stop_button,
    stream_job,
)
from studio.ui.structure_panel import StructurePanel

DEFAULTS = DiffEditSpec("", "")
MASK_COLOUR = ("#ff00ff", 0.5)  # the editor's brush: a colour of no shape, half transparent (an overlay)
MASK_RGBA = (255, 0, 255, 128)  # the same paint for the found mask on the editor's layer (read back: alpha > 0)
MASK_LABEL, RESULT_LABEL = "Mask", "Edited"  # result labels (Stop and a new run add "· partial" / "· previous run")
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


def mask_picture(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> RGB uint8, white where the edit may change the image: the mask as a PNG download."""
    return rgb(mask.astype(np.uint8) * 255)


def inversion_view(use_inversion: bool, inversion: Inversion | None) -> tuple[dict, dict, dict, dict]:
    """The image, source prompt, steps and guidance boxes for "edit the current inversion": ticked with an inversion,
    they show the inversion's image, caption, steps and w, greyed (the edit uses those); otherwise editable."""
    if not use_inversion or inversion is None:
        return tuple(gr.update(interactive=True) for _ in range(4))
    shown = (np.asarray(inversion.image.convert("RGB")), inversion.prompt, inversion.steps, inversion.guidance_scale)
    return tuple(gr.update(value=value, interactive=False) for value in shown)


def seed_of(settings: Mapping[str, Any] | None) -> int:
    """ "Reuse seed": the seed the shown result was made with."""
    if not settings or settings.get("seed") is None:
        raise gr.Error("There is no result yet: its seed is reused once an edit or a mask has been made.")
    return int(settings["seed"])


def run_settings(spec: DiffEditSpec) -> dict[str, Any]:
    """What a run's previews carry: its spec (a Load settings restores the form from it; the result's record is
    only known at the end)."""
    return {**dataclasses.asdict(spec), "job": "diffedit"}


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
                                           height=260, elem_id="diffedit-image", elem_classes=["dcs-image"]),
          in_spec=False),
    Field("use_inversion", lambda engine: gr.Checkbox(label="Edit the current inversion (Inversion tab) instead",
                                                      value=False, elem_id="diffedit-use-inversion"), in_spec=False),
    Field("source_prompt", textbox(label="Source prompt (what the image shows)",
                                                     elem_id="diffedit-source",
                                                     placeholder="a big red circle on a blue background"), text,
          restore=saved("source_prompt")),
    Field("target_prompt", textbox(label="Target prompt (what it should show)",
                                                     elem_id="diffedit-target",
                                                     placeholder="a big green circle on a blue background"), text,
          restore=saved("target_prompt")),
    # Stage I
    Field("deviation", lambda engine: gr.Radio(list(DEVIATIONS), value=DEFAULTS.deviation, label="Compare",
                                               info="eps or x0 predictions", elem_id="diffedit-deviation"), str,
          restore=saved("deviation")),
    Field("threshold", slider(MASK_THRESHOLD, DEFAULTS.threshold, elem_id="diffedit-threshold"), float,
          restore=saved("threshold", MASK_THRESHOLD)),
    Field("probes", slider(PROBES, DEFAULTS.probes, elem_id="diffedit-probes"), int, restore=saved("probes", PROBES)),
    Field("noise_samples", slider(NOISE_SAMPLES, DEFAULTS.noise_samples, elem_id="diffedit-samples"), int,
          restore=saved("noise_samples", NOISE_SAMPLES)),
    Field("mask_strength", slider(DIFFEDIT_STRENGTH, DEFAULTS.mask_strength, label="Probe noise up to (fraction of T)",
                                  elem_id="diffedit-mask-strength"), float, restore=saved("mask_strength", DIFFEDIT_STRENGTH)),
    Field("clean_pixels", slider(CLEAN, DEFAULTS.clean_pixels, elem_id="diffedit-clean"), int,
          restore=saved("clean_pixels", CLEAN)),
    # Stage II
    Field("edit_strength", slider(DIFFEDIT_STRENGTH, DEFAULTS.edit_strength, label="t_edit (fraction of T)",
                                  elem_id="diffedit-edit-strength"), float, restore=saved("edit_strength", DIFFEDIT_STRENGTH)),
    Field("start", lambda engine: gr.Radio(list(STARTS), value=DEFAULTS.start, label="Start from",
                                           info="DDIM inversion of the source, or the image noised",
                                           elem_id="diffedit-start"), str, restore=saved("start")),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, label="Steps (whole schedule)", elem_id="diffedit-steps"), int,
          restore=saved("steps", specs.STEPS)),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="diffedit-guidance"), float,
          restore=saved("guidance_scale", specs.GUIDANCE)),
    Field("seed", seed_box("diffedit-seed"), optional_whole, restore=saved("seed", specs.SEED)),
    Field("decode_masked_change", lambda engine: gr.Checkbox(
        label="Decode only the masked change", value=DEFAULTS.decode_masked_change,
        info="off the mask, the decoding of the image's own latents (the decoder is global)",
        elem_id="diffedit-decode-change"), bool, restore=saved("decode_masked_change")),
    Field("composite", lambda engine: gr.Checkbox(label="Paste original pixels outside the mask",
                                                  value=DEFAULTS.composite, elem_id="diffedit-composite"), bool,
          restore=saved("composite")),
    # the found mask, touched up by the user: an input of the edit only
    Field("mask", lambda engine: gr.ImageEditor(
        label="Touch up the mask (paint adds, eraser removes), then Edit", type="numpy", image_mode="RGBA",
        format="png", canvas_size=(engine.native_size,) * 2, height=300, sources=(), transforms=(),
        brush=gr.Brush(default_size=8, colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed"),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["mask"]),
        elem_id="diffedit-mask-editor"), in_spec=False),
)


def spec_from_values(values: Mapping[str, Any], inversion: Inversion | None = None) -> DiffEditSpec:
    """The spec of the form's values; editing `inversion`, its caption is the source prompt (the box shows it)."""
    parsed = spec_values(FIELDS, values)
    if inversion is not None:
        parsed["source_prompt"] = inversion.prompt
    parsed["seed"] = seed_from_form(parsed.get("seed"))
    return DiffEditSpec(**parsed)


STAGES = (  # the two accordions' rows of fields
    ("Stage I: mask", (("deviation", "threshold"), ("probes", "noise_samples"), ("mask_strength", "clean_pixels"))),
    ("Stage II: edit", (("edit_strength", "start"), ("steps", "guidance_scale"), ("seed", "composite"), ("decode_masked_change",))),
)


# --------------------------------------------------------------------------------------------
# The tab


class DiffEditTab(Tab):
    """The DiffEdit tab (the shape of every tab: `parts.Tab`), with two jobs: `find_mask` (Stage I, rendered by
    `render_mask`) and `run` (Stage II)."""

    name = "diffedit"

    structure_panel = StructurePanel(name)  # Stage II samples under it (Stage I, the mask, stays without control)
    fields = (*FIELDS, *structure_panel.fields)

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                self.image, self.use_inversion = form.place("image", "use_inversion")
                self.use_inversion.visible = self.inversion_state is not None
                self.source_prompt, _ = form.place("source_prompt", "target_prompt")
                model_panel(self.engine, "diffedit-model")
                with gr.Row():
                    self.find = gr.Button("Find mask", elem_id="diffedit-mask-btn")
                    self.go = gr.Button("Edit", variant="primary", elem_id="diffedit-edit-btn", elem_classes=[RUN_CLASS])
                    self.stop = gr.Button("Stop", variant="stop", elem_id="diffedit-stop", elem_classes=[STOP_CLASS])
                for title, rows in STAGES:
                    with gr.Accordion(title, open=True):
                        for row in rows:
                            with gr.Row():
                                form.place(*row)
                self.structure_panel.place(form, self.engine)
                self.load_settings = load_settings_box("diffedit-load-settings")
            with gr.Column(scale=6, min_width=360):
                self.status = status_box("diffedit-status")
                with gr.Row(equal_height=False):
                    self.mask_preview = gr.Image(label=MASK_LABEL, format="png", interactive=False, height=260,
                                                 buttons=["download"], elem_id="diffedit-mask-preview",
                                                 elem_classes=["dcs-image"])
                    self.result = gr.Image(label=RESULT_LABEL, format="png", interactive=False, height=260,
                                           buttons=["download", "fullscreen"], elem_id="diffedit-result",
                                           elem_classes=["dcs-image"])
                self.hints = gr.Markdown(hints.DIFFEDIT_IF_FAILED, label="If the edit fails", elem_id="diffedit-hints")
                self.sending = gr.State(None)
                self.send_buttons = send_row("diffedit", own=self.name)
                self.reuse_seed = gr.Button("Reuse this result's seed", size="sm", elem_id="diffedit-reuse-seed")
                with gr.Row(equal_height=False):
                    self.compare = compare_view("diffedit-compare")
                    self.difference = gr.Image(label="Difference (|after - before| x 4)", format="png",
                                               interactive=False, height=260, buttons=[], elem_id="diffedit-difference",
                                               elem_classes=["dcs-image"])
                self.downloads = downloads_box("diffedit-downloads")
                (self.mask_editor,) = form.place("mask")
                self.settings = settings_view("diffedit-settings", "Settings")
        self.found = gr.State(None)  # {"soft": (H, W) float map, "image": (H, W, 3) uint8} of the last Stage I
        self.receives = [self.image, self.use_inversion, self.source_prompt, self.mask_editor, self.found]
        # every result of an edit, labelled "previous run" / "partial" while a new run has not replaced it
        self.results = {component: component.label for component in (
            self.mask_preview, self.result, self.compare, self.difference, self.hints, self.downloads, self.settings)}
        gr.Markdown(
            f"{model_line(self.engine)}. DiffEdit (Couairon et al. 2023): the mask is where the source and "
            "target predictions of the same noisy image disagree; the edit regenerates only there and puts the "
            f"original back everywhere else at every step. {KEYS_HELP}.", elem_id="diffedit-help",
        )

    # 2. handlers -------------------------------------------------------------------------
    def find_mask(self, request: gr.Request, **values: Any) -> Iterator[Outputs]:
        """Stage I: streams the mask after every probe (preview, editor and the found state). The mask is shown
        on the image it belongs to (the event's: a keep-size inversion's own size, not the model's)."""

        def start(cancel: CancelToken) -> Iterator[Event]:
            inversion = chosen_inversion(values, NO_INVERSION)
            spec = personalized(spec_from_values(values, inversion), request)
            warn_about_limits(self.engine, [spec.source_prompt, spec.target_prompt], concepts=spec.concepts)  # uploads are resized
            run["preview_settings"] = run_settings(spec)
            return engine_job(self.engine, "diffedit_mask", spec, None if inversion is not None else values.get("image"),
                              inversion, cancel=cancel)

        run: dict[str, Any] = {}  # the run's settings, for the previews
        render, partial = remembering(lambda event: self.render_mask(event, **run), [self.mask_preview])
        yield from stream_job("diffedit", request, self.status, start, render, "DiffEdit mask",
                              results={self.mask_preview: MASK_LABEL, self.hints: self.hints.label,
                                       self.downloads: self.downloads.label, self.settings: self.settings.label},
                              partial=partial)

    def run(self, request: gr.Request, structure_picture: dict | None = None,
            image_prompt_reference: np.ndarray | None = None, **values: Any) -> Iterator[Outputs]:
        """Stage II with the editor's mask (Stages I and II when it is empty): streams progress, the mask, previews,
        then the edited image, its before/after, the hints, the downloads and the settings.

        Parameters:
            structure_picture: the Structure panel's own picture (optional: its rows read this tab's image)
            image_prompt_reference: the image prompt's reference (with image_prompt_on)
        """
        # optional images (None by default, so API callers may leave them out): the panel reads them from values
        values.update(structure_picture=structure_picture, image_prompt_reference=image_prompt_reference)
        edit: dict[str, Any] = {}  # what render needs of this run: its spec, inversion and the image before

        def start(cancel: CancelToken) -> Iterator[Event]:
            inversion = chosen_inversion(values, NO_INVERSION)
            spec = personalized(spec_from_values(values, inversion), request)
            warn_about_limits(self.engine, [spec.source_prompt, spec.target_prompt], concepts=spec.concepts)  # uploads are resized
            mask, background = edited_mask(values.get("mask"))
            # A touched-up mask belongs to the image on the editor (the one Stage I worked on, at its size).
            picture = background if mask is not None and inversion is None else values.get("image")
            before = inversion.image if inversion is not None else picture
            before = None if before is None else rgb(before)
            # the rows read the image being edited; without rows an inversion edits under its own structure
            structure, images = self.structure_panel.structure(values, before, int(self.engine.native_size))
            spec = dataclasses.replace(spec, structure=structure)
            edit.update(spec=spec, inversion=inversion, before=before, preview_settings=run_settings(spec))
            return engine_job(self.engine, "diffedit", spec, None if inversion is not None else picture, mask, inversion,
                              structure_images=images, cancel=cancel)

        render, partial = remembering(lambda event: self.render(event, **edit), [self.mask_preview, self.result])
        yield from stream_job("diffedit", request, self.status, start, render, "DiffEdit",
                              results=self.results, partial=partial)

    def render_mask(self, event: Event, preview_settings: Mapping[str, Any] | None = None) -> Outputs | None:
        if isinstance(event, MaskResult):
            picture = np.asarray(event.image)
            text = f"Mask found: {100 * event.binary.mean():.1f}% of the image · adjust, touch up, then Edit"
            mask_settings = {**event.settings, "download": "mask"}
            return {self.status: done_html(text), self.mask_preview: tagged(event.images[0], event.settings),
                    self.mask_editor: editor_value(picture, event.binary),
                    self.found: {"soft": event.soft, "image": picture},
                    self.hints: hints.as_markdown(hints.mask_hints(event.mask_fraction), hints.DIFFEDIT_IF_FAILED),
                    self.downloads: DOWNLOADS.pngs([("diffedit-mask.png", mask_picture(event.binary), mask_settings)]),
                    self.settings: event.settings}
        if isinstance(event, Mask):
            return {self.mask_preview: tagged(overlay(event.image, event.binary), preview_settings or {},
                                              picture="mask preview", step=event.step)}
        return None

    def render(self, event: Event, spec: DiffEditSpec | None = None, inversion: Inversion | None = None,
               before: np.ndarray | None = None, preview_settings: Mapping[str, Any] | None = None) -> Outputs | None:
        if isinstance(event, Mask):
            return {self.mask_preview: tagged(mask_picture(event.binary), preview_settings or {}, picture="mask preview",
                                              step=event.step)}
        if isinstance(event, Preview):
            return {self.result: tagged(event.images[0], preview_settings or {}, picture="preview", step=event.step)}
        if isinstance(event, DiffEditResult):
            edited, settings = event.images[0], event.settings
            text = (f"Done in {event.timings['total']:.1f} s · mask {100 * event.mask.mean():.1f}% "
                    f"({event.mask_from}) · seed {event.seed} · {event.unet_evaluations} UNet evaluations")
            before = rgb(edited) if before is None else before
            found = hints.diffedit_hints(spec, event, inversion, before) if spec is not None else []
            pngs = [("diffedit.png", edited, settings),
                    ("diffedit-mask.png", mask_picture(event.mask), {**settings, "download": "mask"})]
            return {self.status: done_html(text), self.result: tagged(edited, settings),
                    self.mask_preview: tagged(mask_picture(event.mask), settings, download="mask"),
                    self.compare: (Image.fromarray(before).resize(edited.size, Image.NEAREST), edited),
                    self.difference: difference(before, edited),
                    self.hints: hints.as_markdown(found, hints.DIFFEDIT_IF_FAILED),
                    self.downloads: DOWNLOADS.pngs(pngs), self.sending: Sendable(rgb(edited), settings),
                    self.settings: settings}
        return None

    def receive(self, item: Sendable) -> dict[Any, Any]:
        """An image sent here: the image to edit, its prompt as the source prompt (not the Inversion tab's inversion)."""
        return {self.image: gr.update(value=item.image, interactive=True), self.use_inversion: False,
                self.source_prompt: gr.update(value=item.prompt, interactive=True), self.mask_editor: None,
                self.found: None}

    def receive_mask(self, item: Sendable) -> dict[Any, Any]:
        """An attention map's mask sent here: the image, and the mask on the editor to touch up before Edit."""
        if item.mask is None:
            raise gr.Error("This item carries no mask: send it with a 'Map as mask' button.")
        return {**self.receive(item), self.mask_editor: editor_value(item.image, item.mask)}

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        inputs = with_inversion(self.form.inputs, self.inversion_state)
        stage_one = set(inputs) - {"mask", *(field.name for field in self.structure_panel.fields)}  # no control
        stage_one_inputs = {name: component for name, component in inputs.items() if name in stage_one}
        finding = self.find.click(self.find_mask, inputs_kwargs=stage_one_inputs, api_name="diffedit_mask",
                                  outputs=[self.status, self.mask_preview, self.mask_editor, self.found, self.hints,
                                           self.downloads, self.settings], **JOB_EVENT)
        self.run_event = self.go.click(
            self.run, inputs_kwargs=inputs, api_name="diffedit", **JOB_EVENT,
            outputs=[self.status, self.mask_preview, self.result, self.compare, self.difference, self.hints,
                     self.downloads, self.sending, self.settings])
        stop_button(self.stop, self.status, [finding, self.run_event], tab="diffedit", api_name="diffedit_stop",
                    results=list(self.results))
        threshold, clean, seed, steps, guidance = self.form.components(
            ["threshold", "clean_pixels", "seed", "steps", "guidance_scale"])
        gr.on([threshold.release, clean.release], rethreshold, [self.found, threshold, clean],
              [self.mask_preview, self.mask_editor], **instant("diffedit-threshold"))
        # A new image makes the old mask meaningless (an image sent with its mask sets both: not a user upload).
        gr.on([self.image.upload, self.image.clear], lambda: (None, None), None, [self.mask_editor, self.found],
              **instant("diffedit-threshold"))
        self.reuse_seed.click(seed_of, self.settings, seed, **instant("diffedit-seed"))
        self.load_settings.upload(self.read_settings, self.load_settings, self.form.restorable,
                                  api_name="diffedit_read_settings", concurrency_id="settings")
        self.structure_panel.wire(self.form, self.engine)
        if self.inversion_state is not None:
            shown, watched = [self.image, self.source_prompt, steps, guidance], [self.use_inversion, self.inversion_state]
            # Ticking or unticking changes the image edited (its old mask goes); a new inversion shows when ticked.
            self.use_inversion.input(lambda use, inversion: (*inversion_view(use, inversion), None, None), watched,
                                     [*shown, self.mask_editor, self.found], **instant("diffedit-inversion"))
            self.inversion_state.change(inversion_view, watched, shown, **instant("diffedit-inversion"))
