"""The Structure tab: draw an outline or a layout (or upload a picture and derive one), pick the controls that read
it, and generate under them: ControlNet (Zhang, Rao & Agrawala 2023), T2I-Adapter (Mou et al. 2024) and, when the
model has one, an IP-Adapter image prompt (Ye et al. 2023, eq. 5: Z = Attn(Q, K, V) + lambda Attn(Q, K', V')).

One canvas is the source of every control map; each control row derives its own map from it (`structure_rows.MAP_SOURCES`: the
drawing as drawn, its OpenCV Canny outline, or the layout from a shapes picture's colours), so one upload feeds a
layout control and an outline control at once. The maps show as soon as the canvas or a row changes (no model
work), prepared at the model's size with the notes of `maps.prepare_control_map` ("resized to 128x128"); what a row
shows is what the run sends.

The job is Generate's (`engine.generate(spec, structure_images=...)`, a GenerateSpec with a StructureSpec), so
the results are Generate's too: `StructureTab` reuses GenerateTab's render, partial result and attention-map view,
and its PNGs load back in either tab. Endpoint ``/structure`` streams progress, live previews and attention maps and
ends with the images, their PNGs (carrying the structure spec and the maps' records) and the settings;
``/structure_maps`` derives the maps only; ``/structure_read_settings`` restores the form from a PNG.
The rows themselves (their fields, parsing, map sources and plot) are `studio.ui.structure_rows`', which Generate's
condition table and the editing tabs share.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.errors import InvalidInputError
from studio.events import CancelToken, Event
from studio.jobs import resolve_seed
from studio.specs import GenerateSpec
from studio.structure.spec import StructureImages
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
from studio.ui.generate import GenerateTab, Shown, _blank, pick_item, run_settings
from studio.ui.gpu import engine_job
from studio.ui.parts import (
    Sendable,
    instant,
    load_settings_box,
    mask_row,
    model_line,
    model_panel,
    rgb,
    send_row,
    settings_view,
    warn_about_limits,
)
from studio.ui.sdedit import BRUSH_COLOURS, STROKE_EXAMPLES, canvas_inputs
from studio.ui.session_concepts import personalized
from studio.ui.stream import (
    JOB_EVENT,
    KEYS_HELP,
    Outputs,
    run_and_stop,
    status_box,
    stop_button,
    stream_job,
)
from studio.ui.structure_rows import (
    IMAGE_PROMPT_PREFIX,
    MODES_HELP,
    NO_CONTROL,
    ROWS,
    channel_only,
    control_row_fields,
    derive_map,
    image_prompt_fields,
    notes_text,
    place_row_settings,
    row_field,
    schedule_plot,
    source_for,
    structure_from_values,
    structure_images,
)

DEFAULTS = GenerateSpec(prompt="", capture_attention=True)  # attention maps on, as the Generate tab starts
BRUSH = ["#000000", "#ffffff", *BRUSH_COLOURS]  # black on the white canvas; the shapes palette for "layout (colours)"


# --------------------------------------------------------------------------------------------
# Pure helpers: the canvas -> control maps


def canvas_picture(canvas: dict | None, size: int) -> np.ndarray:
    """The canvas as one RGB picture (its background with the strokes on top); a blank canvas raises
    InvalidInputError."""
    picture, _, _ = canvas_inputs(canvas, size)  # SDEdit's canvas: background + strokes layer, blank refused
    return picture


def picture_canvas(image: np.ndarray) -> dict:
    """An editor value with `image` as its background and nothing drawn over it (an image sent from a tab)."""
    picture = rgb(image)
    return {"background": np.dstack([picture, np.full(picture.shape[:2], 255, np.uint8)]), "layers": [],
            "composite": None}


def form_spec(values: Mapping[str, Any]) -> tuple[GenerateSpec, list[int]]:
    """The typed spec for the form's values and the rows (counted from 1) its controls come from: the rows with a
    control picked, and the image prompt when it is on. No images: `structure_run` adds them."""
    parsed = spec_values(FIELDS, values)
    structure, picked = structure_from_values(parsed, values)
    parsed["seed"] = seed_from_form(parsed.get("seed"), bool(values.get("random_seed", False)))
    return GenerateSpec(**parsed, structure=structure), picked


def structure_run(values: Mapping[str, Any], size: int) -> tuple[GenerateSpec, StructureImages]:
    """The typed spec and the images of a run for the form's values: each row's control with the map it derives
    from the canvas, and the image prompt's reference. Raises InvalidInputError for what the user must change (no
    control picked, a blank canvas or an empty map, an image prompt without its reference); ranges and control
    names are the engine's to check (StructureSpec.validate)."""
    spec, rows = form_spec(values)
    if spec.structure.empty:
        raise InvalidInputError("Pick a control in at least one row (or turn the image prompt on): without one this "
                                "is the Generate tab.")
    picture = canvas_picture(values.get("canvas"), size) if rows else None
    return spec, structure_images(values, spec.structure, rows, lambda row: picture, (size, size))[0]


# --------------------------------------------------------------------------------------------
# The form


IMAGE_PROMPT_FIELDS = image_prompt_fields()

FIELDS = (
    Field("canvas", lambda engine: gr.ImageEditor(
        label="Canvas: draw an outline or a layout, or upload a picture", type="numpy", image_mode="RGBA",
        format="png", canvas_size=(engine.native_size,) * 2, height=340,
        # no initial value: the editor sends an upload over a value it was given as that value, not the upload
        brush=gr.Brush(default_size=8, colors=BRUSH, default_color=BRUSH[0]),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["strokes"]), transforms=(),
        elem_id="structure-canvas"), in_spec=False),
    Field("prompt", textbox(label="Prompt", lines=2, placeholder="a big red circle on a blue background",
                            elem_id="structure-prompt"), text, saved("prompt")),
    Field("negative_prompt", textbox(label="Negative prompt", elem_id="structure-negative-prompt"), text,
          saved("negative_prompt")),
    *(field for row in range(1, ROWS + 1) for field in control_row_fields(row)),
    *IMAGE_PROMPT_FIELDS,
    Field("seed", seed_box("structure-seed", scale=2, min_width=120), optional_whole, saved("seed", specs.SEED)),
    Field("random_seed", lambda engine: gr.Checkbox(label="Random seed", value=True, elem_id="structure-random-seed"),
          restore=lambda settings: False if settings.get("seed") is not None else None, in_spec=False),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, elem_id="structure-steps"), int, saved("steps", specs.STEPS)),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="structure-guidance"), float,
          saved("guidance_scale", specs.GUIDANCE)),
    # a view option, not a setting: never restored
    Field("capture_attention", lambda engine: gr.Checkbox(
        label="Show attention maps", value=DEFAULTS.capture_attention, elem_id="structure-show-attention"), bool),
)


# the fields the structure plot follows: every row's and the image prompt's settings, and the steps
PLAN_FIELDS = (*(field.name for field in FIELDS if field.name.startswith(("row", IMAGE_PROMPT_PREFIX))
                 and field.name.rpartition("_")[2] not in ("map", "reference")), "steps")


# --------------------------------------------------------------------------------------------
# The tab


class StructureTab(GenerateTab):
    """The Structure tab: Generate's job with control rows and an image prompt (the shape of every tab:
    `parts.Tab`; its results, partial result and attention view are GenerateTab's)."""

    name = "structure"
    restores_records_of = ("generate",)  # every field of Generate's form is one of this tab's
    fields = FIELDS

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form, native = self.form, int(self.engine.native_size)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=340):
                self.canvas, self.prompt, _ = form.place("canvas", "prompt", "negative_prompt")
                self.go, self.stop = run_and_stop("Generate with structure", "structure-btn", "structure-stop")
                self.map_views = [self.control_row(row) for row in range(1, ROWS + 1)]
                if not self.engine.model.controls:
                    gr.Markdown("No control models are loaded for this model: load a ControlNet or T2I-Adapter "
                                "made for it (`--controlnet`, `--t2i-adapter`).", elem_id="structure-no-controls")
                self.image_prompt_row()
                gr.Markdown(MODES_HELP, elem_id="structure-modes-help")
                with gr.Row():
                    form.place("seed", "random_seed")
                with gr.Row():
                    form.place("steps", "guidance_scale")
                initial = self.plot_structure(**{name: form[name].value for name in PLAN_FIELDS})
                self.schedule_view = gr.Image(
                    initial if isinstance(initial, Image.Image) else None, type="pil",
                    format="png", interactive=False, buttons=[], elem_id="structure-plot",
                    label="Each row per step: its scale (0 outside its window), a channel row's weight")
                form.place("capture_attention")
                model_panel(self.engine, "structure-model")
                self.load_settings = load_settings_box("structure-load-settings")
            with gr.Column(scale=6, min_width=360):
                self.results_panel()
        self.attention = gr.State(None)
        self.receives = [self.canvas, self.prompt]
        gr.Examples(
            [[str(STROKE_EXAMPLES / "red_blob_on_blue.png"), "a big red circle on a blue background"],
             [str(STROKE_EXAMPLES / "purple_wedge_black_box_on_yellow.png"),
              "a purple triangle on a yellow background"]],
            form.components(["canvas", "prompt"]), label="Pictures to derive maps from", elem_id="structure-examples")
        gr.Markdown(
            f"{model_line(self.engine)} · maps at {native}×{native} px · {KEYS_HELP}. Each row's control reads its own "
            "map, derived from the canvas; the maps above are what the run sends.", elem_id="structure-help")

    def control_row(self, row: int) -> tuple[gr.Image, gr.Markdown]:
        """A control row's settings beside the map it reads; the weight and schedule show in the channel mode."""
        with gr.Group(elem_id=f"structure-row{row}"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=240):
                    place_row_settings(self.form, row)
                with gr.Column(scale=1, min_width=120):
                    view = gr.Image(label=f"Map {row}", format="png", interactive=False, height=140, buttons=[],
                                    elem_id=f"structure-row{row}-map-view", elem_classes=["dcs-image"])
                    notes = gr.Markdown(label=f"Map {row} notes", elem_id=f"structure-row{row}-notes")
        return view, notes

    def image_prompt_row(self) -> None:
        """The IP-Adapter row when the model has one; otherwise a line that says why there is none."""
        form, loaded = self.form, self.engine.model.image_prompt is not None
        with gr.Group(visible=loaded, elem_id="structure-image-prompt"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=240):
                    form.place("image_prompt_on", "image_prompt_scale")
                    with gr.Row():
                        form.place("image_prompt_mode", "image_prompt_weight", "image_prompt_schedule")
                with gr.Column(scale=2, min_width=160):
                    form.place("image_prompt_reference")
        if not loaded:
            gr.Markdown("No image prompt: this model has no IP-Adapter loaded (`--ip-adapter FILE`).",
                        elem_id="structure-no-image-prompt")

    def results_panel(self) -> None:
        """Progress, the live preview beside the attention heat map, the images with their send row, the PNGs and
        the settings (the components GenerateTab's render and partial write)."""
        self.status = status_box("structure-status")
        with gr.Row(equal_height=False):
            self.preview = gr.Image(label="Live preview", format="png", interactive=False, elem_id="structure-preview",
                                    elem_classes=["dcs-image"], height=260, buttons=["download"])
            with gr.Column():
                self.heatmap = gr.Image(label="Attention heat map", format="png", interactive=False,
                                        elem_id="structure-heatmap", elem_classes=["dcs-image"], height=260,
                                        buttons=["download"])
                self.resolution_pick = gr.Radio(choices=[], label="Layers (UNet resolution of the maps)",
                                                elem_id="structure-resolution-pick")
                self.map_sending = gr.State(None)
                self.mask_buttons = mask_row("structure", own=self.name)
        self.token_pick = gr.Radio(choices=[], label="Attention for word", elem_id="structure-token-pick")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.gallery = gr.Gallery(label="Results", format="png", columns=3, height="auto",
                                          object_fit="contain", elem_id="structure-gallery",
                                          elem_classes=["dcs-gallery"], buttons=["download", "fullscreen"])
                self.sending = gr.State(None)
                self.items = gr.State([])
                self.send_buttons = send_row("structure", own=self.name)
            with gr.Column(scale=2, min_width=240):
                self.downloads = gr.File(label="PNG with settings", file_count="multiple",
                                         elem_id="structure-downloads")
                self.settings = settings_view("structure-settings", "Settings of this result", height=240)

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, image_prompt_reference: np.ndarray | None = None,
            **values: Any) -> Iterator[Outputs]:
        """Generate under the control rows (and the image prompt); streams progress, previews and attention maps,
        then the result.

        Parameters:
            canvas: the drawing or picture every row derives its control map from
            row1_control: a loaded control's name, or "none" (likewise row2_control)
            row1_map: how the row reads the canvas: drawing, outline (Canny) or layout (colours)
            image_prompt_reference: the image prompt's reference (with image_prompt_on)
        Returns:
            gallery: the images, each a PNG carrying its settings (the structure spec and the maps' records)
            preview: the latest preview; the first image once done
            status: the progress line (HTML)
            settings: the settings of the result, the seed used included
            downloads: the images as PNG files carrying their settings
        """
        shown: Shown | None = None
        native = int(self.engine.native_size)
        values["image_prompt_reference"] = image_prompt_reference  # optional: API callers without an image prompt

        def start(cancel: CancelToken) -> Iterator[Event]:
            nonlocal shown
            spec, images = structure_run(values, native)
            spec = personalized(replace(spec, seed=resolve_seed(spec.seed, span=spec.batch_size)), request)  # partial images know their seed
            warn_about_limits(self.engine, [spec.prompt, spec.negative_prompt], concepts=spec.concepts)
            shown = Shown(run_settings(spec, str(self.engine.model_name), native), image=_blank(spec, native))
            return engine_job(self.engine, "generate", spec, structure_images=images, cancel=cancel)

        yield from stream_job(self.name, request, self.status, start, lambda event: self.render(event, shown),
                              "Structure", results=self.results, partial=lambda: self.partial(shown))

    def plot_structure(self, **values: Any) -> Any:
        """The plot of what the sampler will apply for the rows as they stand (engine.guidance_plan, no model work);
        rows being edited keep the last plot."""
        try:
            spec, _ = form_spec({**values, "prompt": "prompt", "random_seed": True})  # the plan reads no prompt
            if spec.structure.empty:
                return None
            schedule = self.engine.guidance_plan(spec).structure
        except InvalidInputError:
            return gr.skip()
        return schedule_plot(schedule)

    def show_maps(self, canvas: dict | None = None, **rows: str) -> list[Any]:
        """Each row's map and its notes for the canvas as it stands (no model work): what the run sends. A blank
        canvas says so; a row without a control shows no map.

        Parameters:
            canvas: the drawing or picture every row derives its control map from
            row1_control: the row's control ("none": the row is off) (likewise row2_control)
            row1_map: how row 1 reads the canvas: drawing, outline (Canny) or layout (colours) (likewise row2_map)
        """
        native = int(self.engine.native_size)
        picked = [(rows.get(row_field(row, "control"), NO_CONTROL), rows.get(row_field(row, "map")) or "drawing")
                  for row in range(1, ROWS + 1)]
        try:
            picture = canvas_picture(canvas, native)
        except InvalidInputError as error:
            return [value for _ in picked for value in (None, str(error))]
        shown = []
        for control, source in picked:
            if control == NO_CONTROL:
                shown += [None, "No control in this row."]
                continue
            try:
                control_map, notes = derive_map(picture, source, native)
                shown += [control_map, notes_text(notes)]
            except InvalidInputError as error:
                shown += [None, str(error)]
        return shown

    def pick_source(self, control: str) -> str:
        """The map source that fits a control just picked."""
        return source_for(self.engine, control)

    def receive(self, item: Sendable) -> dict[Any, Any]:
        """An image sent here: the canvas's picture (each row derives its map from it), its prompt as the prompt."""
        return {self.canvas: picture_canvas(item.image), self.prompt: item.prompt}

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        form = self.form
        self.run_event = gr.on(
            [self.go.click, form["prompt"].submit], self.run, inputs_kwargs=form.inputs, api_name="structure",
            outputs=[self.gallery, self.preview, self.status, self.attention, self.settings, self.downloads,
                     self.items, self.sending],
            **JOB_EVENT)
        stop_button(self.stop, self.status, [self.run_event], tab=self.name, api_name="structure_stop",
                    results=[*self.results, self.items, self.sending])
        row_inputs = {row_field(row, name): form[row_field(row, name)] for row in range(1, ROWS + 1)
                      for name in ("control", "map")}
        map_outputs = [component for view in self.map_views for component in view]
        # the editor's change misses uploads and strokes in Gradio 6 (its input and upload have them); change has the
        # values events set (a sent image, an example)
        gr.on([self.canvas.input, self.canvas.upload, self.canvas.change,
               *(component.change for component in row_inputs.values())],
              self.show_maps, inputs_kwargs={"canvas": self.canvas, **row_inputs}, outputs=map_outputs,
              api_name="structure_maps", concurrency_limit=None, concurrency_id="structure-maps",
              trigger_mode="always_last", show_progress="hidden")
        for row in range(1, ROWS + 1):
            form[row_field(row, "control")].input(self.pick_source, form[row_field(row, "control")],
                                                  form[row_field(row, "map")], **instant("structure-view"))
        for prefix in [*(f"row{row}_" for row in range(1, ROWS + 1)), IMAGE_PROMPT_PREFIX]:
            form[f"{prefix}mode"].change(channel_only, form[f"{prefix}mode"],
                                         form.components([f"{prefix}weight", f"{prefix}schedule"]),
                                         **instant("structure-view"))
        pickers = [self.attention, self.token_pick, self.resolution_pick]
        self.attention.change(self.show_attention, pickers,
                              [self.token_pick, self.resolution_pick, self.heatmap, self.map_sending],
                              **instant("structure-view"))
        gr.on([self.token_pick.input, self.resolution_pick.input], lambda *picks: self.show_attention(*picks)[2:],
              pickers, [self.heatmap, self.map_sending], **instant("structure-view"))
        self.gallery.select(pick_item, self.items, self.sending, **instant("structure-view"))
        plan_inputs = {name: form[name] for name in PLAN_FIELDS}
        gr.on([component.change for component in plan_inputs.values()], self.plot_structure, inputs_kwargs=plan_inputs,
              outputs=self.schedule_view, **instant("structure-plot"))
        self.load_settings.upload(self.read_settings, self.load_settings, form.restorable,
                                  api_name="structure_read_settings", concurrency_id="settings")
