"""The DiffEdit tab through its API (gradio_client, launched app, tiny random model).

Protects: the mask preview of a keep-size inversion is drawn on the image the mask belongs to, at the
inversion's own size (it was resized to the model's size while the mask kept the inversion's); a mask given on the
editor is the edit's, a tiny one gets the mask hint (not the fallback list); diffedit.png and diffedit-mask.png carry
the edit's record (job, prompts, seed, source image and mask hashes) and a diffedit.png restores the form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_harness import launched_app
from gradio_client import Client, handle_file
from PIL import Image

from studio.editing import hints
from studio.png_settings import read_png_settings
from studio.shapes.render import Scene, make_object, render
from studio.ui.diffedit import FIELDS, MASK_RGBA, edited_mask, editor_value

SOURCE, TARGET = "a big red circle on a blue background", "a big green circle on a blue background"


@pytest.fixture(scope="module")
def client(tiny_engine, tmp_path_factory):
    with launched_app(tiny_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_mask_preview_of_a_keep_size_inversion_is_at_the_inversions_size(client, tiny_engine, tmp_path):
    side = tiny_engine.native_size + 2 * tiny_engine.size_multiple  # not the model's size
    photo = tmp_path / "photo.png"
    Image.new("RGB", (side, side), (200, 30, 30)).save(photo)
    client.predict(upload=handle_file(str(photo)), keep_size=True, prompt=SOURCE, methods=["ddim"], steps=2,
                   api_name="/invert")  # the session's inversion, which the DiffEdit tab reads

    status, preview, editor, _hints, _downloads, _settings = client.predict(
        image=None, use_inversion=True, source_prompt=SOURCE, target_prompt=TARGET, probes=1, noise_samples=1,
        steps=4, api_name="/diffedit_mask")
    assert "Mask found" in status
    preview = preview["value"] if isinstance(preview, dict) else preview  # a labelled update (stream._labelled)
    with Image.open(preview) as shown, Image.open(editor["background"]) as background:
        assert shown.size == background.size == (side, side)


def test_a_tiny_given_mask_gets_the_mask_hint_and_the_downloads_carry_settings_that_load_back(client, tmp_path):
    scene = render(Scene("blue", (make_object("circle", "red", "big", "left"),)))
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    layer = np.zeros((*scene.image.shape[:2], 4), np.uint8)
    layer[40:48, 40:48] = MASK_RGBA  # 0.4 % of the image: below hints.MASK_TOO_SMALL
    Image.fromarray(layer).save(tmp_path / "mask.png")
    editor = {"background": handle_file(str(tmp_path / "scene.png")), "layers": [handle_file(str(tmp_path / "mask.png"))],
              "composite": None}
    status, _mask, _result, _compare, _difference, shown_hints, downloads, settings = client.predict(
        image=handle_file(str(tmp_path / "scene.png")), use_inversion=False, source_prompt=SOURCE,
        target_prompt=TARGET, steps=4, seed=3, composite=False, mask=editor, api_name="/diffedit")
    assert "(given)" in status, status
    assert hints.DIFFEDIT_MASK_SMALL.symptom in shown_hints and shown_hints != hints.DIFFEDIT_IF_FAILED, shown_hints

    paths = [entry if isinstance(entry, str) else entry.get("path") or entry.get("value") for entry in downloads]
    files = {Path(path).name: path for path in paths}
    edit, mask = read_png_settings(files["diffedit.png"]), read_png_settings(files["diffedit-mask.png"])
    for record in (edit, mask):
        assert record["job"] == "diffedit" and record["target_prompt"] == TARGET and record["seed"] == 3, record
        assert record["mask"] == settings["mask"] and record["source_image"] == settings["source_image"], record
    assert mask["download"] == "mask" and "download" not in edit

    restored = client.predict(handle_file(files["diffedit.png"]), api_name="/diffedit_read_settings")
    form = dict(zip([field.name for field in FIELDS if field.restore is not None], restored))
    assert (form["source_prompt"], form["target_prompt"], form["steps"], form["seed"], form["composite"]) == (
        SOURCE, TARGET, 4, 3, False), form


def test_the_found_mask_is_a_translucent_overlay_read_back_as_that_mask():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 2] = 200
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    value = editor_value(image, mask)
    assert 0 < value["layers"][0][15, 25, 3] < 255  # the image shows through the paint
    read, background = edited_mask(value)
    assert (read == mask).all() and (background == image).all()
