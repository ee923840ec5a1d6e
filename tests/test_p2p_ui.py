"""The Prompt-to-Prompt tab through its API (gradio_client, launched app, tiny random model) and its
pure pieces. Protects: /p2p returns the source and edited images and the settings; bad input reaches
the caller as the gr.Error text; the token table's weights become re-weights."""

from __future__ import annotations

import pytest
from app_harness import launched_app
from gradio_client import Client
from gradio_client.exceptions import AppError

from studio.ui import p2p

SOURCE, TARGET = "a big red circle on a blue background", "a big red square on a blue background"


@pytest.fixture(scope="module")
def client(tiny_engine, tmp_path_factory):
    with launched_app(tiny_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_p2p_endpoint_returns_source_and_edit_with_settings(client):
    images, status, mask, settings = client.predict(
        api_name="/p2p", source_prompt=SOURCE, target_prompt=TARGET, edit="word swap", seed=2, steps=3,
        blend_words="circle, square", blend_start=0.0,
    )
    assert [item["caption"] for item in images] == ["source", "edited"]
    assert settings["target_prompt"] == TARGET and settings["blend_words"] == ["circle", "square"]
    assert mask is not None


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
    import gradio as gr
    from PIL import Image

    from studio.inversion import InversionSpec

    image = Image.new("RGB", (128, 128), (30, 70, 220))
    *_, inverted = tiny_engine.invert(InversionSpec(SOURCE, "negative_prompt", steps=3, guidance_scale=3.0), image)
    with gr.Blocks() as demo:
        p2p.P2PTab(tiny_engine, gr.State(inverted.inversion))
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path))
        images, status, mask, settings = client.predict(api_name="/p2p", source_prompt="", target_prompt=TARGET,
                                                        edit="word swap", use_inversion=True)
        assert settings["inversion"] == "negative_prompt" and settings["source_prompt"] == SOURCE
        assert settings["steps"] == 3 and settings["seed"] is None and len(images) == 2
    finally:
        demo.close()
