"""Images in and out of the model: user uploads made model-ready, pixels <-> VAE latents.

Uploads come in any size and mode (grayscale, RGBA, palette, 16-bit); the engine takes one
RGB image at a size the model can work at. `prepare_image` does that conversion once, the same
way for every tab, and says in words what it changed so the UI can show it rather than hide it.
"""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.errors import InvalidInputError
from studio.specs import SIZE

ImageInput = Image.Image | np.ndarray  # an upload: any PIL image, or (H, W[, C]) uint8/uint16 pixels
MAX_INPUT_PIXELS = 4096 * 4096  # larger uploads are refused: decoding them alone costs ~200 MB
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")  # how PIL's DecompressionBombError names the size


def limit_decoding(max_pixels: int = MAX_INPUT_PIXELS) -> None:
    """Make PIL refuse any image over `max_pixels` from its header, before a pixel is decoded (process-wide).

    Gradio decodes an upload in full in the component's preprocess (gradio/image_utils.py preprocess_image), before
    any handler could check its size: a 441 KB PNG of 12000x12000 cost 6.5 GB there. PIL.Image.open reads only the
    header and raises DecompressionBombError above 2 x Image.MAX_IMAGE_PIXELS, but above MAX_IMAGE_PIXELS it only
    warns. So the error is put at the studio's limit (MAX_IMAGE_PIXELS = max_pixels / 2), rather than turning the
    warning into an error with a warnings filter: Gradio swaps the process's filters while it converts an image
    (warnings.catch_warnings, not thread-safe), which would let another thread's warning band through. The warning
    band now lies below the limit, among images we accept, so it is silenced."""
    Image.MAX_IMAGE_PIXELS = max_pixels // 2
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # replaces an identical filter


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header, read past PIL's size guard (to say how large a refused image
    is); None for what no PIL format reads. As PIL.Image.open does, less the guard: no pixel is decoded."""
    Image.init()
    with open(path, "rb") as file:
        prefix = file.read(16)
        for format_id in Image.ID:
            factory, accept = Image.OPEN[format_id]
            if accept is not None and accept(prefix) is not True:
                continue
            file.seek(0)
            try:
                return factory(file, str(path)).size
            except (SyntaxError, IndexError, TypeError, struct.error, OSError):  # what Image.open skips a format for
                continue
    return None


def too_large_message(error: Exception, path: str | Path | None = None) -> str:
    """The refusal of an image PIL's guard stopped (limit_decoding): its size, from the header when `path` is
    known, and the studio's limit."""
    size = header_size(path) if path is not None else None
    if size is not None:
        width, height = size
        what = f"{width}x{height} ({width * height / 1e6:.1f} MP)"
    elif match := _BOMB_PIXELS.search(str(error)):
        what = f"{int(match.group(1)) / 1e6:.1f} MP"
    else:
        what = "too large"
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else MAX_INPUT_PIXELS
    return f"the image is {what}; the limit is {limit / 1e6:.1f} MP ({_side(limit)}): downscale it first."


def _side(pixels: int) -> str:
    side = int(pixels ** 0.5)
    return f"{side}x{side}" if side * side == pixels else f"{pixels} pixels"


def open_image(path: str | Path, what: str = "The upload") -> Image.Image:
    """Open an image file (its pixels decoded, so a truncated file fails here), refusing with InvalidInputError
    what is not an image, is damaged, or is over the limit (PIL's guard, set by limit_decoding, reads the header)."""
    name = Path(path).name
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except Image.DecompressionBombError as error:
        raise InvalidInputError(f"{what} ({name}): {too_large_message(error, path)}") from error
    except UnidentifiedImageError as error:
        raise InvalidInputError(f"{what} ({name}) is not an image this app can read: use PNG, JPEG, WebP or TIFF.") from error
    except OSError as error:  # truncated or damaged data, or an unreadable file
        raise InvalidInputError(f"{what} ({name}) is damaged or truncated and cannot be read; upload it again.") from error


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
