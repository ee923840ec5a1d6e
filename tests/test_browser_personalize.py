"""The Personalize tab in a real browser (headless Debian chromium, Playwright), on the tiny model.

Protects what a user sees: training without pictures says what to do and the tab keeps working; rendered pictures
train a word with a live loss plot and samples, the concept shows in the session's table, and the word then works
in the Generate tab of the same page (its PNG names the concept); Stop keeps a checkpoint that joins the table.
"""

from __future__ import annotations

import pytest
from app_harness import launched_app
from test_browser import (  # noqa: F401 (browser: fixture)
    browser,
    downloaded_settings,
    image_loaded,
    open_tab,
    set_slider,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_url(tiny_model_dir, tmp_path_factory):
    """An engine of its own: the concepts trained here stay out of the other browser tests' engine."""
    from studio.engine import Engine

    with launched_app(Engine(str(tiny_model_dir), device="cpu"), tmp_path_factory.mktemp("gradio")) as url:
        yield url


def rendered(page) -> None:
    page.click("#personalize-render")
    page.wait_for_function("() => document.querySelectorAll('#personalize-images img').length >= 6")


def test_rendered_pictures_teach_a_word_that_then_works_in_generate(browser, app_url, tmp_path):
    page = open_tab(browser, app_url, "Personalize", ready="#personalize-images")
    page.click("#personalize-btn")  # no pictures: the error says what to do
    page.locator(".toast-body", has_text="no images").wait_for()
    page.get_by_label("LoRA", exact=True).check()  # LoRA's own fields show, with its recipe's layers
    page.wait_for_selector("#personalize-lora-layers", state="visible")
    assert page.input_value("#personalize-lora-layers input") == "ResNet convolutions"
    page.get_by_label("Textual Inversion", exact=True).check()
    page.wait_for_selector("#personalize-lora-layers", state="hidden")

    rendered(page)
    set_slider(page, "personalize-steps", 6)
    set_slider(page, "personalize-sample-every", 3)
    page.click("#personalize-btn")
    page.wait_for_selector("#personalize-status [data-state=done]")
    assert image_loaded(page, "#personalize-loss img") and image_loaded(page, "#personalize-samples img")
    page.wait_for_function(
        "() => document.querySelector('#personalize-concept-table')?.innerText.includes('embedding')")
    assert "works in every tab" in page.inner_text("#personalize-concepts-note")

    page.get_by_role("tab", name="Generate").click()
    page.fill("#prompt textarea", "a red star on a blue background")
    set_slider(page, "steps", 2)
    page.click("#generate-btn")
    page.wait_for_selector("#status [data-state=done]")
    settings = downloaded_settings(page, "#downloads a", tmp_path)
    assert [(c["name"], c["kind"]) for c in settings["concepts"]] == [("star", "embedding")]
    page.close()


@pytest.mark.slow  # a second training in the browser; tests/test_personalize_training.py stops one without it
def test_stop_keeps_the_checkpoint_and_it_joins_the_sessions_concepts(browser, app_url):
    page = open_tab(browser, app_url, "Personalize", ready="#personalize-images")
    page.fill("#personalize-concept textarea, #personalize-concept input", "heart")
    rendered(page)
    set_slider(page, "personalize-steps", 1000)
    page.click("#personalize-btn")
    page.wait_for_function(
        "() => Number((document.querySelector('#personalize-status').innerText.match(/step (\\d+)/) || [0, 0])[1]) > 2")
    page.click("#personalize-stop")
    page.wait_for_selector("#personalize-status [data-state=stopped]", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#personalize-concept-table')?.innerText.includes('heart')",
                           timeout=30_000)
    assert "works in every tab" in page.inner_text("#personalize-concepts-note")
    page.close()
