"""The Structure tab's handlers, without a browser: the canvas -> each row's control map, the errors a user can act
on, and a run under two controls whose PNG carries the structure and loads back into the form.

Protects: one uploaded shapes picture gives a layout map (its objects' regions) and an outline map (their edges) at
once; a drawing is read as drawn; a map of another size is resized with a note saying so; a blank canvas, an empty
map, no control picked, an image prompt without its reference and a scale out of range each say what to change;
a run's result carries the structure spec and the maps' records, and Load settings restores the rows.
"""

from __future__ import annotations

import json
import warnings

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from studio import png_settings
from studio.errors import InvalidInputError
from studio.shapes.render import Scene, make_object, render
from studio.structure import maps
from studio.ui import structure
from studio.ui.sdedit import blank_canvas
from studio.ui.structure import (
    NO_CONTROL,
    derive_map,
    picture_canvas,
    row_field,
    structure_run,
)

SIZE = 128
SCENE = render(Scene("blue", (make_object("circle", "red", "big", "left"),
                              make_object("square", "yellow", "small", "right"))))


def form(**changes):
    """The tab's values as the browser sends them: two rows (a layout control, an outline control) on a picture."""
    values = dict(canvas=picture_canvas(SCENE.image), prompt="a big red circle on the left", negative_prompt="",
                  seed=3, random_seed=False, steps=2, guidance_scale=5.0, capture_attention=False,
                  image_prompt_on=False, image_prompt_reference=None)
    for row, (control, source) in enumerate((("layout", "layout (colours)"), ("outline", "outline (Canny)")), start=1):
        values.update({row_field(row, "control"): control, row_field(row, "map"): source, row_field(row, "scale"): 1.0,
                       row_field(row, "start"): 0.0, row_field(row, "stop"): 1.0, row_field(row, "mode"): "balanced",
                       row_field(row, "weight"): 2.0, row_field(row, "schedule"): "constant"})
    return {**values, **changes}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_one_picture_gives_each_row_its_own_map():
    spec, images = structure_run(form(), SIZE)
    assert [row.control for row in spec.structure.controls] == ["layout", "outline"]
    layout, outline = (image[..., 0] > 127 for image in images.controls)
    objects = SCENE.masks.any(axis=0)
    assert iou(layout, objects) > 0.9  # the layout is where the objects are
    boundary = maps.control_map(SCENE, "outline")[..., 0] > 0  # the 2 px inner contour of each object
    near_boundary = cv2.dilate(boundary.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert outline.sum() > 0.4 * boundary.sum() and (outline & near_boundary).sum() > 0.95 * outline.sum()


def test_a_drawing_is_read_as_drawn_and_another_size_is_resized_with_a_note():
    canvas = blank_canvas(256)  # white, as the editor starts
    strokes = np.zeros((256, 256, 4), np.uint8)
    strokes[60:200, 40:120] = (0, 0, 0, 255)
    canvas["layers"] = [strokes]
    picture = structure.canvas_picture(canvas, SIZE)
    drawn, notes = derive_map(picture, "drawing", SIZE)
    assert drawn.shape == (SIZE, SIZE, 3) and notes == ["The control map was 256x256; resized to 128x128."]
    expected = np.zeros((SIZE, SIZE), bool)
    expected[30:100, 20:60] = True
    assert ((drawn[..., 0] > 127) == expected).all()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(canvas=None), "canvas is blank"),
    ({row_field(1, "control"): NO_CONTROL, row_field(2, "control"): NO_CONTROL}, "Pick a control in at least one row"),
    (dict(image_prompt_on=True), "no reference image"),
    ({row_field(1, "scale"): "lots"}, "Row1 scale: 'lots' is not valid"),
])
def test_what_the_user_must_change_is_said(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        structure_run(form(**changes), SIZE)


def test_an_empty_map_names_its_row():
    faint = np.full((SIZE, SIZE, 3), 40, np.uint8)
    faint[10, 10:20] = 200  # one thin line: the layout's opening removes it, the map is empty
    with pytest.raises(InvalidInputError,
                       match=r"Row 1 \(layout, map from layout \(colours\)\): The control map is empty"):
        structure_run(form(canvas=picture_canvas(faint)), SIZE)


@pytest.fixture(scope="module")
def structure_engine(tiny_model_dir):
    """The tiny model with random-init controls attached: a layout ControlNet, an outline T2I-Adapter and an
    IP-Adapter (structure and errors need no trained weights)."""
    from studio.engine import Engine
    from studio.structure.adapters import new_control, new_ip_adapter

    engine = Engine(str(tiny_model_dir), device="cpu")
    model = engine.model
    model.controls = {name: new_control(model.unet, kind, name, name).to(model.device, model.dtype)
                      for name, kind in (("layout", "controlnet"), ("outline", "t2i_adapter"))}
    model.image_prompt = new_ip_adapter(model.unet, image_embed_dim=32).to(model.device, model.dtype)
    return engine


@pytest.fixture(scope="module")
def tab(structure_engine):
    with gr.Blocks():
        return structure.StructureTab(structure_engine)


def finished(outputs) -> dict:
    """Every output a handler streamed, the last value of each component."""
    last = {}
    for update in outputs:
        last.update(update)
    return last


def test_the_rows_start_on_the_loaded_controls_with_their_maps(tab):
    rows = [(tab.form[row_field(row, "control")].value, tab.form[row_field(row, "map")].value) for row in (1, 2)]
    assert rows == [("layout", "layout (colours)"), ("outline", "outline (Canny)")]
    choices = {value: label for label, value in tab.form[row_field(1, "control")].choices}
    assert choices["outline"] == "outline · T2I-Adapter · trained for outline maps" and NO_CONTROL in choices
    rows = {row_field(1, "control"): "layout", row_field(1, "map"): "layout (colours)",
            row_field(2, "control"): "outline", row_field(2, "map"): "drawing"}
    shown = tab.show_maps(picture_canvas(SCENE.image), **rows)
    assert shown[0].shape == (SIZE, SIZE, 3) and shown[1] == "" and shown[2].any()
    assert tab.show_maps(picture_canvas(SCENE.image), **{**rows, row_field(2, "control"): NO_CONTROL})[2:] == [
        None, "No control in this row."]  # what the run sends: nothing for this row
    assert tab.show_maps(blank_canvas(SIZE), **rows)[1].startswith(
        "The canvas is blank")


def test_a_run_under_two_controls_and_an_image_prompt_carries_them_and_loads_back(tab):
    reference = np.zeros((SIZE, SIZE, 3), np.uint8)
    reference[:] = (40, 40, 200)
    last = finished(tab.run(None, **form(image_prompt_on=True, image_prompt_reference=reference, image_prompt_scale=0.5,
                                         **{row_field(2, "mode"): "channel", row_field(2, "stop"): 0.5})))
    settings = last[tab.settings]
    rows = settings["structure"]["controls"]
    assert [(row["control"], row["mode"], row["stop"]) for row in rows] == [("layout", "balanced", 1.0),
                                                                           ("outline", "channel", 0.5)]
    assert settings["structure"]["image_prompt"]["scale"] == 0.5
    assert len(settings["structure_images"]["controls"]) == 2 and settings["structure_images"]["image_prompt"]
    record = png_settings.read_png_settings(last[tab.downloads][0])
    assert record["structure"] == json.loads(json.dumps(settings["structure"]))  # (JSON: tuples become lists)
    restored = tab.form.restore(record)
    values = {name: restored[tab.form[name]] for name in (row_field(2, "mode"), row_field(2, "stop"),
                                                          "image_prompt_on", "image_prompt_scale", "seed")}
    assert values == {row_field(2, "mode"): "channel", row_field(2, "stop"): 0.5, "image_prompt_on": True,
                      "image_prompt_scale": 0.5, "seed": 3}


def test_a_scale_out_of_range_is_refused_before_model_work(tab):
    with pytest.raises(gr.Error, match="Control 1: Control scale must be between 0 and 2"):
        finished(tab.run(None, **form(**{row_field(1, "scale"): 3.0})))


def test_a_png_made_here_is_read_as_this_tabs_and_a_plain_one_as_generates():
    from studio.ui.parts import record_tab

    assert record_tab({"job": "generate", "structure": {"controls": [{"control": "layout"}]}}) == "structure"
    assert record_tab({"job": "generate", "structure": None}) == "generate"
    assert record_tab({"job": "sdedit"}) == "sdedit"


def test_the_plot_follows_the_rows_and_keeps_its_last_picture_while_a_row_is_wrong(tab):
    plan_values = {name: value for name, value in form(**{row_field(2, "mode"): "channel"}).items()
                   if name in structure.PLAN_FIELDS}
    plot = tab.plot_structure(**plan_values)
    assert isinstance(plot, Image.Image) and plot.width > 0
    assert tab.plot_structure(**{**plan_values, row_field(1, "control"): NO_CONTROL,
                                 row_field(2, "control"): NO_CONTROL}) is None
    unchanged = tab.plot_structure(**{**plan_values, row_field(1, "start"): 0.8, row_field(1, "stop"): 0.2})
    assert unchanged == gr.skip()


@pytest.fixture(scope="module")
def endpoints(structure_engine, tmp_path_factory):
    from app_harness import launched_app
    from gradio_client import Client

    with launched_app(structure_engine, tmp_path_factory.mktemp("gradio")) as url:
        return Client(url, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]


@pytest.mark.parametrize("endpoint", ["/structure", "/structure_maps", "/structure_read_settings"])
def test_every_parameter_and_output_of_the_structure_endpoints_is_named(endpoints, endpoint):
    api = endpoints[endpoint]
    names = [p["parameter_name"] for p in api["parameters"]] + [r.get("label") for r in api["returns"]]
    assert all(names) and not [name for name in names if name.startswith(("param_", "value_"))], names


def test_history_names_the_structure_tab_and_its_pngs_load_in_generate_without_a_warning(tab, structure_engine, tmp_path):
    from studio.png_settings import save_png
    from studio.ui.generate import GenerateTab
    from studio.ui.history import caption

    settings = {"job": "generate", "prompt": "a big red circle", "seed": 3,
                "structure": {"controls": [{"control": "layout"}]}}
    assert caption("structure", settings, 0, 1) == "Structure · a big red circle · seed 3"
    assert caption("generate", settings, 0, 1) == "Generate · a big red circle · seed 3"
    assert caption("diffedit", {"job": "diffedit_mask", "seed": 1}, 0, 1) == "DiffEdit mask · seed 1"

    png = tmp_path / "structure.png"
    save_png(Image.new("RGB", (8, 8)), settings, png)
    with gr.Blocks():
        generate = GenerateTab(structure_engine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate.read_settings(str(png))
        tab.read_settings(str(png))
    assert not [w for w in caught if "was made in the" in str(w.message)]
