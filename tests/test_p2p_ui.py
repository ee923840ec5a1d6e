"""The Prompt-to-Prompt tab through its API (gradio_client, launched app, tiny random model) and its
pure pieces. Protects: /p2p returns the source and edited images and the settings; bad input reaches
the caller as the gr.Error text; the token table's weights become re-weights."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_harness import launched_app
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from studio import png_settings
from studio.ui import p2p
from studio.ui.parts import Sendable

SOURCE, TARGET = "a big red circle on a blue background", "a big red square on a blue background"


@pytest.fixture(scope="module")
def client(tiny_engine, tmp_path_factory):
    with launched_app(tiny_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_p2p_endpoint_returns_source_and_edit_with_settings(client):
    images, status, mask, settings, compare, difference, downloads, hint = client.predict(
        api_name="/p2p", source_prompt=SOURCE, target_prompt=TARGET, edit="word swap", seed=2, steps=3,
        blend_words="circle, square", blend_start=0.0,
    )
    assert [item["caption"] for item in images] == ["source", "edited"]
    assert settings["target_prompt"] == TARGET and settings["blend_words"] == ["circle", "square"]
    assert mask is not None
    # every download carries the edit's settings and says which picture it is
    downloaded = {Path(path).name: png_settings.read_png_settings(path) for path in downloads}
    assert {"p2p-source.png", "p2p-edited.png", "p2p-blend-mask.png"} <= set(downloaded)
    assert any(name.startswith("p2p-heat-map-edited-") for name in downloaded)
    assert all(record["target_prompt"] == TARGET and record["seed"] == 2 for record in downloaded.values())
    assert downloaded["p2p-blend-mask.png"]["download"] == "blend mask"
    assert hint  # a hint, or what to change when an edit fails


def test_a_reweight_by_4_shows_in_the_difference_view(client):
    images, _, _, _, compare, difference, _, _ = client.predict(
        api_name="/p2p", source_prompt=SOURCE, target_prompt="a big (red:4) circle on a blue background",
        edit="refine", seed=2, steps=3)
    before, after = (np.asarray(Image.open(item["image"]).convert("RGB"), np.float32) for item in images)
    changed = np.abs(after - before).max(axis=2) > 0
    with Image.open(difference) as view:
        visible = np.asarray(view.convert("RGB")).max(axis=2) >= 8  # x4: a change of 2 levels reads as 8
    assert changed.any() and (visible == (np.abs(after - before).max(axis=2) >= 2)).all()


def test_p2p_bad_input_is_a_clear_error(client):
    with pytest.raises(AppError, match="not a word of the target prompt"):
        client.predict(api_name="/p2p", source_prompt=SOURCE, target_prompt=TARGET, edit="word swap", seed=2,
                       steps=3, reweights={"headers": list(p2p.TOKEN_COLUMNS), "data": [["green", "", 2.0]]})


def test_a_slider_sets_its_rows_weight():
    assert p2p.with_weight(1, -2.0, [["a", "a", 1.0], ["red", "red", 1.0]]) == [["a", "a", 1.0], ["red", "red", -2.0]]


def test_token_table_weights_become_reweights_beside_the_prompt_syntax():
    table = [["a", "a", 1.0], ["big", "big", 2.0], ["red", "red", 3.0], ["circle", "circle", 1.0]]
    assert p2p.reweights_from_table(table, "a big (red:3) circle") == (("big", 2.0),)


def test_p2p_edits_the_inversion_held_by_the_inversion_tabs_state(tiny_engine, tmp_path):
    """The tab reads the Inversion tab's gr.State: its prompt is the source, its x_T the start."""
    from studio.inversion import InversionSpec

    image = Image.new("RGB", (128, 128), (30, 70, 220))
    *_, inverted = tiny_engine.invert(InversionSpec(SOURCE, "negative_prompt", steps=3, guidance_scale=3.0), image)
    with gr.Blocks() as demo:
        p2p.P2PTab(tiny_engine, gr.State(inverted.inversion))
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path))
        images, status, mask, settings, *_ = client.predict(api_name="/p2p", source_prompt="", target_prompt=TARGET,
                                                            edit="word swap", use_inversion=True)
        assert settings["inversion"] == "negative_prompt" and settings["source_prompt"] == SOURCE
        assert settings["steps"] == 3 and settings["seed"] is None and len(images) == 2
    finally:
        demo.close()


@pytest.fixture(scope="module")
def tab(tiny_engine):
    with gr.Blocks():
        return p2p.P2PTab(tiny_engine, gr.State(None))


def test_a_generated_image_sent_here_sets_prompts_seed_steps_and_guidance(tab):
    sent = Sendable(np.zeros((8, 8, 3), np.uint8), {"job": "generate", "prompt": SOURCE, "seed": 7, "steps": 12,
                                                    "guidance_scale": 4.5})
    source, target, seed, steps, guidance, use_inversion, blend_words = tab.receives
    assert tab.receive(sent) == {source: SOURCE, target: SOURCE, seed: 7, steps: 12, guidance: 4.5,
                                 use_inversion: False}
    with pytest.raises(gr.Error, match="send this image to Inversion first"):
        tab.receive(Sendable(sent.image, {"job": "sdedit", "prompt": SOURCE}))
    assert tab.receive_mask(Sendable(sent.image, {}, word="circle", mask=np.ones((8, 8), bool))) == {
        blend_words: "circle"}


def test_previews_and_a_stopped_edits_partial_images_carry_the_runs_settings(tab, tiny_engine):
    shown = p2p.Shown(spec=p2p.P2PSpec(SOURCE, TARGET, seed=5, steps=4))
    shown.settings = p2p.run_settings(tiny_engine, shown.spec, None)
    pictures = [Image.new("RGB", (16, 16), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    live = tab.render(p2p.Preview(step=2, images=pictures), shown)[tab.images]
    stopped = [image for image, _ in tab.partial(shown)[tab.images]]
    for image, extra in [*((image, {"step": 2}) for image in live), *((image, {"stopped_at_step": 2}) for image in stopped)]:
        carried = png_settings.read_png_settings(image)
        assert (carried["job"], carried["picture"], carried["target_prompt"], carried["seed"]) == (
            "p2p", "preview", TARGET, 5)
        assert extra.items() <= carried.items()


def test_the_inversion_fixes_source_steps_and_guidance_and_unticking_gives_the_form_back(tiny_engine):
    from studio.inversion import InversionSpec

    *_, inverted = tiny_engine.invert(InversionSpec(SOURCE, "negative_prompt", steps=3, guidance_scale=3.0),
                                      Image.new("RGB", (128, 128), (30, 70, 220)))
    source, steps, guidance, kept = p2p.inversion_view(True, inverted.inversion, None, "my prompt", 25, 5.0)
    assert (source["value"], steps["value"], guidance["value"]) == (SOURCE, 3, 3.0)
    assert not (source["interactive"] or steps["interactive"] or guidance["interactive"])
    source, steps, guidance, kept = p2p.inversion_view(False, inverted.inversion, kept, SOURCE, 3, 3.0)
    assert (source["value"], steps["value"], guidance["value"]) == ("my prompt", 25, 5.0) and kept is None
    assert source["interactive"] and steps["interactive"] and guidance["interactive"]


def test_reuse_seed_takes_the_last_edits_seed():
    assert p2p.reuse_seed({"seed": 11}) == 11
    with pytest.raises(gr.Error, match="no seed"):
        p2p.reuse_seed({"seed": None})


@pytest.mark.parametrize("endpoint", ["/p2p", "/p2p_read_settings"])
def test_every_parameter_and_output_is_named(client, endpoint):
    """The API page names parameters after their fields and outputs after their labels (never param_N/value_N)."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    names = [p["parameter_name"] for p in api["parameters"]] + [r["label"] for r in api["returns"]]
    assert names and not [name for name in names if name.startswith(("param_", "value_"))], names
