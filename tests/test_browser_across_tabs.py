"""What crosses tabs, in a real browser (headless Debian chromium): the History tab, send to tab, the keyboard.

Protects: Ctrl+Enter runs the visible tab's main action and Esc stops it, with the stop kept on screen; every
result of every tab lands in the History tab with its settings, survives switching tabs, can be compared with
another (slider and difference) and downloaded as a PNG carrying its settings; a result sent from History to
SDEdit arrives on its canvas and the SDEdit tab opens; a word's attention map becomes DiffEdit's mask, which the
edit then uses (attention map -> editable mask -> local edit), and a generated image sent to Prompt-to-Prompt
arrives with its prompt and its own seed. Every tab's help says Ctrl+Enter and Esc, Ctrl+Enter runs the
Prompt-to-Prompt edit, whose result History keeps under its tab's name and "Download all" offers.
"""

from __future__ import annotations

import re

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
    page.wait_for_function("() => /Step \\d+ \\//.test(document.querySelector('#status')?.innerText)")
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
    assert page.locator("#history-gallery").inner_text().count("Generate") == 2  # short captions: the tab
    page.locator("#history-gallery img").nth(0).click()  # newest first; picked, its full caption is its label
    page.wait_for_function(
        "() => document.querySelector('#history-picked')?.innerText.includes('a small blue square')")

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


def test_an_attention_map_becomes_diffedits_mask_and_the_edit_uses_it(page):
    generate_with_keyboard(page, PROMPT)
    page.wait_for_selector("#status [data-state=done]")
    page.locator("#token-pick label", has_text="circle").click()
    page.click("#generate-mask-diffedit")

    page.wait_for_selector("#diffedit-mask-editor", state="visible")
    page.wait_for_function("() => document.querySelector('#diffedit-source textarea')?.value.length > 0")
    assert page.input_value("#diffedit-source textarea") == PROMPT
    page.fill("#diffedit-target textarea", PROMPT.replace("red", "blue"))
    page.click("#diffedit-edit-btn")
    page.wait_for_selector("#diffedit-status [data-state=done]")
    assert "(given)" in page.inner_text("#diffedit-status")  # the sent mask, not one found by Stage I


def test_a_generated_image_sent_to_p2p_arrives_with_its_prompt_and_its_own_seed(page):
    set_slider(page, "batch-size", 2)
    generate_with_keyboard(page, PROMPT)
    page.wait_for_selector("#status [data-state=done]")
    seed = int(re.search(r"\bseed\W+(\d+)", page.locator("#settings").inner_text()).group(1))
    page.locator("#gallery img").nth(1).click()  # the second item: drawn from seed + 1
    page.click("#generate-send-p2p")

    page.wait_for_selector("#p2p-source", state="visible")
    page.wait_for_function("() => document.querySelector('#p2p-source textarea')?.value.length > 0")
    assert page.input_value("#p2p-source textarea") == PROMPT
    assert page.input_value("#p2p-seed input") == str(seed + 1)


@pytest.mark.parametrize("tab, help_text", [("Generate", "#model-info"), ("Inversion", "#inversion-help"),
                                            ("SDEdit", "#sdedit-help"), ("DiffEdit", "#diffedit-help"),
                                            ("Prompt-to-Prompt", "#p2p-help")])
def test_every_tab_says_ctrl_enter_runs_and_esc_stops(page, tab, help_text):
    page.get_by_role("tab", name=tab, exact=True).click()
    help_block = page.locator(help_text)
    help_block.wait_for(state="visible")
    assert "Ctrl+Enter runs · Esc stops" in help_block.inner_text()


def test_ctrl_enter_in_p2p_runs_the_edit_and_history_keeps_it_for_download_all(page, tmp_path):
    page.get_by_role("tab", name="Prompt-to-Prompt").click()
    set_slider(page, "p2p-steps", 3)
    page.locator("#p2p-target textarea").fill("a big red square on a blue background")
    source = page.locator("#p2p-source textarea")  # no submit of its own: only the keyboard shortcut runs from here
    source.fill("a big red circle on a blue background")
    source.press("Control+Enter")
    page.wait_for_selector("#p2p-status [data-state=done]")

    page.get_by_role("tab", name="History").click()
    page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length >= 1")
    assert "Prompt-to-Prompt" in page.locator("#history-gallery").inner_text()  # the edit, under its tab's name
    shown = page.locator("#history-gallery img").count()
    page.click("#history-download-all")
    links = page.locator("#history-downloads a")
    page.wait_for_function("count => document.querySelectorAll('#history-downloads a').length === count", arg=shown)
    with page.expect_download() as download:
        links.first.click()
    saved = tmp_path / "history.png"
    download.value.save_as(saved)
    assert png_settings.read_png_settings(saved)["job"] == "p2p"
