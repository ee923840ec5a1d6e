"""The SDEdit tab: paint strokes (on a blank canvas or an image), optionally paint the editable region on the
"mask" layer, and get a strip of results over several t0 (faithfulness to the strokes vs realism).

The canvas is a gr.ImageEditor with two fixed layers: "strokes" (the guide's paint) and "mask" (where the
image may change; leave it empty for unmasked SDEdit). The "Paint on" switch above it picks the layer and its
brush: the shapes world's opaque colours for strokes, one translucent magenta for the mask, so the mask shows as
an overlay of its own colour. "Fill background" paints the whole background one colour; "Clear canvas" leaves a
blank canvas of the model's size (the editor's own Clear, hidden, left its empty state drawn 1:1: a 128 px box). The guide is the
background with the strokes layer on top -- never the mask paint; the original (frozen pixels) is the background.
Endpoint ``/sdedit`` streams progress and live previews (carrying the run's spec, the step they show), and ends
with the strip, the images, a table of L2-to-guide and realism per image, the downloads (PNGs with their settings)
and the settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.editing import masks
from studio.editing.sdedit import NOISE_FORMS, REPEATS, SDEditSpec
from studio.errors import InvalidInputError
from studio.events import CancelToken, Event, Preview, SDEditResult
from studio.shapes.vocabulary import COLOURS
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
)
from studio.ui.session_concepts import personalized
from studio.ui.stream import (
    JOB_EVENT,
    KEYS_HELP,
    Outputs,
    done_html,
    remembering,
    run_and_stop,
    status_box,
    stop_button,
    stream_job,
)

if TYPE_CHECKING:
    from studio.engine import Engine

DEFAULTS = SDEditSpec()
BRUSH_COLOURS = ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in COLOURS.values()]  # the shapes world's palette
TABLE_COLUMNS = ["t0", "repeat", "seed", "L2 to guide", "realism"]
STROKES, MASK = 0, 1  # layer order in the editor
PAINT_LAYERS = ("strokes", "mask")  # the "Paint on" switch's choices, in layer order
MASK_COLOUR = ("#ff00ff", 0.5)  # the mask layer's brush: a colour of no shape, half transparent (an overlay)
MASK_RGBA = (255, 0, 255, 128)  # the same paint on a mask layer written here (a mask sent from an attention map)
GALLERY_COLUMNS = 4  # at most: fewer images take the gallery's width between them
BACKGROUNDS = tuple(COLOURS)  # "Fill background" colours: the shapes world's palette, by name
LABELS = {"preview": "Live preview", "strip": "Results: guide, then one column per t0 (rows: repeats)",
          "gallery": "Images"}  # result labels (Stop and a new run add "· partial" / "· previous run")
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


def brush_for(layer: str) -> gr.Brush:
    """The brush of a "Paint on" choice: the shapes world's palette for strokes, the translucent mask colour."""
    if layer == "mask":
        return gr.Brush(default_size=12, colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed")
    return gr.Brush(default_size=12, colors=BRUSH_COLOURS, default_color=BRUSH_COLOURS[0])


# Selects the "Paint on" layer in the editor's own layer menu (the only way to pick the layer brushes paint on).
SELECT_LAYER_JS = f"""
async (layer) => {{
  const editor = document.querySelector('#sdedit-canvas');
  const menu = editor?.querySelector('button[aria-label="Show Layers"]');
  if (!menu) return layer;
  const settle = () => new Promise((done) => setTimeout(done, 60));
  const opened = !editor.querySelector('.layer-wrap li');
  if (opened) {{ menu.click(); await settle(); }}
  const entry = [...editor.querySelectorAll('.layer-wrap li')][{list(PAINT_LAYERS)}.indexOf(layer)];
  const name = entry && [...entry.querySelectorAll('*')].find((e) => !e.children.length && e.textContent.trim());
  name?.click();
  if (opened) {{ await settle(); menu.click(); }}
  return layer;
}}
"""


def blank_canvas(size: int, colour: tuple[int, int, int] = (255, 255, 255), layers: list | None = None) -> dict:
    """An editor value of one colour at the model's size (white: blank), keeping `layers` (the paint) when given."""
    background = np.empty((size, size, 4), np.uint8)
    background[...] = (*colour, 255)
    return {"background": background, "layers": list(layers or []), "composite": None}


def filled(value: dict | None, colour: str, size: int) -> dict:
    """The canvas with its background painted `colour` (a shapes-world colour name), strokes and mask kept."""
    if colour not in COLOURS:
        raise InvalidInputError(f"Pick a background colour: one of {', '.join(BACKGROUNDS)}.")
    layers = [layer for layer in ((value or {}).get("layers") or []) if layer is not None]
    background = (value or {}).get("background")
    side = np.asarray(background).shape[0] if background is not None else size
    return blank_canvas(side, COLOURS[colour], layers)


def canvas_of(image: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """An editor value with `image` as its background, an empty strokes layer and, given a mask, the mask layer
    painted where it is (in the mask's own translucent colour)."""
    picture = np.asarray(image)[..., :3]
    strokes = np.zeros((*picture.shape[:2], 4), np.uint8)
    mask_layer = strokes.copy()
    if mask is not None:
        mask_layer[np.asarray(mask, bool)] = MASK_RGBA
    return {"background": np.dstack([picture, np.full(picture.shape[:2], 255, np.uint8)]),
            "layers": [strokes, mask_layer], "composite": None}


def strengths_text(settings: Mapping[str, Any]) -> str | None:
    """A record's t0 values as the t0 box writes them (JSON gives a list); None when it holds none."""
    strengths = settings.get("strengths")
    return None if not strengths else ", ".join(f"{float(s):g}" for s in strengths)


def seed_of(settings: Mapping[str, Any] | None) -> tuple[int, bool]:
    """ "Reuse seed": (the seed the shown result was made with, random seed off)."""
    if not settings or settings.get("seed") is None:
        raise gr.Error("There is no result yet: its seed is reused once SDEdit has run.")
    return int(settings["seed"]), False


# --------------------------------------------------------------------------------------------
# The form


FIELDS = (
    Field("canvas", lambda engine: gr.ImageEditor(
        label="Canvas: paint strokes; with 'Paint on: mask', the region that may change (optional)",
        type="numpy", image_mode="RGBA", format="png", canvas_size=(engine.native_size,) * 2, height=380,
        brush=gr.Brush(default_size=12, colors=BRUSH_COLOURS, default_color=BRUSH_COLOURS[0]),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["strokes", "mask"]),
        transforms=(), elem_id="sdedit-canvas"), in_spec=False),
    Field("prompt", textbox(label="Prompt (optional)", placeholder="a red circle on a blue background",
                                              elem_id="sdedit-prompt"), text, restore=saved("prompt")),
    Field("strengths", textbox(
        value=", ".join(f"{s:g}" for s in DEFAULTS.strengths), label="t0 values (0-1)",
        info="Low t0 keeps the strokes; high t0 gives realism. One column each.", elem_id="sdedit-t0"), parse_strengths,
          restore=strengths_text),
    Field("repeats", slider(REPEATS, DEFAULTS.repeats, elem_id="sdedit-repeats"), int, restore=saved("repeats", REPEATS)),
    Field("steps", slider(specs.STEPS, DEFAULTS.steps, label="Steps (whole schedule)", elem_id="sdedit-steps"), int,
          restore=saved("steps", specs.STEPS)),
    Field("guidance_scale", slider(specs.GUIDANCE, DEFAULTS.guidance_scale, elem_id="sdedit-guidance"), float,
          restore=saved("guidance_scale", specs.GUIDANCE)),
    Field("noise_form", lambda engine: gr.Radio(
        list(NOISE_FORMS), value=DEFAULTS.noise_form, label="Noise form",
        info="vp: sqrt(ab) x + sqrt(1-ab) eps, DDIM; ve: x + sigma eps, Euler", elem_id="sdedit-noise-form"), str,
          restore=saved("noise_form")),
    Field("seed", seed_box("sdedit-seed"), optional_whole, restore=saved("seed", specs.SEED)),
    Field("random_seed", lambda engine: gr.Checkbox(label="Random seed", value=False, elem_id="sdedit-random-seed"),
          in_spec=False, restore=lambda settings: False if settings.get("seed") is not None else None),
    Field("composite", lambda engine: gr.Checkbox(
        label="Paste original pixels outside the mask", value=DEFAULTS.composite,
        info="Masked runs: frozen latents come back exactly either way; the VAE blurs a few pixels across the mask "
             "border unless this is on.", elem_id="sdedit-composite"), bool, restore=saved("composite")),
)


def spec_from_values(values: Mapping[str, Any]) -> SDEditSpec:
    parsed = spec_values(FIELDS, values)
    parsed["seed"] = seed_from_form(parsed.get("seed"), bool(values.get("random_seed", False)))
    return SDEditSpec(**parsed)


# --------------------------------------------------------------------------------------------
# The tab


CSS = """
#sdedit-canvas button[aria-label="Clear canvas"] { display: none; }
"""


class SDEditTab(Tab):
    """The SDEdit tab (the shape of every tab: `parts.Tab`), with the Structure accordion (`structure_panel`):
    strokes plus an outline or layout of them."""

    name = "sdedit"

    def __init__(self, engine: Engine, inversion_state: gr.State | None = None) -> None:
        # imported here, not at the top: studio.ui.structure (which the panel reuses) imports this module's canvas
        # helpers
        from studio.ui.structure_panel import StructurePanel

        self.structure_panel = StructurePanel(self.name)
        self.fields = (*FIELDS, *self.structure_panel.fields)
        super().__init__(engine, inversion_state)

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form, native = self.form, int(self.engine.native_size)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                self.paint_on = gr.Radio(list(PAINT_LAYERS), value=PAINT_LAYERS[STROKES], label="Paint on",
                                         info="strokes: the guide's colours · mask: where the image may change "
                                              "(translucent magenta)", elem_id="sdedit-paint-on")
                self.canvas, self.prompt = form.place("canvas", "prompt")
                model_panel(self.engine, "sdedit-model")
                with gr.Row():
                    self.background = gr.Dropdown(list(BACKGROUNDS), value="blue", label="Background colour",
                                                  elem_id="sdedit-background", scale=2)
                    self.fill = gr.Button("Fill background", size="sm", elem_id="sdedit-fill", scale=1)
                    self.clear = gr.Button("Clear canvas", size="sm", elem_id="sdedit-clear", scale=1)
                self.go, self.stop = run_and_stop("Run SDEdit", "sdedit-btn", "sdedit-stop")
                form.place("strengths")
                for row in (("repeats", "steps"), ("guidance_scale", "noise_form"), ("seed", "random_seed", "composite")):
                    with gr.Row():
                        form.place(*row)
                self.structure_panel.place(form, self.engine)
                self.load_settings = load_settings_box("sdedit-load-settings")
            with gr.Column(scale=6, min_width=360):
                self.status = status_box("sdedit-status")
                self.preview = gr.Image(label=LABELS["preview"], format="png", interactive=False, height=200,
                                        buttons=["download", "fullscreen"], elem_id="sdedit-preview",
                                        elem_classes=["dcs-image"])
                self.strip = gr.Image(label=LABELS["strip"], format="png", interactive=False, height=300,
                                      buttons=["download", "fullscreen"], elem_id="sdedit-strip",
                                      elem_classes=["dcs-image"])
                self.table = gr.Dataframe(headers=TABLE_COLUMNS, label="Faithfulness (L2 to guide, 0-1 pixels) and "
                                          "realism (classifier confidence)", interactive=False, elem_id="sdedit-table")
                self.gallery = gr.Gallery(label=LABELS["gallery"], format="png", columns=3, height="auto",
                                          object_fit="contain", elem_id="sdedit-gallery", elem_classes=["dcs-gallery"])
                self.sending = gr.State(None)
                self.send_buttons = send_row("sdedit", own=self.name)
                self.reuse_seed = gr.Button("Reuse this result's seed", size="sm", elem_id="sdedit-reuse-seed")
                with gr.Row(equal_height=False):
                    self.compare = compare_view("sdedit-compare", "Guide | picked result (drag the handle)")
                    self.difference = gr.Image(label="Difference (|result - guide| x 4)", format="png",
                                               interactive=False, height=260, buttons=[], elem_id="sdedit-difference",
                                               elem_classes=["dcs-image"])
                self.downloads = downloads_box("sdedit-downloads")
                self.settings = settings_view("sdedit-settings", "Settings")
        self.picks = gr.State(None)  # (guide RGB, [(image, its settings), ...]) of the last result, for picking
        # every result of a run, labelled "previous run" / "partial" while a new run has not replaced it
        self.results = {component: component.label for component in (
            self.preview, self.strip, self.table, self.gallery, self.compare, self.difference, self.downloads,
            self.settings)}
        self.receives = [self.canvas, self.prompt]
        gr.Examples(
            [[str(STROKE_EXAMPLES / "red_blob_on_blue.png"), "a red circle on a blue background", "0.3, 0.5, 0.7"],
             [str(STROKE_EXAMPLES / "purple_wedge_black_box_on_yellow.png"), "", "0.4, 0.6, 0.8"]],
            form.components(["canvas", "prompt", "strengths"]), label="Stroke drawings", elem_id="sdedit-examples",
        )
        gr.Markdown(
            f"{model_line(self.engine)} · canvas {native}×{native} px. SDEdit (Meng et al. 2022): the guide "
            "is noised to t0 and denoised back; with a mask, frozen pixels are re-noised from the original at every "
            f"step and end exactly as they were. {KEYS_HELP}.", elem_id="sdedit-help",
        )

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, structure_picture: dict | None = None,
            image_prompt_reference: np.ndarray | None = None, **values: Any) -> Iterator[Outputs]:
        """SDEdit of the canvas: streams progress, then the strip, the table, the images and the settings.

        Parameters:
            structure_picture: the Structure panel's own picture (optional: its rows read this tab's image)
            image_prompt_reference: the image prompt's reference (with image_prompt_on)
        """
        # optional images (None by default, so API callers may leave them out): the panel reads them from values
        values.update(structure_picture=structure_picture, image_prompt_reference=image_prompt_reference)
        run: dict[str, Any] = {}  # what render needs of this run: the guide, and its settings for the previews

        def start(cancel: CancelToken) -> Iterator[Event]:
            spec, native = spec_from_values(values), int(self.engine.native_size)
            guide, mask, original = canvas_inputs(values.get("canvas"), native)
            structure, images = self.structure_panel.structure(values, guide, native)  # the rows read the guide
            spec = personalized(dataclasses.replace(spec, structure=structure), request)
            warn_about_limits(self.engine, [spec.prompt], concepts=spec.concepts)  # the guide is prepared to the model's size
            # the result's record is only known at the end: previews carry the spec (what a Load settings needs)
            run.update(guide=guide, preview_settings={**dataclasses.asdict(spec), "job": "sdedit"})
            return engine_job(self.engine, "sdedit", spec, guide, mask=mask, original=original,
                              structure_images=images, cancel=cancel)

        render, partial = remembering(lambda event: self.render(event, **run), [self.preview])
        yield from stream_job("sdedit", request, self.status, start, render, "SDEdit", partial=partial,
                              results=self.results)

    def render(self, event: Event, guide: np.ndarray | None = None,
               preview_settings: Mapping[str, Any] | None = None) -> Outputs | None:
        if isinstance(event, Preview):
            return {self.preview: tagged(event.images[0], preview_settings or {}, picture="preview", step=event.step)}
        if isinstance(event, SDEditResult):
            rows = [[r.t0, r.repeat, r.seed, round(r.l2_to_guide, 4),
                     None if r.realism is None else round(r.realism, 3)] for r in event.samples]
            masked = "masked" if event.masked else "unmasked"
            text = (f"Done in {event.timings['total']:.1f} s · {masked} · seed {event.seed} · "
                    f"{event.unet_evaluations} UNet evaluations")
            # each image's own settings: the run's, with the t0, repeat and seed that made it
            picks = [(image, {**event.settings, "seed": r.seed, "t0": r.t0, "repeat": r.repeat})
                     for image, r in zip(event.images, event.samples)]
            captions = [(tagged(image, settings), f"t0 {r.t0:g} · seed {r.seed}")
                        for (image, settings), r in zip(picks, event.samples)]
            names = [f"sdedit-t0-{r.t0:g}-seed-{r.seed}.png" for r in event.samples]
            pngs = [("sdedit-strip.png", event.strip, {**event.settings, "download": "strip"}),
                    *((name, image, settings) for name, (image, settings) in zip(names, picks))]
            guide = rgb(event.images[0]) if guide is None else guide
            return {self.status: done_html(text), self.strip: tagged(event.strip, event.settings, download="strip"),
                    self.table: rows, self.gallery: gr.update(value=captions, columns=min(len(captions), GALLERY_COLUMNS)),
                    self.downloads: DOWNLOADS.pngs(pngs),
                    self.picks: (guide, picks), **self.picked(guide, *picks[0]), self.settings: event.settings}
        return None

    def picked(self, guide: np.ndarray, image: Image.Image, settings: Mapping[str, Any]) -> Outputs:
        """The before/after of a result image against the guide, and what its send buttons carry."""
        return {self.compare: (Image.fromarray(guide).resize(image.size, Image.NEAREST), image),
                self.difference: difference(guide, image), self.sending: Sendable(rgb(image), settings)}

    def pick(self, picks: tuple | None, event: gr.SelectData) -> Outputs:
        if not picks or event.index is None:
            return {}
        guide, items = picks
        return self.picked(guide, *items[int(event.index)])

    def receive(self, item: Sendable) -> dict[Any, Any]:
        """An image sent here: the canvas's background (paint strokes over it), its prompt as the prompt."""
        return {self.canvas: canvas_of(item.image), self.prompt: item.prompt}

    def receive_mask(self, item: Sendable) -> dict[Any, Any]:
        """An attention map's mask sent here: the image as background, the mask painted on the mask layer."""
        if item.mask is None:
            raise gr.Error("This item carries no mask: send it with a 'Map as mask' button.")
        return {self.canvas: canvas_of(item.image, item.mask), self.prompt: item.prompt}

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        native = int(self.engine.native_size)
        self.run_event = self.go.click(
            self.run, inputs_kwargs=self.form.inputs, api_name="sdedit", **JOB_EVENT,
            outputs=[self.status, self.preview, self.strip, self.table, self.gallery, self.downloads, self.picks,
                     self.compare, self.difference, self.sending, self.settings])
        stop_button(self.stop, self.status, [self.run_event], tab="sdedit", api_name="sdedit_stop",
                    results=list(self.results))
        self.gallery.select(self.pick, self.picks, [self.compare, self.difference, self.sending],
                            **instant("sdedit-view"))
        self.paint_on.change(lambda layer: gr.update(brush=brush_for(layer)), self.paint_on, self.canvas,
                             js=SELECT_LAYER_JS, **instant("sdedit-view"))
        self.fill.click(lambda value, colour: filled(value, colour, native), [self.canvas, self.background],
                        self.canvas, **instant("sdedit-view"))
        # The editor's own Clear (hidden: CSS) leaves its empty state, drawn 1:1 (128 px on screen); this one leaves a
        # blank canvas that fits the box. (Its clear event cannot do it: an upload clears first and would be undone.)
        self.clear.click(lambda: blank_canvas(native), None, self.canvas, **instant("sdedit-view"))
        seed, random_seed = self.form.components(["seed", "random_seed"])
        self.reuse_seed.click(seed_of, self.settings, [seed, random_seed], **instant("sdedit-seed"))
        self.load_settings.upload(self.read_settings, self.load_settings, self.form.restorable,
                                  api_name="sdedit_read_settings", concurrency_id="settings")
        self.structure_panel.wire(self.form, self.engine)
