"""Images in and out of the model: user uploads made model-ready, pixels <-> VAE latents.

Uploads come in any size and mode (grayscale, RGBA, palette, 16-bit); the engine takes one
RGB image at a size the model can work at. `prepare_image` does that conversion once, the same
way for every tab, and says in words what it changed so the UI can show it rather than hide it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageOps

from studio.errors import InvalidInputError
from studio.specs import SIZE

ImageInput = Image.Image | np.ndarray  # an upload: any PIL image, or (H, W[, C]) uint8/uint16 pixels
MAX_INPUT_PIXELS = 4096 * 4096  # larger uploads are refused: decoding them alone costs ~200 MB


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # RGB, size x size
    changes: list[str]  # what was done to the upload, in words ("cropped 640x480 to 480x480", ...)

    @property
    def note(self) -> str:
        return "; ".join(self.changes) if self.changes else "used as uploaded"


def _to_rgb(image: Image.Image, changes: list[str]) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit / 32-bit integer grayscale
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255, 0, 255).round().astype(np.uint8), "L")
        changes.append(f"reduced {top:.0f}-level grayscale to 8 bits")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
        changes.append("flattened transparency onto white")
    if image.mode != "RGB":
        if image.mode in ("L", "1"):
            changes.append("converted grayscale to RGB")
        elif image.mode not in ("RGBA", "P"):
            changes.append(f"converted {image.mode} to RGB")
        image = image.convert("RGB")
    return image


def prepare_image(image: Image.Image | np.ndarray, size: int, max_pixels: int = MAX_INPUT_PIXELS) -> PreparedImage:
    """Any PIL image or (H, W[, C]) uint8/uint16 array -> RGB `size` x `size`, centre-cropped to a square
    then resized (Lanczos). Raises InvalidInputError for what is not an image or is too large."""
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise InvalidInputError(f"Expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}.")
        if image.dtype == np.uint16:
            image = Image.fromarray(image if image.ndim == 2 else image[..., 0])  # mode I;16
        elif image.dtype == np.uint8:
            image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        else:
            raise InvalidInputError(f"Expected 8- or 16-bit image data, got {image.dtype}.")
    if not isinstance(image, Image.Image):
        raise InvalidInputError(f"Expected an image, got {type(image).__name__}.")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInputError(
            f"The image is {width}x{height} ({width * height / 1e6:.1f} MP); the limit is {max_pixels / 1e6:.0f} MP: "
            "downscale it first."
        )
    if min(width, height) < 8:
        raise InvalidInputError(f"The image is {width}x{height}: too small to work with.")
    image = ImageOps.exif_transpose(image)  # phone photos: honour the orientation tag
    changes: list[str] = []
    image = _to_rgb(image, changes)
    width, height = image.size
    if width != height:
        side = min(width, height)
        image = ImageOps.fit(image, (side, side), method=Image.Resampling.LANCZOS)
        changes.append(f"centre-cropped {width}x{height} to {side}x{side}")
    if image.size != (size, size):
        changes.append(f"resized {image.size[0]}x{image.size[1]} to {size}x{size}")
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return PreparedImage(image, changes)


def working_size(image: ImageInput | None, native_size: int, multiple: int, keep_size: bool) -> int:
    """The square side an upload is worked at: the model's native size, or with `keep_size` the upload's own
    scale -- its shorter side (prepare_image crops to a square) down to a multiple of `multiple` (pixels per
    latent cell), so an upload already at such a size is only cropped, never resampled, and a small image
    costs a small image's time. Raises InvalidInputError when that side is outside specs.SIZE."""
    if not keep_size or not isinstance(image, (Image.Image, np.ndarray)):
        return native_size  # what is not an image is prepare_image's to report
    height, width = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
    side = min(height, width) // multiple * multiple
    if not SIZE.low <= side <= SIZE.high:
        raise InvalidInputError(
            f"Keep size: the image's shorter side is {min(height, width)} px, but the model works at "
            f"{SIZE.low:g} to {SIZE.high:g} px: resize the image, or untick keep size to use {native_size} px."
        )
    return side


def to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) in [-1, 1], SD's VAE input convention."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    return pixels.to(device=device, dtype=dtype)


@torch.no_grad()
def encode_image(vae: AutoencoderKL, image: Image.Image) -> torch.Tensor:
    """RGB image -> scaled latents (1, 4, h, w): the posterior mean (deterministic, as inversion needs)
    times the VAE's scaling factor, the inverse of studio.models.decode_latents."""
    pixels = to_tensor(image, vae.device, vae.dtype)
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """float pixels in [0, 1] -> uint8, rounded like the engine's images."""
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
