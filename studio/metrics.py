"""Image-quality measures used by inversion and editing reports and their tests.

PSNR and SSIM are scikit-image's (the reference implementations the papers' tables use), on
uint8 RGB, so every tab and benchmark reports the same numbers.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _as_uint8(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected uint8 RGB pixels, got {array.dtype}")
    return array


def psnr(reference, image, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images; only the pixels where `mask` (H, W) is True when given.
    Identical images give +inf."""
    a, b = _as_uint8(reference).astype(np.float64), _as_uint8(image).astype(np.float64)
    if mask is not None:
        if not mask.any():
            raise ValueError("the mask selects no pixels")
        a, b = a[mask], b[mask]
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(reference, image) -> float:
    """Structural similarity of two uint8 RGB images (Wang et al. 2004, 7x7 windows, channel mean)."""
    return float(structural_similarity(_as_uint8(reference), _as_uint8(image), channel_axis=-1, data_range=255))
