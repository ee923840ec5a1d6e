"""The Prompt-to-Prompt tab in a real browser (headless chromium, Playwright, tiny random model).

Protects what a user sees: typing source and target prompts fills the token table; Edit shows the
source and edited images side by side, the attention maps of both for a picked word and the
local-blend mask; a target word the model does not know shows the error message.
"""

from __future__ import annotations

import pytest
from app_harness import launched_app
from test_browser import browser, open_tab  # noqa: F401  (browser: the shared chromium fixture)

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
