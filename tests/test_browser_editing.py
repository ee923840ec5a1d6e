"""The SDEdit and DiffEdit tabs in a real browser (headless Debian chromium, Playwright), on the embedded model.

Protects what a user sees: an uploaded guide on the SDEdit canvas gives a result strip and its table; a blank
canvas says so and the tab keeps working; DiffEdit previews the mask, then edits; equal prompts explain that
the mask would be empty, and the tab keeps working; results are whole and scaled up; Stop's partial previews
download with the run's settings; a new run labels the last one's results "previous run"; an attention map sent
from Generate becomes SDEdit's mask layer.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from app_harness import launched_app
from PIL import Image
from test_browser import (  # noqa: F401 (browser: fixture)
    browser,
    downloaded_settings,
    image_loaded,
    open_tab,
    set_slider,
)

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


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
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
    for shown in ("#sdedit-strip", "#sdedit-gallery"):
        whole = shown_whole(page, shown)
        assert whole["inside"] and min(whole["width"], whole["height"]) > 128, (shown, whole)  # upscaled, whole
    seed = re.search(r"seed (\d+)", page.inner_text("#sdedit-status"))[1]
    page.fill("#sdedit-seed input", str(int(seed) + 5))
    page.check("#sdedit-random-seed input")
    page.click("#sdedit-reuse-seed")  # back to the seed the shown result was made with, and not a random one
    page.wait_for_function("s => document.querySelector('#sdedit-seed input')?.value === s", arg=seed)
    assert not page.is_checked("#sdedit-random-seed input")
    page.close()


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
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
    for shown in ("#diffedit-result", "#diffedit-mask-preview", "#diffedit-difference"):
        whole = shown_whole(page, shown)
        assert whole["inside"] and min(whole["width"], whole["height"]) > 128, (shown, whole)  # upscaled, whole
    page.locator("#diffedit-hints").wait_for()
    files = "".join(page.inner_text("#diffedit-downloads").split())
    assert "diffedit.png" in files and "diffedit-mask.png" in files, files

    page.fill("#diffedit-seed input", "1")
    page.click("#diffedit-reuse-seed")  # back to the seed the shown result was made with
    page.wait_for_function("() => document.querySelector('#diffedit-seed input')?.value === '0'")

    # a new edit: until it replaces them, the finished edit's results say whose they are
    set_slider(page, "diffedit-steps", 150)
    page.click("#diffedit-edit-btn")
    for result in ("#diffedit-compare", "#diffedit-difference", "#diffedit-downloads", "#diffedit-settings"):
        page.wait_for_function("sel => document.querySelector(sel)?.innerText.includes('previous run')", arg=result)
    page.click("#diffedit-stop")
    page.wait_for_selector("#diffedit-status [data-state=stopped]")
    page.close()


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
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


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
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


def stopped_and_kept(page, status: str, stopped_after: str) -> str:
    """Press the tab's Stop: within ~2 s the status says "Stopped after <stopped_after>…", and 3 s later it still
    does (the step in flight at Stop may still be counted). Returns the final status text."""
    page.click(f"#{status.split('-')[0]}-stop")
    page.wait_for_selector(f"#{status} [data-state=stopped]", timeout=2_000)
    assert page.inner_text(f"#{status}").startswith(f"Stopped after {stopped_after}"), page.inner_text(f"#{status}")
    page.wait_for_timeout(3_000)
    said = page.inner_text(f"#{status}")
    assert page.locator(f"#{status} [data-state=stopped]").count() == 1, said
    assert said.startswith(f"Stopped after {stopped_after}"), said
    return said


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_diffedit_stop_says_where_find_mask_and_edit_stopped(browser, app_url, pictures, tmp_path):
    page = open_tab(browser, app_url, "DiffEdit")
    page.locator("#diffedit-image input[type=file]").set_input_files(str(pictures / "scene.png"))
    page.wait_for_selector("#diffedit-image img")
    page.fill("#diffedit-source textarea", SOURCE)
    page.fill("#diffedit-target textarea", TARGET)
    for elem_id, value in (("diffedit-probes", 10), ("diffedit-samples", 16), ("diffedit-steps", 150),
                           ("diffedit-edit-strength", 1)):
        set_slider(page, elem_id, value)

    page.click("#diffedit-mask-btn")
    page.wait_for_function("() => document.querySelector('#diffedit-status')?.innerText.includes('Mask: probe')")
    stopped_and_kept(page, "diffedit-status", "mask: probe")
    assert "partial" in page.inner_text("#diffedit-mask-preview")  # the mask so far, labelled as what it is
    settings = downloaded_settings(page, "#diffedit-mask-preview a.download-link", tmp_path)
    assert (settings["job"], settings["probes"], settings["picture"]) == ("diffedit", 10, "mask preview"), settings

    page.click("#diffedit-edit-btn")
    page.wait_for_function("() => /Edit: step [1-9][0-9]/.test(document.querySelector('#diffedit-status')?.innerText)")
    said = stopped_and_kept(page, "diffedit-status", "edit: step")
    assert said.endswith("the partial result is shown"), said
    assert "partial" in page.inner_text("#diffedit-result")  # the last preview, labelled as what it is
    assert image_loaded(page, "#diffedit-result img")
    settings = downloaded_settings(page, "#diffedit-result a.download-link", tmp_path)
    assert (settings["job"], settings["target_prompt"], settings["steps"]) == ("diffedit", TARGET, 150), settings
    assert settings["picture"] == "preview" and settings["step"] > 0, settings
    page.close()


def test_sdedit_stop_says_the_step_its_counter_showed(browser, app_url, pictures, tmp_path):
    page = open_tab(browser, app_url, "SDEdit")
    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.9, 1")
    set_slider(page, "sdedit-steps", 150)
    set_slider(page, "sdedit-repeats", 4)
    page.locator("#sdedit-canvas input[type=file]").set_input_files(str(pictures / "strokes.png"))
    page.wait_for_timeout(1500)
    page.click("#sdedit-btn")
    page.wait_for_function("() => /t0 0.9: step [1-9][0-9]/.test(document.querySelector('#sdedit-status')?.innerText)")
    running = page.inner_text("#sdedit-status")
    said = stopped_and_kept(page, "sdedit-status", "t0 0.9: step")
    counter = re.search(r"t0 (\S+): step (\d+) / (\d+)", said)
    assert counter, said
    assert counter[3] == "135"  # the counter of its own t0: round(0.9 * 150) steps, not the whole run's
    assert int(counter[2]) >= int(re.search(r"step (\d+)", running)[1])
    assert "partial" in page.inner_text("#sdedit-preview") and image_loaded(page, "#sdedit-preview img")
    settings = downloaded_settings(page, "#sdedit-preview a.download-link", tmp_path)  # the preview's own download
    assert (settings["job"], settings["strengths"], settings["steps"]) == ("sdedit", [0.9, 1], 150), settings
    assert settings["picture"] == "preview" and settings["step"] > 0, settings
    page.close()


def shown_whole(page, selector: str) -> dict:
    """The <img> at `selector` inside its component's box, and its rendered size."""
    return page.evaluate("""sel => {
        const box = document.querySelector(sel).getBoundingClientRect();
        const r = document.querySelector(sel + ' img').getBoundingClientRect();
        return {inside: r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1
                        && r.bottom <= box.bottom + 1, width: r.width, height: r.height};
    }""", selector)


def canvas_pixel(page, box: dict, at: tuple[float, float]) -> tuple[int, int, int]:
    """The colour on screen at `at` (fractions of `box`), as the user sees the canvas."""
    import io

    x, y = box["x"] + box["width"] * at[0], box["y"] + box["height"] * at[1]
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": x - 1, "y": y - 1, "width": 3, "height": 3})))
    return tuple(int(c) for c in np.asarray(shot.convert("RGB"))[1, 1])


def zoom_text(editor) -> str:
    return editor.get_by_text(re.compile(r"^\d+%$")).first.inner_text()


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_sdedit_fill_background_mask_overlay_and_clear_keep_the_canvas(browser, app_url):
    page = open_tab(browser, app_url, "SDEdit")
    editor = page.locator("#sdedit-canvas")
    page.locator("#sdedit-background input").fill("blue")
    page.keyboard.press("Enter")
    page.click("#sdedit-fill")
    page.wait_for_timeout(1500)
    zoom = zoom_text(editor)
    image_box = editor.locator("canvas").first.bounding_box()
    # the image sits centred in the canvas box: a square of the box's height
    side = image_box["height"] * 0.8
    square = {"x": image_box["x"] + (image_box["width"] - side) / 2, "y": image_box["y"] + image_box["height"] * 0.1,
              "width": side, "height": side}
    assert canvas_pixel(page, square, (0.1, 0.1)) == COLOURS["blue"]  # the background is filled

    page.locator("#sdedit-paint-on label", has_text="mask").click()
    page.wait_for_function(  # the switch has picked the mask layer in the editor
        "() => document.querySelector(\"#sdedit-canvas button[aria-label='Show Layers']\")?.innerText.trim()"
        ".startsWith('mask')")
    page.wait_for_timeout(2500)  # and its brush (the same event's output; slow on an app's first event)
    editor.get_by_role("button", name="Brush").first.click()
    drag(page, square, (0.3, 0.5), (0.7, 0.5))
    page.wait_for_timeout(500)
    painted = canvas_pixel(page, square, (0.5, 0.5))
    # translucent magenta over blue: red and blue both up, and not the opaque magenta of a stroke
    assert painted[0] > 60 and painted[2] > 200 and painted != (255, 0, 255), painted
    assert editor.locator("button[aria-label='Show Layers']").inner_text().strip().startswith("mask")

    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.5")
    page.click("#sdedit-btn")
    page.wait_for_selector("#sdedit-status [data-state=done]")
    assert "· masked ·" in page.inner_text("#sdedit-status")  # the mask layer, not the strokes, got the paint

    page.click("#sdedit-clear")
    page.wait_for_timeout(1500)
    assert zoom_text(editor) == zoom  # still fitted to the box, not drawn 1:1 at 128 px
    page.close()


def test_diffedit_shows_the_inversion_it_edits_greyed(browser, app_url, pictures):
    page = open_tab(browser, app_url, "Inversion")
    page.locator("#inversion-upload input[type=file]").set_input_files(str(pictures / "scene.png"))
    page.fill("#inversion-prompt textarea", SOURCE)
    page.get_by_label("Null-text inversion").uncheck()  # DDIM alone
    set_slider(page, "inversion-steps", 10)
    page.click("#inversion-btn")
    page.wait_for_selector("#inversion-status [data-state=done]")

    page.get_by_role("tab", name="DiffEdit").click()
    page.click("#diffedit-use-inversion input")
    page.wait_for_function("s => document.querySelector('#diffedit-source textarea')?.value === s", arg=SOURCE)
    assert page.locator("#diffedit-source textarea").is_disabled()
    assert page.input_value("#diffedit-steps input[type=number]") == "10"
    assert page.locator("#diffedit-steps input[type=number]").is_disabled()
    assert image_loaded(page, "#diffedit-image img")  # the image to edit is the inversion's
    page.click("#diffedit-use-inversion input")
    page.wait_for_function("() => !document.querySelector('#diffedit-source textarea')?.disabled")
    page.close()


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_an_sdedit_result_sent_to_diffedit_is_the_image_to_edit(browser, app_url, pictures):
    page = open_tab(browser, app_url, "SDEdit")
    page.fill("#sdedit-prompt textarea, #sdedit-prompt input", "a red square on a blue background")
    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.5")
    # the form first, then the upload: an edit of the form just after an upload can leave the canvas blank
    page.locator("#sdedit-canvas input[type=file]").set_input_files(str(pictures / "strokes.png"))
    page.wait_for_timeout(1500)  # the editor draws the upload onto its canvas
    page.click("#sdedit-btn")
    page.wait_for_selector("#sdedit-status [data-state=done]")
    assert image_loaded(page, "#sdedit-compare img")  # guide | result, before and after

    page.click("#sdedit-send-diffedit")
    page.wait_for_function("() => document.querySelector('#diffedit-source textarea')?.value"
                           " === 'a red square on a blue background'")
    assert image_loaded(page, "#diffedit-image img")
    page.close()


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_an_attention_map_becomes_sdedits_mask_layer(browser, app_url):
    page = open_tab(browser, app_url)
    page.fill("#prompt textarea", SOURCE)
    set_slider(page, "steps", 10)
    page.click("#generate-btn")
    page.wait_for_selector("#status [data-state=done]")
    page.locator("#token-pick label", has_text="circle").click()
    page.click("#generate-mask-sdedit")

    page.wait_for_selector("#sdedit-canvas", state="visible")
    page.wait_for_function("s => document.querySelector('#sdedit-prompt textarea, #sdedit-prompt input')?.value === s",
                           arg=SOURCE)
    page.wait_for_timeout(1000)  # the editor draws the image and its layers
    page.fill("#sdedit-t0 textarea, #sdedit-t0 input", "0.5")
    page.click("#sdedit-btn")
    page.wait_for_selector("#sdedit-status [data-state=done]")
    assert "· masked ·" in page.inner_text("#sdedit-status")  # the map's mask arrived on the mask layer
    page.close()
