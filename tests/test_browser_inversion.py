"""The Inversion tab in a real browser (headless chromium, Playwright, tiny random model).

Protects what a user sees: uploading a photo shows it as the model will see it and says what was
changed; inverting with two methods fills the comparison table (ceiling row + one row per method) and
shows the original beside both reconstructions, the error plot and the pick for editing; "keep the image's
size" inverts at the upload's own size, without resampling it; a file that is
not an image shows a clear error.
"""

from __future__ import annotations

import pytest
from PIL import Image
from playwright.sync_api import expect
from test_browser import app_url, browser, open_tab  # noqa: F401  (the shared app and chromium fixtures)

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
    page.get_by_label("EDICT").check()
    page.get_by_label("Null-text inversion").uncheck()  # DDIM + EDICT
    page.locator("#inversion-btn").click()
    page.wait_for_selector("#inversion-status [data-state=done]")

    table = page.locator("#inversion-table").inner_text()
    for row in ("VAE encode", "DDIM inversion", "EDICT"):
        assert row in table
    assert page.locator("#inversion-gallery img").count() == 3  # original + two reconstructions
    page.wait_for_selector("#inversion-errors img")
    assert "EDICT" in page.locator("#inversion-pick").inner_text() or page.locator("#inversion-pick input").input_value()


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
