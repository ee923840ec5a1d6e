"""Edit masks shared by SDEdit and DiffEdit: painted layers in, checked pixel masks, latent masks out.

Masks are painted (or discovered) at image resolution, (H, W) bool with True = editable (SDEdit's
Omega, Meng et al. 2022; DiffEdit's M, Couairon et al. 2023); the sampler works on latents, (h, w) = (H, W) / 8 on SD-style VAEs. `to_latent_mask`
marks a latent cell editable when any pixel under it is: the VAE decodes each cell into the pixels
around it, so a cell half inside the painted region must be free to change for the painted region to
change fully. Morphology is OpenCV's (cv2.morphologyEx), the reference implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from studio.errors import InvalidInputError
from studio.images import prepare_image

# A decoded pixel depends on the latent cells around it (the VAE decoder's receptive field). On shapes-sd,
# pixels more than two latent cells (16 px) from any edited cell decode to the VAE's reconstruction of the
# original at 34 dB for a small stroke edit (tests/test_sdedit.py): the honest "outside the mask" region
# without compositing. The decoder's mid-block self-attention sees every cell, so a large edit still shifts
# distant pixels slightly (31 dB after recolouring a big circle, tests/test_diffedit.py).
VAE_REACH_PIXELS = 16


def painted_mask(layer: np.ndarray | Image.Image | None) -> np.ndarray:
    """Where a gr.ImageEditor layer was painted: its alpha channel > 0, (H, W) bool (all False when
    there is no layer). RGB under alpha 0 is arbitrary, so colour is never used."""
    if layer is None:
        return np.zeros((0, 0), dtype=bool)
    array = np.asarray(layer)
    if array.ndim == 2:  # a plain grey mask image: white = editable
        return array > 127
    if array.shape[2] == 4:
        return array[..., 3] > 0
    return array.max(axis=2) > 127  # RGB mask image: anything not black is editable


def check_mask(mask: np.ndarray, image_size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """The mask as (H, W) bool if it fits the image and is neither empty nor everything; else a clear error.
    image_size is (H, W)."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise InvalidInputError(f"The {what} must be a single-channel image, got an array of shape {mask.shape}.")
    if mask.shape != tuple(image_size):
        raise InvalidInputError(
            f"The {what} is {mask.shape[1]}x{mask.shape[0]} but the image is {image_size[1]}x{image_size[0]}: "
            "paint the mask on the image itself, or resize it to the image's size."
        )
    if not mask.any():
        raise InvalidInputError(f"The {what} is empty: paint the region that may change.")
    if mask.all():
        raise InvalidInputError(
            f"The {what} covers the whole image: nothing would be kept. Leave part of the image unpainted, "
            "or edit without a mask."
        )
    return mask


def prepare_mask(mask: np.ndarray, source_size: tuple[int, int], size: int) -> np.ndarray:
    """A mask painted on an upload of `source_size` (H, W), checked there, then cropped and resized exactly as
    studio.images.prepare_image does to the upload (so it stays on the same pixels), and checked again."""
    checked = check_mask(mask, source_size)
    resized = prepare_image(checked.astype(np.uint8) * 255, size).image  # grey: Lanczos blurs the edge
    return check_mask(np.asarray(resized)[..., 0] > 127, (size, size), "mask at the model's size")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to (H, W) with nearest neighbour (no new grey values at the border)."""
    height, width = size
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def clean_mask(mask: np.ndarray, kernel_pixels: int) -> np.ndarray:
    """Morphological open (drops speckles) then close (fills small holes) with an elliptic kernel of
    `kernel_pixels` (our addition to DiffEdit's thresholded mask, Couairon et al. 2023 Step 1). 0 leaves it
    unchanged."""
    if kernel_pixels <= 1:
        return mask.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_pixels, kernel_pixels))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    return cv2.morphologyEx(opened, cv2.MORPH_CLOSE, kernel).astype(bool)


def to_latent_mask(mask: np.ndarray, latent_size: tuple[int, int], device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, coverage: float = 0.0) -> Tensor:
    """(H, W) bool pixel mask -> (1, 1, h, w) {0, 1} latent mask: a cell is editable when more than `coverage`
    of its pixels are (0: any pixel). Broadcasts over the latent channels in the masked updates."""
    pixels = torch.from_numpy(mask.astype(np.float32))[None, None]  # (1, 1, H, W)
    covered = torch.nn.functional.adaptive_avg_pool2d(pixels, latent_size)  # (1, 1, h, w) fraction editable
    return (covered > coverage).to(device=device, dtype=dtype)


def to_pixel_mask(latent_mask: Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """(1, 1, h, w) latent mask -> (H, W) bool: the pixels whose latent cell may change (nearest upsampling)."""
    cells = latent_mask[0, 0].float().cpu().numpy()
    return resize_mask(cells > 0.5, image_size)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by `pixels` in every direction (square kernel): where an edit can reach after decoding."""
    if pixels <= 0:
        return mask
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def follow_off_mask(mask: Tensor, path: Sequence[Tensor]) -> Callable[[int, Tensor], Tensor]:
    """A post-step hook for studio.sampling.sample_steps: after step i the latents off the mask (1 - M)
    are replaced by path[i], the state the frozen part is at there, M x + (1 - M) path[i]. Masked SDEdit's
    two-branch update (the original re-noised to each step's level) and DiffEdit's inversion path."""
    return lambda i, x: mask * x + (1 - mask) * path[i]


def decode_masked_change(edited: np.ndarray, unedited: np.ndarray, latent_mask: Tensor) -> np.ndarray:
    """The decoded edit on the latent cells of `latent_mask` ((1, 1, h, w)) and the decoding of the unedited latents
    elsewhere ((H, W, 3) arrays): only the masked change is decoded. The latents off the mask are the image's own,
    but a VAE decoder with self-attention and GroupNorm over the whole latent map (SD's, the embedded model's) lets a
    changed object move every pixel; this keeps the decoder's own reconstruction of the image there (the VAE's
    round trip, not the original pixels: `composite` pastes those)."""
    return np.where(to_pixel_mask(latent_mask, edited.shape[:2])[..., None], edited, unedited)


def composite(edited: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Original pixels outside the mask, edited ones inside ((H, W, 3) arrays of one dtype), as SD inpainting
    UIs do after decoding: the VAE spreads each latent cell over its neighbours, so without this the pixels just
    outside an edited region change a little even though their latents were restored exactly."""
    return np.where(mask[..., None], edited, original)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
