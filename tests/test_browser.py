"""The Generate tab in a real browser: headless Debian chromium driven by Playwright.

Protects what a user sees: typing a prompt, ticking attention maps and pressing Generate gives a
result image and an attention heat map (whose word can be picked afterwards); bad input shows the
error message and the tab keeps working.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from app_harness import PROMPT, launched_app

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 120_000  # a generation on a shared 2-core CPU


@pytest.fixture(scope="module")
def app_url(tiny_engine, tmp_path_factory):
    with launched_app(tiny_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install_browser.sh` (installs Debian's chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_tab(browser, app_url: str, tab: str | None = None, ready: str | None = None, height: int = 1100):
    """A new page on the app, switched to `tab` (None: the first tab) and, with `ready`, waited for
    until that selector shows. Every browser test opens its page here; the caller closes it."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    if tab is not None:
        page.get_by_role("tab", name=tab).click()
    if ready is not None:
        page.wait_for_selector(ready)
    return page


@pytest.fixture
def page(browser, app_url):
    page = open_tab(browser, app_url, ready="#prompt textarea", height=1000)
    yield page
    page.close()


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def image_loaded(page, selector: str, timeout_ms: int = 10_000) -> bool:
    """The image at `selector` has finished loading with real pixels (waits: an <img> appears before its data)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "selector => { const img = document.querySelector(selector); return img && img.complete && img.naturalWidth > 0; }",
            arg=selector, timeout=timeout_ms,
        )
    except PlaywrightTimeout:
        return False
    return True


def test_prompt_generate_shows_result_image_and_attention_heat_map(page):
    page.fill("#prompt textarea", PROMPT)
    set_slider(page, "steps", 4)
    page.check("#show-attention input")
    page.click("#generate-btn")

    page.wait_for_selector("#status [data-state=done]")
    assert "seed" in page.inner_text("#status")
    page.wait_for_selector("#gallery img")
    assert image_loaded(page, "#gallery img")
    page.wait_for_selector("#heatmap img")
    assert image_loaded(page, "#heatmap img")

    # The word picker lists the prompt's words; picking another one redraws the heat map.
    words = page.locator("#token-pick label")
    assert [w.strip() for w in words.all_inner_texts()] == PROMPT.split()
    before = page.get_attribute("#heatmap img", "src")
    page.locator("#token-pick label", has_text="circle").click()
    page.wait_for_function(
        "before => document.querySelector('#heatmap img')?.getAttribute('src') !== before", arg=before
    )
    assert page.locator("#settings").inner_text().count(PROMPT) >= 1


def test_bad_input_shows_the_error_and_the_tab_keeps_working(page):
    page.fill("#prompt textarea", "a red dragon")
    set_slider(page, "steps", 2)
    page.click("#generate-btn")
    error = page.locator(".toast-body", has_text="dragon")
    error.wait_for()

    page.fill("#prompt textarea", PROMPT)
    page.click("#generate-btn")
    page.wait_for_selector("#status [data-state=done]")
    assert image_loaded(page, "#gallery img")


def test_loading_a_png_restores_its_settings_into_the_form(page, tmp_path):
    from PIL import Image

    from studio.png_settings import save_png

    settings = {"prompt": "a small blue square", "negative_prompt": "red", "seed": 99, "steps": 7,
                "guidance_scale": 2.5, "scheduler": "euler", "width": 64, "height": 72, "batch_size": 3}
    png = save_png(Image.new("RGB", (64, 72)), settings, tmp_path / "made-here.png")
    page.locator("#load-png input[type=file]").set_input_files(str(png))

    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a small blue square'")
    assert page.input_value("#negative-prompt textarea") == "red"
    assert page.input_value("#seed input") == "99"
    assert not page.is_checked("#random-seed input")
    assert page.input_value("#steps input[type=number]") == "7"
    assert page.input_value("#height input[type=number]") == "72"
