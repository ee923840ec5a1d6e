"""The DiffEdit tab through its API (gradio_client, launched app, tiny random model).

Protects: the mask preview of a keep-size inversion is drawn on the image the mask belongs to, at the
inversion's own size (it was resized to the model's size while the mask kept the inversion's).
"""

from __future__ import annotations

import pytest
from app_harness import launched_app
from gradio_client import Client, handle_file
from PIL import Image

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
