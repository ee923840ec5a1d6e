"""The Inversion tab through its API (gradio_client, launched app, tiny random model) and its pieces.

Protects: /invert offers the picked inversion as an `.inversion.safetensors` file that `studio` reads and
/load_inversion loads back, and each reconstruction as a PNG carrying its settings; a run that has not
finished all its methods leaves the inversion the editing tabs use alone and offers what it finished when
stopped; the progress line counts the whole run in the words Stop repeats; a sent image becomes the upload
and its prompt the caption.
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from app_harness import launched_app
from gradio_client import Client, handle_file
from PIL import Image

from studio import cli, png_settings
from studio.events import InversionResult, Progress
from studio.inversion import InversionSpec
from studio.inversion.file import INVERSION_SUFFIX, load_inversion
from studio.ui import inversion
from studio.ui.parts import Sendable

CAPTION = "a big red circle on a blue background"


@pytest.fixture(scope="module")
def client(tiny_engine, tmp_path_factory):
    with launched_app(tiny_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.new("RGB", (128, 128), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def tab(tiny_engine):
    with gr.Blocks():
        return inversion.InversionTab(tiny_engine)


def test_invert_offers_the_inversion_file_and_reconstructions_with_settings(client, photo):
    status, gallery, table, errors, losses, pick, settings, inversion_file, downloads = client.predict(
        upload=handle_file(str(photo)), prompt=CAPTION, methods=["edict", "negative_prompt"], steps=2,
        api_name="/invert")
    assert "Done: 2 method(s)" in status
    assert inversion_file.endswith("negative_prompt" + INVERSION_SUFFIX)  # the pick prefers an editable inversion
    loaded = load_inversion(inversion_file)
    assert loaded.method == "negative_prompt" and loaded.prompt == CAPTION and loaded.steps == 2
    assert sorted(png_settings.read_png_settings(path)["method"] for path in downloads) == ["edict", "negative_prompt"]
    assert png_settings.read_png_settings(gallery[1]["image"])["job"] == "invert"  # gallery downloads carry them too

    loaded_pick, loaded_status = client.predict(handle_file(inversion_file), api_name="/load_inversion")
    assert "Loaded Negative-prompt inversion" in loaded_status


def test_the_downloaded_inversion_is_edited_by_the_studio_cli(client, photo, tiny_model_dir, tmp_path):
    """README: the picked inversion's file is what `studio edit p2p --inversion` reads."""
    *_, inversion_file, _ = client.predict(upload=handle_file(str(photo)), prompt=CAPTION, methods=["negative_prompt"],
                                           steps=2, api_name="/invert")
    assert cli.main(["--model", str(tiny_model_dir), "--device", "cpu", "edit", "p2p", "--inversion", inversion_file,
                     "--target", "a big red square on a blue background", "--edit", "word swap",
                     "--out", str(tmp_path / "p2p")]) == 0
    assert len(list((tmp_path / "p2p").glob("*.png"))) == 2  # the source and the edit


def test_a_run_that_has_not_finished_every_method_leaves_the_edited_inversion_alone(tab, tiny_engine):
    specs = [InversionSpec(CAPTION, method, steps=2) for method in ("ddim", "negative_prompt")]
    image = Image.new("RGB", (128, 128), (30, 70, 220))
    first = [e for e in tiny_engine.invert(specs[0], image) if isinstance(e, InversionResult)][0]
    shown = inversion.Shown(runs=specs)

    outputs = tab.render(first, shown)
    assert tab.gallery in outputs and tab.table in outputs  # the method done is shown ...
    assert not {tab.inversion_state, tab.inversions, tab.pick, tab.inversion_download} & set(outputs)  # ... not used
    assert set(tab.partial(shown)) == {tab.gallery, tab.table, tab.errors}  # Stop offers it
    assert tab.partial(inversion.Shown(runs=specs)) == {}


def test_progress_counts_the_whole_run_in_the_words_stop_repeats():
    def method(message):
        yield Progress(0, 4, "Waiting for the previous job to finish…")
        yield Progress(3, 4, message)

    told = [(e.step, e.total, e.message) for e in inversion.run_progress([method("DDIM inversion: inverting"),
                                                                           method("EDICT: inverting")])]
    assert told[1] == (3, 8, "method 1 of 2 · DDIM inversion: inverting · step 3 / 4")
    assert told[3] == (7, 8, "method 2 of 2 · EDICT: inverting · step 3 / 4")
    assert told[2][2] == "method 2 of 2 · Waiting for the previous job to finish…"


def test_a_sent_image_becomes_the_upload_and_its_prompt_the_caption(tab):
    sent = np.full((64, 64, 3), 120, np.uint8)
    received = tab.receive(Sendable(sent, {"job": "generate", "prompt": CAPTION, "seed": 3}))
    assert received[tab.prompt] == CAPTION
    assert png_settings.read_png_settings(received[tab.upload])["seed"] == 3
    np.testing.assert_array_equal(np.asarray(Image.open(received[tab.upload]).convert("RGB")), sent)


@pytest.mark.parametrize("endpoint", ["/invert", "/load_inversion", "/inversion_read_settings"])
def test_every_parameter_and_output_is_named(client, endpoint):
    """The API page names parameters after their fields and outputs after their labels (never param_N/value_N)."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    names = [p["parameter_name"] for p in api["parameters"]] + [r["label"] for r in api["returns"]]
    assert names and not [name for name in names if name.startswith(("param_", "value_"))], names


def test_the_newer_methods_settings_are_fields_that_reach_the_spec_and_restore_from_a_record(tab):
    form = tab.form
    assert (form["fixed_point_iterations"].value, form["seed"].value) == (3, 0)  # InversionSpec's defaults
    values = {"fixed_point_iterations": 2.0, "fixed_point_tolerance": 0.001, "seed": 5.0}  # as the browser sends them
    spec = InversionSpec("a red circle", "fixed_point", **inversion.spec_values(inversion.FIELDS, values))
    assert (spec.fixed_point_iterations, spec.fixed_point_tolerance, spec.seed) == (2, 0.001, 5)
    restored = form.restore({"job": "invert", "fixed_point_iterations": 2, "seed": 5})
    assert restored[form["fixed_point_iterations"]] == 2 and restored[form["seed"]] == 5
