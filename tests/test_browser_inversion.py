"""The Inversion tab in a real browser (headless chromium, Playwright, tiny random model).

Protects what a user sees: uploading a photo shows it as the model will see it and says what was
changed; inverting with two methods fills the comparison table (ceiling row + one row per method) and
shows the original beside both reconstructions, the error plot and the pick for editing; "keep the image's
size" inverts at the upload's own size, without resampling it; a file that is
not an image shows a clear error. Stop says where the run stopped within a second and keeps saying it, the
stopped run leaves the inversion the editing tabs use alone and the last run's loss plot is gone; six images
show whole in the gallery with full captions, the table's headers are readable, its last column inside its box,
the plots carry no label chip and the guidance slider says why it starts low; the picked inversion downloads as a file that a fresh page loads and Prompt-to-Prompt edits, showing the
inversion's caption, steps and guidance greyed; a PNG's settings restore the form.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image
from playwright.sync_api import expect
from test_browser import app_url, browser, image_loaded, open_tab  # noqa: F401  (the shared app and chromium fixtures)

from studio import png_settings
from studio.inversion import METHOD_LABELS

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser, app_url):  # noqa: F811  (the imported fixtures)
    page = open_tab(browser, app_url, "Inversion", ready="#inversion-prompt textarea", height=1200)
    yield page
    page.close()


def test_upload_invert_two_methods_shows_table_and_reconstructions(page, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGBA", (200, 150), (200, 30, 30, 255)).save(photo)
    page.locator("#inversion-upload input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#inversion-prepared img")
    page.get_by_text("centre-cropped 200x150 to 150x150", exact=False).first.wait_for()

    page.locator("#inversion-prompt textarea").fill("a big red circle")
    page.locator("#inversion-steps input[type=number]").fill("3")
    page.locator("#inversion-steps input[type=number]").press("Enter")
    tick_only(page, "DDIM inversion", "EDICT")
    page.locator("#inversion-btn").click()
    page.wait_for_selector("#inversion-status [data-state=done]")

    table = page.locator("#inversion-table").inner_text()
    for row in ("VAE encode", "DDIM inversion", "EDICT"):
        assert row in table
    assert page.locator("#inversion-gallery img").count() == 3  # original + two reconstructions
    page.wait_for_selector("#inversion-errors img")
    # edits start from the editable one: EDICT's coupled steps are not sampled by Prompt-to-Prompt
    assert "DDIM inversion" in page.locator("#inversion-pick input").input_value()


def test_a_file_that_is_not_an_image_shows_the_error(page, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.locator("#inversion-upload input[type=file]").set_input_files(str(text))
    page.get_by_text("not an image this app can read", exact=False).first.wait_for()


def test_keep_size_inverts_the_image_at_its_own_size(page, tmp_path):
    photo = tmp_path / "wide.png"
    Image.new("RGB", (200, 160), (30, 200, 30)).save(photo)
    page.locator("#inversion-upload input[type=file]").set_input_files(str(photo))
    page.get_by_text("resized 160x160 to 128x128", exact=False).first.wait_for()  # the model's size by default
    page.locator("#inversion-keep-size input").check()
    note = page.locator("#inversion-note")
    expect(note).not_to_contain_text("resized", timeout=60_000)  # the preview is redone at the image's own size
    assert "centre-cropped 200x160 to 160x160" in note.inner_text()

    page.locator("#inversion-steps input[type=number]").fill("2")
    page.locator("#inversion-steps input[type=number]").press("Enter")
    page.get_by_label("Null-text inversion").uncheck()  # DDIM alone
    page.locator("#inversion-btn").click()
    page.wait_for_selector("#inversion-status [data-state=done]")
    reconstruction = page.locator("#inversion-gallery img").nth(1)
    reconstruction.wait_for()
    assert reconstruction.evaluate("img => img.complete ? img.naturalWidth : new Promise(r => img.onload = () => r(img.naturalWidth))") == 160


CAPTION = "a big red circle"


def upload(page, tmp_path, size=(128, 128)):
    photo = tmp_path / "photo.png"
    Image.new("RGB", size, (200, 30, 30)).save(photo)
    page.locator("#inversion-upload input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#inversion-prepared img")


def set_steps(page, steps: int) -> None:
    box = page.locator("#inversion-steps input[type=number]")
    box.fill(str(steps))
    box.press("Enter")


def tick_only(page, *methods: str) -> None:
    for label in METHOD_LABELS.values():
        box = page.get_by_label(label, exact=True)
        box.check() if label in methods else box.uncheck()


def invert(page) -> None:
    page.locator("#inversion-btn").click()
    page.wait_for_selector("#inversion-status [data-state=done]")


def test_stop_says_where_it_stopped_and_leaves_the_inversion_the_editing_tabs_use(page, tmp_path):
    upload(page, tmp_path)
    page.locator("#inversion-prompt textarea").fill(CAPTION)
    set_steps(page, 2)
    tick_only(page, "Null-text inversion")
    invert(page)
    page.wait_for_selector("#inversion-loss img")
    finished = page.locator("#inversion-pick input").input_value()
    assert "Null-text inversion" in finished

    set_steps(page, 150)
    tick_only(page, "DDIM inversion", "Null-text inversion")
    page.locator("#inversion-btn").click()
    status = page.locator("#inversion-status")
    expect(status).to_contain_text("method 1 of 2 · DDIM inversion: inverting · step")
    expect(page.locator("#inversion-loss img")).to_have_count(0)  # the last run's loss plot is gone
    page.locator("#inversion-stop").click()
    stopped = page.locator("#inversion-status [data-state=stopped]")
    expect(stopped).to_contain_text("Stopped after method 1 of 2 · DDIM inversion: inverting · step", timeout=1_000)
    said = stopped.inner_text()
    time.sleep(3)
    assert page.locator("#inversion-status").inner_text() == said  # nothing of the run overwrites it
    assert page.locator("#inversion-pick input").input_value() == finished  # the finished run's inversion stays


def test_six_images_whole_with_full_captions_readable_table_and_plots_without_chips(page, tmp_path):
    upload(page, tmp_path)
    page.locator("#inversion-prompt textarea").fill(CAPTION)
    set_steps(page, 2)
    tick_only(page, "DDIM inversion", "Null-text inversion", "Negative-prompt inversion", "EDICT", "BDIA")
    invert(page)
    images = page.locator("#inversion-gallery .grid-wrap img")
    expect(images).to_have_count(6)
    page.wait_for_function("() => [...document.querySelectorAll('#inversion-gallery .grid-wrap img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    boxes = page.evaluate("""() => {
        const wrap = document.querySelector('#inversion-gallery .grid-wrap').getBoundingClientRect();
        return [...document.querySelectorAll('#inversion-gallery .grid-wrap img')].map(img => {
            const r = img.getBoundingClientRect();
            return {inside: r.top >= wrap.top - 1 && r.bottom <= wrap.bottom + 1 && r.left >= wrap.left - 1
                            && r.right <= wrap.right + 1, width: r.width, height: r.height};
        });
    }""")
    assert all(box["inside"] for box in boxes), boxes  # every image whole, none cut by the gallery's box
    assert all(min(box["width"], box["height"]) > 128 for box in boxes), boxes  # upscaled past the native 128 px
    captions = page.evaluate("""() => [...document.querySelectorAll('#inversion-gallery .caption-label')]
        .map(c => ({text: c.innerText, cut: c.scrollWidth > c.clientWidth}))""")
    assert any(c["text"] == "Negative-prompt inversion: " + c["text"].split(": ")[-1] for c in captions)
    assert not any(c["cut"] for c in captions), captions

    # each header at least as wide as its longest word (no letter-by-letter wrapping)
    headers = page.evaluate("""() => {
        const canvas = document.createElement('canvas').getContext('2d');
        return [...document.querySelectorAll('#inversion-table th')].map(th => {
            const text = th.innerText.trim(), style = getComputedStyle(th);
            canvas.font = style.font;
            const longest = Math.max(0, ...text.split(/\\s+/).map(w => canvas.measureText(w).width));
            const room = th.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
            return {text, longest, room};
        }).filter(h => h.text);
    }""")
    assert len(headers) >= 9, headers
    assert all(h["longest"] <= h["room"] + 1 for h in headers), headers
    # the last column is inside the table's box (not cut off at its right edge)
    last_column = page.evaluate("""() => {
        const block = document.querySelector('#inversion-table').getBoundingClientRect();
        const last = [...document.querySelectorAll('#inversion-table th')].filter(th => th.innerText.trim()).pop();
        return {right: last.getBoundingClientRect().right, edge: block.right, text: last.innerText.trim()};
    }""")
    assert last_column["right"] <= last_column["edge"] + 1, last_column
    # the guidance slider says why it starts low
    expect(page.locator("#inversion-guidance")).to_contain_text("the more an edit moves the background")
    for plot in ("#inversion-errors", "#inversion-loss"):  # no label chip over the plot's own title
        chip = page.locator(f"{plot} [data-testid=block-label]").evaluate_all(
            "chips => chips.map(c => c.getBoundingClientRect().width)")
        assert all(width <= 1 for width in chip), (plot, chip)  # screen-reader only


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_the_picked_inversion_downloads_loads_in_a_fresh_page_and_p2p_edits_it(page, browser, app_url, tmp_path):  # noqa: F811
    upload(page, tmp_path)
    page.locator("#inversion-prompt textarea").fill(CAPTION)
    set_steps(page, 3)
    page.locator("#inversion-guidance input[type=number]").fill("3")
    page.locator("#inversion-guidance input[type=number]").press("Enter")
    tick_only(page, "Negative-prompt inversion")
    invert(page)
    link = page.locator("#inversion-file a").first
    link.wait_for()
    saved = tmp_path / "negative_prompt.inversion.safetensors"
    saved.write_bytes(page.request.get(link.get_attribute("href")).body())

    fresh = open_tab(browser, app_url, "Inversion", ready="#inversion-prompt textarea", height=1200)
    try:
        fresh.locator("#inversion-load input[type=file]").set_input_files(str(saved))
        expect(fresh.locator("#inversion-status")).to_contain_text("Loaded Negative-prompt inversion")
        fresh.get_by_role("tab", name="Prompt-to-Prompt").click()
        fresh.locator("#p2p-use-inversion input").check()
        source = fresh.locator("#p2p-source textarea")
        expect(source).to_have_value(CAPTION)  # the inversion's caption, not a placeholder
        expect(source).to_be_disabled()
        expect(fresh.locator("#p2p-steps input[type=number]")).to_have_value("3")
        expect(fresh.locator("#p2p-steps input[type=number]")).to_be_disabled()
        expect(fresh.locator("#p2p-guidance input[type=number]")).to_have_value("3")
        fresh.locator("#p2p-target textarea").fill("a big red square")
        fresh.get_by_label("word swap").check()
        fresh.locator("#p2p-go").click()
        fresh.wait_for_selector("#p2p-status [data-state=done]")
        assert image_loaded(fresh, "#p2p-images img")
        fresh.locator("#p2p-use-inversion input").uncheck()  # the form's own values come back
        expect(source).to_have_value("")
        expect(source).to_be_enabled()
        expect(fresh.locator("#p2p-steps input[type=number]")).to_have_value("25")
    finally:
        fresh.close()


def test_loading_a_reconstructions_png_restores_the_form(page, tmp_path):
    record = {"job": "invert", "prompt": CAPTION, "method": "edict", "steps": 7, "guidance_scale": 2.5,
              "edict_mix": 0.9}
    png = png_settings.save_png(Image.new("RGB", (128, 128)), record, tmp_path / "edict-reconstruction.png")
    page.locator("#inversion-load-settings input[type=file]").set_input_files(str(png))
    expect(page.locator("#inversion-prompt textarea")).to_have_value(CAPTION)
    expect(page.locator("#inversion-steps input[type=number]")).to_have_value("7")
    assert page.get_by_label("EDICT", exact=True).is_checked()
    assert not page.get_by_label("DDIM inversion", exact=True).is_checked()


def test_fixed_point_and_ddpm_settings_reach_their_reconstructions_and_a_bad_tolerance_is_refused(page, tmp_path):
    from test_browser import downloaded_settings

    # the accordion opens first: its boxes mount on opening, and a value typed while they mount can be lost
    # (fresh-clone CI once read the default 3 back after typing 2)
    page.get_by_text("Method settings").click()
    upload(page, tmp_path)
    page.locator("#inversion-prompt textarea").fill(CAPTION)
    set_steps(page, 2)
    tick_only(page, "Fixed-point inversion", "Edit-friendly DDPM inversion")
    for elem_id, value in (("inversion-fixed-point-iterations", "2"), ("inversion-ddpm-seed", "5")):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.wait_for(state="visible")  # the accordion has opened
        box.fill(value)
        box.press("Tab")  # committed on blur
        expect(box).to_have_value(value)
    time.sleep(0.5)  # the last change event reaches the server before the click
    expect(page.locator("#inversion-ddpm-seed")).to_contain_text("Direct inversion has no settings")
    invert(page)
    links = page.locator("#inversion-downloads a")
    expect(links).to_have_count(2)
    settings = {s["method"]: s for s in (downloaded_settings(page, f"#inversion-downloads a >> nth={i}", tmp_path)
                                         for i in range(2))}
    assert settings["fixed_point"]["fixed_point_iterations"] == 2 and settings["ddpm"]["seed"] == 5, settings

    tolerance = page.locator("#inversion-fixed-point-tolerance input[type=number]")
    tolerance.fill("5")  # above the range's 0.01
    tolerance.press("Enter")
    page.locator("#inversion-btn").click()
    # Gradio refuses a number past its box's maximum before the job runs, saying so in a toast
    expect(page.locator(".toast-body").first).to_contain_text("maximum value", timeout=10_000)
