"""The Prompt-to-Prompt tab in a real browser (headless chromium, Playwright, tiny random model).

Protects what a user sees: typing source and target prompts fills the token table; Edit shows the
source and edited images side by side, the attention maps of both for a picked word and the
local-blend mask; a target word the model does not know shows the error message. Stop says where the edit
stopped within a second, keeps saying it and offers the last previews as the partial result; the pair shows whole,
the sliders' range labels read in full, a re-weight shows in the before/after and difference views beside a hint;
a generated image sent here fills the form; a PNG's settings restore the form.
"""

from __future__ import annotations

import time

import pytest
from app_harness import PROMPT, launched_app
from PIL import Image
from playwright.sync_api import expect
from test_browser import browser, image_loaded, open_tab, set_slider  # noqa: F401  (browser: the shared chromium fixture)

from studio import png_settings

pytestmark = pytest.mark.browser

SOURCE, TARGET = "a big red circle on a blue background", "a big red square on a blue background"


@pytest.fixture(scope="module")
def app_url(tiny_engine, tmp_path_factory):
    with launched_app(tiny_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield url


@pytest.fixture
def page(browser, app_url):  # noqa: F811
    page = open_tab(browser, app_url, "Prompt-to-Prompt", ready="#p2p-source textarea")
    yield page
    page.close()


def fill_prompts(page, target: str = TARGET) -> None:
    page.locator("#p2p-source textarea").fill(SOURCE)
    page.locator("#p2p-target textarea").fill(target)
    page.get_by_label("word swap").check()


def test_edit_shows_both_images_maps_and_mask(page):
    fill_prompts(page)
    page.wait_for_function("document.querySelector('#p2p-tokens').innerText.includes('square')")
    page.locator("#p2p-steps input[type=number]").fill("3")
    page.locator("#p2p-steps input[type=number]").press("Enter")
    page.locator("#p2p-blend-words textarea").fill("circle, square")
    page.locator("#p2p-blend-start input[type=number]").fill("0")
    page.locator("#p2p-blend-start input[type=number]").press("Enter")
    page.locator("#p2p-go").click()
    page.wait_for_selector("#p2p-status .done")
    assert page.locator("#p2p-images img").count() == 2
    for view in ("#p2p-source-map img", "#p2p-target-map img", "#p2p-mask img"):
        page.wait_for_selector(view)
    assert page.locator("#p2p-word input[value=square]").is_checked()  # the swapped word is shown first


def test_unknown_target_word_shows_the_message(page):
    fill_prompts(page, "a big red dog on a blue background")
    page.locator("#p2p-go").click()
    page.get_by_text("Target prompt: ", exact=False).and_(page.get_by_text("'dog'", exact=False)).first.wait_for()


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_stop_says_where_it_stopped_keeps_it_and_offers_the_previews(page):
    fill_prompts(page)
    set_slider(page, "p2p-steps", 150)
    page.locator("#p2p-go").click()
    page.wait_for_selector("#p2p-images img")  # a preview is in
    page.locator("#p2p-stop").click()
    stopped = page.locator("#p2p-status [data-state=stopped]")
    expect(stopped).to_contain_text("Stopped after", timeout=1_000)
    said = stopped.inner_text()
    time.sleep(3)
    assert page.locator("#p2p-status").inner_text() == said
    expect(page.locator("#p2p-images")).to_contain_text("partial: stopped")
    assert "partial · step" in page.locator("#p2p-images").inner_text()


def test_a_reweight_shows_whole_in_before_after_and_difference_with_readable_sliders(page):
    page.locator("#p2p-source textarea").fill(SOURCE)
    page.locator("#p2p-target textarea").fill("a big (red:4) circle on a blue background")
    set_slider(page, "p2p-steps", 3)
    page.locator("#p2p-go").click()
    page.wait_for_selector("#p2p-status [data-state=done]")
    page.wait_for_function("() => [...document.querySelectorAll('#p2p-images .grid-wrap img')]"
                           ".length === 2 && [...document.querySelectorAll('#p2p-images .grid-wrap img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    boxes = page.evaluate("""() => {
        const wrap = document.querySelector('#p2p-images .grid-wrap').getBoundingClientRect();
        return [...document.querySelectorAll('#p2p-images .grid-wrap img')].map(img => {
            const r = img.getBoundingClientRect();
            return {inside: r.top >= wrap.top - 1 && r.bottom <= wrap.bottom + 1, width: r.width, height: r.height};
        });
    }""")
    assert all(box["inside"] and min(box["width"], box["height"]) > 128 for box in boxes), boxes
    assert image_loaded(page, "#p2p-compare img") and image_loaded(page, "#p2p-difference img")
    assert page.locator("#p2p-hint").inner_text().strip()  # a hint, or what to change when an edit fails

    for slider, low, high in (("#p2p-steps", "1", "150"), ("#p2p-guidance", "0", "30")):
        labels = page.evaluate("""slider => [...document.querySelectorAll(`${slider} .min_value, ${slider} .max_value`)]
            .map(l => ({text: l.innerText, whole: l.scrollWidth <= l.clientWidth
                        && l.getBoundingClientRect().right <= document.querySelector(slider).getBoundingClientRect().right}))""",
                               slider)
        assert [label["text"] for label in labels] == [low, high], labels
        assert all(label["whole"] for label in labels), labels


def test_a_generated_image_sent_here_fills_the_form(page):
    page.get_by_role("tab", name="Generate").click()
    page.fill("#prompt textarea", PROMPT)
    set_slider(page, "steps", 2)
    page.click("#generate-btn")
    page.wait_for_selector("#status [data-state=done]")
    page.locator("#generate-send-p2p").click()
    expect(page.locator("#p2p-source textarea")).to_have_value(PROMPT)
    expect(page.locator("#p2p-target textarea")).to_have_value(PROMPT)
    expect(page.locator("#p2p-steps input[type=number]")).to_have_value("2")


def test_loading_an_edits_png_restores_the_form(page, tmp_path):
    record = {"job": "p2p", "source_prompt": SOURCE, "target_prompt": TARGET, "edit": "word swap", "seed": 5,
              "steps": 9, "guidance_scale": 4.0, "cross_stop": 0.3, "blend_words": ["circle", "square"],
              "word_windows": [{"word": "square", "start": 0.0, "stop": 0.5}]}
    png = png_settings.save_png(Image.new("RGB", (128, 128)), record, tmp_path / "p2p-edited.png")
    page.locator("#p2p-load-settings input[type=file]").set_input_files(str(png))
    expect(page.locator("#p2p-target textarea")).to_have_value(TARGET)
    expect(page.locator("#p2p-source textarea")).to_have_value(SOURCE)
    expect(page.locator("#p2p-steps input[type=number]")).to_have_value("9")
    expect(page.locator("#p2p-seed input")).to_have_value("5")
    expect(page.locator("#p2p-blend-words textarea")).to_have_value("circle, square")
    assert page.locator("#p2p-word-windows").inner_text().count("square") == 1
