"""The History tab, send-to-tab and the keyboard shortcuts in a real browser (headless Debian chromium).

Protects: Ctrl+Enter runs the visible tab's main action and Esc stops it, with the stop kept on screen; every
result of every tab lands in the History tab with its settings, survives switching tabs, can be compared with
another (slider and difference) and downloaded as a PNG carrying its settings; a result sent from History to
SDEdit arrives on its canvas and the SDEdit tab opens.
"""

from __future__ import annotations

import pytest
from app_harness import PROMPT
from test_browser import app_url, browser, image_loaded, open_tab, set_slider  # noqa: F401 (shared fixtures)

from studio import png_settings

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser, app_url):  # noqa: F811
    page = open_tab(browser, app_url, ready="#prompt textarea", height=1000)
    yield page
    page.close()


def generate_with_keyboard(page, prompt: str, steps: int = 2) -> None:
    page.fill("#prompt textarea", prompt)
    set_slider(page, "steps", steps)
    page.locator("#prompt textarea").press("Control+Enter")


def test_ctrl_enter_runs_and_esc_stops_and_the_stop_stays(page):
    generate_with_keyboard(page, PROMPT)
    page.wait_for_selector("#status [data-state=done]")

    set_slider(page, "batch-size", 8)
    generate_with_keyboard(page, PROMPT, steps=150)  # long enough to stop mid-run
    page.wait_for_selector("#status [data-state=running]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#status [data-state=stopped]", timeout=3000)
    page.wait_for_timeout(3000)
    assert page.locator("#status [data-state=stopped]").count() == 1
    assert page.inner_text("#status").startswith("Stopped after step")


def test_history_keeps_every_result_to_pick_compare_download_and_send(page, tmp_path):
    for prompt in (PROMPT, "a small blue square"):
        generate_with_keyboard(page, prompt)
        page.wait_for_function(
            "prompt => document.querySelector('#settings')?.innerText.includes(prompt)", arg=prompt)
    page.get_by_role("tab", name="SDEdit").click()  # switching tabs loses nothing
    page.get_by_role("tab", name="History").click()

    page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 2")
    captions = page.locator("#history-gallery").inner_text()
    assert captions.index("a small blue square") < captions.index(PROMPT)  # newest first

    page.locator("#history-gallery img").nth(1).click()
    page.wait_for_function(
        "prompt => document.querySelector('#history-settings')?.innerText.includes(prompt)", arg=PROMPT)
    assert image_loaded(page, "#history-picked img")
    with page.expect_download() as download:
        page.locator("#history-downloads a").first.click()
    saved = tmp_path / "picked.png"
    download.value.save_as(saved)
    assert png_settings.read_png_settings(saved)["prompt"] == PROMPT

    page.locator("#history-compare-with input").click()
    page.get_by_role("option", name="a small blue square").click()
    page.wait_for_selector("#history-compare img")
    assert image_loaded(page, "#history-difference img")

    page.click("#history-send-sdedit")
    page.wait_for_selector("#sdedit-canvas", state="visible")
    page.wait_for_function("() => document.querySelector('#sdedit-prompt textarea')?.value.length > 0")
    assert page.input_value("#sdedit-prompt textarea") == PROMPT
