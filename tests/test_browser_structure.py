"""The Structure tab in a real browser (headless Debian chromium, Playwright), on the tiny model with random-init
controls (a layout ControlNet, an outline T2I-Adapter, an IP-Adapter).

Protects what a user sees: a blank canvas says so and the tab keeps working; an uploaded picture shows each row's
control map at once (before any run); a run gives a result whose download carries the structure; Stop says where
the run stopped; an image sent from Generate becomes the canvas the maps come from; a drawing is a row's map at once.
"""

from __future__ import annotations

import pytest
from app_harness import PROMPT, launched_app
from PIL import Image
from test_browser import (  # noqa: F401 (browser: fixture)
    browser,
    downloaded_settings,
    image_loaded,
    open_tab,
    set_slider,
)
from test_browser_editing import drag
from test_structure_ui import structure_engine  # noqa: F401 (fixture)

from studio.shapes.render import Scene, make_object, render

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_url(structure_engine, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    with launched_app(structure_engine, tmp_path_factory.mktemp("gradio")) as url:
        yield url


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("pictures") / "scene.png"
    Image.fromarray(render(Scene("blue", (make_object("circle", "red", "big", "left"),))).image).save(path)
    return path


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_an_uploaded_picture_shows_its_maps_then_runs_and_stops(browser, app_url, picture, tmp_path):
    page = open_tab(browser, app_url, "Structure", ready="#structure-canvas")
    page.fill("#structure-prompt textarea", PROMPT)
    set_slider(page, "structure-steps", 3)
    page.click("#structure-btn")  # a blank canvas first: the error says what to do
    page.locator(".toast-body", has_text="canvas is blank").wait_for()

    page.locator("#structure-canvas input[type=file]").set_input_files(str(picture))
    for row in (1, 2):  # each row's map shows before any run
        assert image_loaded(page, f"#structure-row{row}-map-view img"), row
    page.click("#structure-btn")
    page.wait_for_selector("#structure-status [data-state=done]")
    assert image_loaded(page, "#structure-gallery img")
    settings = downloaded_settings(page, "#structure-downloads a", tmp_path)
    assert [row["control"] for row in settings["structure"]["controls"]] == ["layout", "outline"]
    assert len(settings["structure_images"]["controls"]) == 2

    set_slider(page, "structure-steps", 150)
    page.click("#structure-btn")
    page.wait_for_function(
        "() => Number((document.querySelector('#structure-status').innerText.match(/Step (\\d+)/) || [0, 0])[1]) > 3")
    page.click("#structure-stop")
    page.wait_for_selector("#structure-status [data-state=stopped]", timeout=5_000)
    assert page.inner_text("#structure-status").startswith("Stopped after step ")
    page.close()


def test_an_image_sent_from_generate_is_the_canvas_every_map_comes_from(browser, app_url):
    page = open_tab(browser, app_url, ready="#prompt textarea")
    page.fill("#prompt textarea", PROMPT)
    set_slider(page, "steps", 2)
    page.click("#generate-btn")
    page.wait_for_selector("#status [data-state=done]")
    page.click("#generate-send-structure")
    page.wait_for_function("p => document.querySelector('#structure-prompt textarea')?.value === p", arg=PROMPT)
    for row in (1, 2):
        assert image_loaded(page, f"#structure-row{row}-map-view img"), row
    page.close()


def test_a_drawing_on_the_empty_canvas_is_a_rows_map_at_once(browser, app_url):
    page = open_tab(browser, app_url, "Structure", ready="#structure-canvas")
    editor = page.locator("#structure-canvas")
    editor.get_by_role("button", name="Brush").first.click()
    drag(page, editor.locator("canvas").first.bounding_box(), (0.3, 0.3), (0.6, 0.55))
    page.click("#structure-row2-map label:has-text('drawing')")
    assert image_loaded(page, "#structure-row2-map-view img")
    # nothing to say once the maps are in (drawn at the model's size); while they come, the box says "processing"
    page.wait_for_function("() => document.querySelector('#structure-row2-notes')?.innerText.trim() === ''",
                           timeout=10_000)
    page.close()


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_sdedit_strokes_plus_an_outline_of_them_run_under_a_control(browser, app_url, picture, tmp_path):
    page = open_tab(browser, app_url, "SDEdit", ready="#sdedit-canvas")
    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.5")
    set_slider(page, "sdedit-steps", 4)
    page.locator("#sdedit-canvas input[type=file]").set_input_files(str(picture))
    page.wait_for_timeout(1000)  # the editor draws the upload onto its canvas
    page.locator("#sdedit-structure").get_by_text("Structure: ControlNet").click()  # closed until asked
    page.locator("#sdedit-row1-control input").click()
    page.get_by_role("option", name="outline · T2I-Adapter").click()
    page.wait_for_selector("#sdedit-row1-map input[value='outline (Canny)']:checked")  # the map it reads
    page.click("#sdedit-btn")
    page.wait_for_selector("#sdedit-status [data-state=done]")
    settings = downloaded_settings(page, "#sdedit-downloads a", tmp_path)
    assert [row["control"] for row in settings["structure"]["controls"]] == ["outline"]
    assert len(settings["structure_images"]["controls"]) == 1
    page.close()
