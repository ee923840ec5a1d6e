"""The SDEdit and DiffEdit tabs in a real browser (headless Debian chromium, Playwright), on the embedded model.

Protects what a user sees: an uploaded guide on the SDEdit canvas gives a result strip and its table; a blank
canvas says so and the tab keeps working; DiffEdit previews the mask, then edits; equal prompts explain that
the mask would be empty, and the tab keeps working.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_harness import launched_app
from PIL import Image
from test_browser import browser, image_loaded, open_tab  # noqa: F401 (browser: the shared fixture)

from studio.shapes.render import Scene, make_object, render
from studio.shapes.vocabulary import COLOURS

pytestmark = pytest.mark.browser

SOURCE = "a big red circle on a blue background"
TARGET = "a big green circle on a blue background"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from studio.engine import Engine

    with launched_app(Engine(None, device="cpu"), tmp_path_factory.mktemp("gradio")) as url:
        yield url


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    blob = np.empty((128, 128, 3), np.uint8)
    blob[:] = COLOURS["blue"]
    blob[36:92, 30:86] = COLOURS["red"]  # a rough red square-ish blob
    Image.fromarray(blob).save(folder / "strokes.png")
    scene = render(Scene("blue", (make_object("circle", "red", "big", "left"),)))
    Image.fromarray(scene.image).save(folder / "scene.png")
    return folder


def test_sdedit_on_an_uploaded_guide_gives_a_result_strip(browser, app_url, pictures):
    page = open_tab(browser, app_url, "SDEdit")
    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.4, 0.6")
    page.fill("#sdedit-prompt textarea, #sdedit-prompt input", "a red square on a blue background")
    # a blank canvas first: the error says what to do, the tab keeps working
    page.click("#sdedit-btn")
    page.locator(".toast-body", has_text="canvas is blank").wait_for()

    page.locator("#sdedit-canvas input[type=file]").set_input_files(str(pictures / "strokes.png"))
    page.wait_for_timeout(1000)  # the editor draws the upload onto its canvas
    page.click("#sdedit-btn")
    page.wait_for_selector("#sdedit-status [data-state=done]")
    page.wait_for_selector("#sdedit-strip img")
    assert image_loaded(page, "#sdedit-strip img")
    table = page.inner_text("#sdedit-table")
    assert "0.4" in table and "0.6" in table
    page.close()


def test_diffedit_previews_the_mask_then_edits(browser, app_url, pictures):
    page = open_tab(browser, app_url, "DiffEdit")
    page.locator("#diffedit-image input[type=file]").set_input_files(str(pictures / "scene.png"))
    page.wait_for_selector("#diffedit-image img")
    page.fill("#diffedit-source textarea", SOURCE)
    page.fill("#diffedit-target textarea", SOURCE)
    page.click("#diffedit-mask-btn")
    page.locator(".toast-body", has_text="mask would be empty").wait_for()

    page.fill("#diffedit-target textarea", TARGET)
    page.click("#diffedit-mask-btn")
    page.wait_for_selector("#diffedit-status [data-state=done]")
    assert "Mask found" in page.inner_text("#diffedit-status")
    assert image_loaded(page, "#diffedit-mask-preview img")

    page.click("#diffedit-edit-btn")
    page.wait_for_function("() => document.querySelector('#diffedit-status')?.innerText.includes('Done in')")
    page.wait_for_selector("#diffedit-result img")
    assert image_loaded(page, "#diffedit-result img")
    assert "given" in page.inner_text("#diffedit-status")  # the found mask, from the editor, was used
    page.close()


def test_a_stroke_example_fills_the_canvas_and_runs(browser, app_url):
    page = open_tab(browser, app_url, "SDEdit")
    page.locator("#sdedit-examples button, #sdedit-examples td").first.click()
    page.wait_for_function("() => document.querySelector('#sdedit-prompt textarea, #sdedit-prompt input')?.value"
                           ".includes('red circle')")
    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.5")
    page.click("#sdedit-btn")
    page.wait_for_selector("#sdedit-status [data-state=done]")
    assert image_loaded(page, "#sdedit-strip img")
    page.close()


def drag(page, box: dict, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A brush stroke from `start` to `end`, given as fractions of the canvas box."""
    page.mouse.move(box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1], steps=8)
    page.mouse.up()


def test_strokes_and_a_painted_mask_run_a_masked_sdedit(browser, app_url, pictures):
    page = open_tab(browser, app_url, "SDEdit")
    editor = page.locator("#sdedit-canvas")
    editor.locator("input[type=file]").set_input_files(str(pictures / "strokes.png"))
    page.wait_for_timeout(1000)
    editor.get_by_role("button", name="Brush").first.click()
    box = editor.locator("canvas").first.bounding_box()
    drag(page, box, (0.2, 0.2), (0.3, 0.25))  # on the "strokes" layer, selected first
    editor.get_by_text("strokes").last.click()  # the layer picker
    editor.get_by_text("mask").last.click()
    drag(page, box, (0.7, 0.7), (0.78, 0.75))
    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.5")
    page.click("#sdedit-btn")
    page.wait_for_selector("#sdedit-status [data-state=done]")
    assert "· masked ·" in page.inner_text("#sdedit-status")
    assert image_loaded(page, "#sdedit-strip img")
    page.close()
