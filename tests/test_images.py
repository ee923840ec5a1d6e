"""Uploads of any size and mode become one model-ready RGB image, and the user is told what changed."""

import numpy as np
import pytest
from PIL import Image

from studio.errors import InvalidInputError
from studio.images import encode_image, prepare_image
from studio.metrics import psnr, ssim
from studio.models import decode_latents, load_model


def test_landscape_rgba_upload_is_cropped_resized_and_flattened_with_each_change_named():
    rgba = Image.new("RGBA", (300, 200), (255, 0, 0, 0))  # fully transparent red
    prepared = prepare_image(rgba, 128)
    assert prepared.image.mode == "RGB" and prepared.image.size == (128, 128)
    assert np.asarray(prepared.image)[64, 64].tolist() == [255, 255, 255]  # transparency shows white
    assert "flattened transparency onto white" in prepared.changes
    assert "centre-cropped 300x200 to 200x200" in prepared.changes
    assert "resized 200x200 to 128x128" in prepared.changes


def test_sixteen_bit_grayscale_keeps_its_brightness():
    half = np.full((64, 64), 32768, dtype=np.uint16)
    prepared = prepare_image(half, 64)
    assert abs(int(np.asarray(prepared.image)[0, 0, 0]) - 128) <= 1
    assert prepared.changes == ["reduced 65535-level grayscale to 8 bits", "converted grayscale to RGB"]


def test_image_at_model_size_is_used_as_uploaded():
    image = Image.new("RGB", (128, 128), (1, 2, 3))
    prepared = prepare_image(image, 128)
    assert prepared.note == "used as uploaded" and prepared.image.tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        ("not an image", "Expected an image"),
        (np.zeros((4, 4, 2), np.uint8), "Expected an image array"),
        (np.zeros((16, 16), np.float32), "8- or 16-bit"),
        (Image.new("RGB", (5000, 4000)), "the limit is 17 MP"),
        (Image.new("RGB", (4, 4)), "too small"),
    ],
)
def test_what_is_not_a_usable_image_is_refused_with_a_reason(upload, message):
    with pytest.raises(InvalidInputError, match=message):
        prepare_image(upload, 128)


def test_encode_then_decode_round_trips_through_the_embedded_vae():
    model = load_model(None, "cpu")
    image = Image.new("RGB", (128, 128), (30, 70, 220))
    latents = encode_image(model.vae, image)
    assert latents.shape == (1, 4, 16, 16)
    decoded = (decode_latents(model.vae, latents)[0] * 255).round().astype(np.uint8)
    assert psnr(np.asarray(image), decoded) > 25  # a flat colour is easy for any trained VAE
    assert ssim(np.asarray(image), np.asarray(image)) == pytest.approx(1.0)


def test_psnr_inside_a_mask_ignores_pixels_outside_it():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[:4] = 200
    mask = np.zeros((8, 8), bool)
    mask[4:] = True
    assert psnr(a, b, mask) == float("inf")
    assert psnr(a, b) < 10
    with pytest.raises(ValueError, match="no pixels"):
        psnr(a, b, np.zeros((8, 8), bool))
