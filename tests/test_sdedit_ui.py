"""The SDEdit and DiffEdit tabs through their API (gradio_client, launched app, tiny random model) and their pure
helpers.

Protects: every parameter and output of /sdedit, /diffedit_mask and /diffedit is named (no param_N, no value_N);
SDEdit's downloads carry each image's own settings and load back into the form (/sdedit_read_settings); what
receive_mask puts on the canvas is read back as that image and that mask; Fill background keeps the paint.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_harness import launched_app
from gradio_client import Client, handle_file
from PIL import Image

from studio.png_settings import read_png_settings
from studio.shapes.vocabulary import COLOURS
from studio.ui.sdedit import blank_canvas, canvas_inputs, canvas_of, filled

EDITING_ENDPOINTS = ("/sdedit", "/diffedit_mask", "/diffedit")


@pytest.fixture(scope="module")
def client(tiny_engine, tmp_path_factory):
    with launched_app(tiny_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.mark.parametrize("endpoint", EDITING_ENDPOINTS)
def test_every_parameter_and_output_of_the_editing_endpoints_is_named(client, endpoint):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    parameters = [p["parameter_name"] for p in api["parameters"]]
    assert not [name for name in parameters if name.startswith("param_")], parameters
    labels = [output.get("label") for output in api["returns"]]
    assert all(labels) and not [label for label in labels if label.startswith("value_")], labels


def test_sdedit_downloads_carry_each_images_settings_and_load_back(client, tmp_path):
    guide = np.empty((128, 128, 3), np.uint8)
    guide[:] = COLOURS["blue"]
    guide[40:90, 40:90] = COLOURS["red"]
    Image.fromarray(guide).save(tmp_path / "guide.png")
    canvas = {"background": handle_file(str(tmp_path / "guide.png")), "layers": [], "composite": None}
    outputs = client.predict(canvas=canvas, prompt="a red square", strengths="0.5", repeats=2, steps=4, seed=7,
                             random_seed=False, api_name="/sdedit")
    status, downloads, settings = outputs[0], outputs[5], outputs[-1]
    assert "Done" in status and settings["seed"] == 7
    files = [entry if isinstance(entry, str) else entry.get("path") or entry.get("value") for entry in downloads]
    records = [read_png_settings(path) for path in files]
    assert records[0]["job"] == "sdedit" and records[0]["download"] == "strip"
    assert [record["seed"] for record in records[1:]] == [7, 8]  # repeat k is seed + k: each image its own

    restored = client.predict(handle_file(files[2]), api_name="/sdedit_read_settings")
    form = dict(zip(["prompt", "strengths", "repeats", "steps", "guidance_scale", "noise_form", "seed",
                     "random_seed", "composite"], restored))
    assert form["prompt"] == "a red square" and form["strengths"] == "0.5" and form["seed"] == 8
    assert form["steps"] == 4 and form["repeats"] == 2 and form["random_seed"] is False


def test_a_mask_received_on_the_canvas_is_read_back_as_that_image_and_mask():
    image = np.zeros((128, 128, 3), np.uint8)
    image[..., 2] = 200
    mask = np.zeros((128, 128), bool)
    mask[20:60, 30:90] = True
    guide, read_mask, original = canvas_inputs(canvas_of(image, mask), 128)
    assert (guide == image).all() and (original == image).all()
    assert (read_mask == mask).all()
    # the mask layer is translucent: an overlay, not paint that covers the image
    assert 0 < canvas_of(image, mask)["layers"][1][25, 40, 3] < 255


def test_fill_background_keeps_the_strokes_and_the_mask():
    strokes = np.zeros((128, 128, 4), np.uint8)
    strokes[10:20, 10:20] = (255, 0, 0, 255)
    value = filled({"background": blank_canvas(128)["background"], "layers": [strokes, strokes * 0]}, "yellow", 128)
    guide, mask, original = canvas_inputs(value, 128)
    assert tuple(original[100, 100]) == COLOURS["yellow"]
    assert tuple(guide[15, 15]) == (255, 0, 0) and mask is None
