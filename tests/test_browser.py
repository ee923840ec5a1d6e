"""The Generate tab in a real browser: headless Debian chromium driven by Playwright.

Protects what a user sees: typing a prompt, ticking attention maps and pressing Generate gives a
result image and an attention heat map (whose word can be picked afterwards); bad input shows the
error message and the tab keeps working; Stop says where the run stopped within a second and offers the partial
images, which are then what Send carries.
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


# --------------------------------------------------------------------------------------------
# Issue #16: Stop, results shown whole, settings in every download, layout

def rect(page, selector: str) -> dict:
    return page.locator(selector).first.evaluate(
        "e => { const b = e.getBoundingClientRect(); return {x: b.x, y: b.y, right: b.right, bottom: b.bottom, "
        "width: b.width, height: b.height}; }")


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["right"] <= outer["right"] + slack and inner["bottom"] <= outer["bottom"] + slack)


def overlaps(a: dict, b: dict) -> bool:
    return a["x"] < b["right"] and b["x"] < a["right"] and a["y"] < b["bottom"] and b["y"] < a["bottom"]


def downloaded_settings(page, link_selector: str, tmp_path) -> dict:
    """The settings in the PNG behind a download link of the page."""
    from studio.png_settings import read_png_settings

    href = page.get_attribute(link_selector, "href")
    target = tmp_path / f"download-{abs(hash(href))}.png"
    target.write_bytes(page.request.get(href).body())
    return read_png_settings(target)


def generate_and_wait(page, steps: int, batch: int = 1) -> None:
    page.fill("#prompt textarea", PROMPT)
    set_slider(page, "steps", steps)
    set_slider(page, "batch-size", batch)
    before = page.inner_text("#status")
    page.click("#generate-btn")
    page.wait_for_function("before => { const s = document.querySelector('#status [data-state=done]');"
                           " return s && s.innerText !== before; }", arg=before)


def test_stop_says_where_it_stopped_keeps_saying_it_and_offers_the_partial_result(page, tmp_path):
    import time

    generate_and_wait(page, steps=3)
    set_slider(page, "steps", 150)
    page.click("#generate-btn")
    # while the new run streams, the last run's gallery says it is stale
    page.wait_for_function("() => document.querySelector('#gallery label').innerText.includes('previous run')")
    # past this run's first preview (every 5 steps)
    page.wait_for_function("() => Number((document.querySelector('#status').innerText.match(/Step (\\d+)/) || [0, 0])[1]) > 6")
    page.click("#stop-btn")
    pressed = time.monotonic()
    page.wait_for_selector("#status [data-state=stopped]", timeout=5_000)
    assert time.monotonic() - pressed < 1.0
    stopped = page.inner_text("#status")
    assert stopped.startswith("Stopped after step ") and "of 150" not in stopped and "/ 150" in stopped
    time.sleep(3)
    assert page.inner_text("#status") == stopped  # the run's last step did not overwrite it

    assert "partial" in page.inner_text("#gallery label")
    caption = page.inner_text("#gallery .caption-label")
    assert caption.startswith("partial · step ") and "/ 150 · seed " in caption
    settings = downloaded_settings(page, "#downloads a", tmp_path)
    assert settings["prompt"] == PROMPT and settings["steps"] == 150
    assert 0 < settings["stopped_at_step"] < 150 and settings["seed"] == int(caption.rsplit("seed ", 1)[1])

    # the partial image picked is what Send carries (not the previous 3-step run's image at its place)
    page.locator("#gallery img").first.click()
    page.click("#generate-send-p2p")
    page.wait_for_selector("#p2p-seed", state="visible")
    page.wait_for_function("() => document.querySelector('#p2p-steps input[type=number]')?.value === '150'")
    assert page.input_value("#p2p-seed input") == str(settings["seed"])


def test_batch_results_are_whole_in_the_gallery_with_their_own_seeds_in_full_captions(page):
    for batch in (1, 3):
        generate_and_wait(page, steps=2, batch=batch)
        page.wait_for_function("n => document.querySelectorAll('#gallery img').length === n", arg=batch)
        assert image_loaded(page, "#gallery img")
        box = rect(page, "#gallery .grid-wrap")
        images = page.locator("#gallery img")
        for index in range(batch):
            shown = images.nth(index).evaluate("e => { const b = e.getBoundingClientRect(); return {x: b.x, y: b.y, "
                                               "right: b.right, bottom: b.bottom, width: b.width, height: b.height}; }")
            assert inside(shown, box), f"batch {batch}: image {index} {shown} is cut by its box {box}"
            assert shown["width"] > 128 and shown["height"] > 128  # small images are scaled up to the box
        captions = page.locator("#gallery .caption-label")
        texts = captions.all_inner_texts()
        seed = int(page.inner_text("#status").split("seed ")[1].split()[0])
        assert [text.split(" · ")[0] for text in texts] == [f"seed {seed + i}" for i in range(batch)]
        assert captions.evaluate_all("es => es.every(e => e.scrollWidth <= e.clientWidth)")


def test_width_height_batch_and_attention_maps_are_above_the_fold_with_attention_on(browser, app_url):
    page = open_tab(browser, app_url, ready="#prompt textarea", height=900)
    try:
        for elem_id in ("width", "height", "batch-size", "show-attention"):
            box = rect(page, f"#{elem_id}")
            assert box["bottom"] <= 900, f"#{elem_id} ends at {box['bottom']:.0f} px, below the 900 px fold"
        assert page.is_checked("#show-attention input")
        assert not page.locator("#weight-plot").is_visible()  # the global guidance accordion starts closed
    finally:
        page.close()


def test_picture_labels_leave_the_plot_and_the_images_uncovered(page):
    page.locator("#global-guidance").get_by_text("Global guidance").click()
    page.wait_for_selector("#weight-plot img")
    assert not overlaps(rect(page, "#weight-plot label"), rect(page, "#weight-plot img"))
    generate_and_wait(page, steps=2)
    for elem_id in ("preview", "heatmap"):
        page.wait_for_selector(f"#{elem_id} img")
        assert not overlaps(rect(page, f"#{elem_id} label"), rect(page, f"#{elem_id} img")), elem_id


def test_errors_of_several_tabs_leave_the_previews_uncovered(page):
    generate_and_wait(page, steps=2)
    for word in ("dragon", "unicorn"):
        page.fill("#prompt textarea", f"a red {word}")
        page.click("#generate-btn")
        page.locator(".toast-body", has_text=word).first.wait_for()
    page.get_by_role("tab", name="SDEdit").click()
    page.click("#sdedit-btn")  # no guide drawn: an error of another tab joins the toast
    page.locator(".toast-body", has_text="canvas").first.wait_for()
    page.get_by_role("tab", name="Generate").click()
    toast = rect(page, ".toast-wrap")
    for elem_id in ("preview", "heatmap"):
        assert not overlaps(toast, rect(page, f"#{elem_id} img")), f"the error toasts cover #{elem_id}"


def test_preview_and_heat_map_downloads_carry_the_settings_and_load_back(browser, app_url, page, tmp_path):
    generate_and_wait(page, steps=2)
    page.wait_for_function("() => document.querySelector('#heatmap a.download-link')")
    page.locator("#token-pick label", has_text="circle").click()
    # the map shown before the pick (the first word's, or the run's last) stays until the pick's map replaces it: a
    # change of the link alone may be the run's last map landing, so read the PNG until it is the picked word's
    for _ in range(40):
        heat = downloaded_settings(page, "#heatmap a.download-link", tmp_path)
        if heat["word"] == "circle":
            break
        page.wait_for_timeout(250)
    assert (heat["picture"], heat["word"], heat["prompt"], heat["steps"]) == ("heat map", "circle", PROMPT, 2)
    preview = downloaded_settings(page, "#preview a.download-link", tmp_path)
    assert preview["prompt"] == PROMPT and preview["seed"] == heat["seed"]

    # the heat map's PNG restores the form in a fresh page
    png = tmp_path / "heat-map.png"
    href = page.get_attribute("#heatmap a.download-link", "href")
    png.write_bytes(page.request.get(href).body())
    fresh = open_tab(browser, app_url, ready="#prompt textarea")
    try:
        fresh.locator("#load-png input[type=file]").set_input_files(str(png))
        fresh.wait_for_function("p => document.querySelector('#prompt textarea').value === p", arg=PROMPT)
        assert fresh.input_value("#seed input") == str(heat["seed"])
        assert fresh.input_value("#steps input[type=number]") == "2"
    finally:
        fresh.close()


@pytest.fixture(scope="module")
def classifier_app_url(tiny_classifier_engine, tmp_path_factory):
    with launched_app(tiny_classifier_engine, tmp_path_factory.mktemp("gradio-classifier")) as url:
        yield url


def test_the_classifier_schedule_reads_in_full(browser, classifier_app_url):
    page = open_tab(browser, classifier_app_url, ready="#prompt textarea")
    try:
        page.locator("#global-guidance").get_by_text("Global guidance").click()
        schedule = page.locator("#classifier-schedule input")
        schedule.wait_for()
        assert schedule.input_value() == "constant"
        assert schedule.evaluate("e => e.scrollWidth <= e.clientWidth"), "the schedule's text is clipped"
    finally:
        page.close()


def test_classifier_guidance_with_the_raw_gradient_runs_and_its_png_says_so(browser, classifier_app_url, tmp_path):
    page = open_tab(browser, classifier_app_url, ready="#prompt textarea")
    try:
        page.fill("#prompt textarea", PROMPT)
        set_slider(page, "steps", 2)
        page.locator("#global-guidance").get_by_text("Global guidance").click()
        page.locator("#classifier-target input").click()
        page.get_by_role("option", name="red object").click()
        normalise = page.locator("#classifier-normalise input[type=checkbox]")
        assert normalise.is_checked()  # the default: the normalised gradient
        normalise.uncheck()
        page.click("#generate-btn")
        page.wait_for_selector("#status [data-state=done]")
        guidance = downloaded_settings(page, "#downloads a", tmp_path)["classifier_guidance"]
        assert (guidance["target"], guidance["normalise"]) == ("red object", False)
    finally:
        page.close()


def test_the_model_panel_shows_the_words_and_sizes_it_draws_and_running_warns_outside_them(page):
    page.locator("#generate-model").get_by_text("128×128 px").click()
    words = page.locator("#generate-model-words")
    words.wait_for()
    assert "circle" in words.inner_text() and "star" in words.inner_text() and "never drawn" in words.inner_text()

    assert not page.locator("#size-note").is_visible()
    set_slider(page, "width", 256)
    page.locator("#size-note", has_text="trained at 128x128").wait_for()
    page.fill("#prompt textarea", "a big red star")
    set_slider(page, "steps", 1)
    page.click("#generate-btn")
    page.locator(".toast-body", has_text='"star"').first.wait_for()
    page.locator(".toast-body", has_text="at 256x128").first.wait_for()
    page.wait_for_selector("#status [data-state=done]")  # a warning, not an error: the run goes ahead


def test_the_picked_image_goes_to_p2p_with_its_own_seed(page):
    generate_and_wait(page, steps=2, batch=2)
    seed = int(page.inner_text("#status").split("seed ")[1].split()[0])
    page.locator("#gallery img").nth(1).click()  # the second image: seed + 1
    page.click("#generate-send-p2p")
    page.wait_for_function("p => document.querySelector('#p2p-source textarea, #p2p-source input')?.value === p",
                           arg=PROMPT)
    assert page.input_value("#p2p-seed input") == str(seed + 1)


def test_the_heat_map_of_a_word_goes_to_p2p_as_its_local_blend(page):
    generate_and_wait(page, steps=2)
    page.locator("#token-pick label", has_text="circle").click()
    page.wait_for_timeout(500)  # the heat map and the map offered follow the pick
    page.click("#generate-mask-p2p")
    page.wait_for_function("() => document.querySelector('#p2p-blend-words textarea, #p2p-blend-words input')"
                           "?.value === 'circle'")


@pytest.fixture(scope="module")
def structure_app_url(tiny_model_dir, tmp_path_factory):
    """The app on the tiny model with random-init controls (structure_harness): Generate shows its structure rows."""
    from structure_harness import structure_engine

    with launched_app(structure_engine(tiny_model_dir), tmp_path_factory.mktemp("gradio")) as url:
        yield url


def test_a_control_row_in_the_condition_table_runs_and_its_png_carries_the_structure(browser, structure_app_url,
                                                                                        tmp_path):
    from PIL import Image
    from structure_harness import square_map

    layout = tmp_path / "layout.png"
    Image.fromarray(square_map(20, 30, 60)).save(layout)
    page = open_tab(browser, structure_app_url, ready="#prompt textarea")
    page.fill("#prompt textarea", PROMPT)
    set_slider(page, "steps", 3)
    page.locator("#global-guidance").get_by_text("Global guidance").click()
    page.locator("#generate-row1-control input").click()
    page.get_by_role("option", name="layout · ControlNet").click()
    page.wait_for_selector("#generate-row1-map input[value='layout (colours)']:checked")  # the map it reads
    page.locator("#generate-row1-image input[type=file]").set_input_files(str(layout))
    page.wait_for_selector("#generate-structure-plot img", state="attached")  # the row's scale per step (below the fold)
    page.click("#generate-btn")
    page.wait_for_selector("#status [data-state=done]")
    settings = downloaded_settings(page, "#downloads a", tmp_path)
    assert [row["control"] for row in settings["structure"]["controls"]] == ["layout"]
    assert len(settings["structure_images"]["controls"]) == 1
    page.close()
