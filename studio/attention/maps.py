"""Heat maps from captured cross-attention: per word, per resolution and all resolutions together.

A prompt word may span several tokens (CLIP's BPE); its map is the mean of its tokens' maps.
Every map is normalised by its own maximum to [0, 1], which shows *where* a word attends; the
relative strength between words is not kept.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def word_maps(mean_probabilities: Tensor, size: tuple[int, int], word_tokens: list[list[int]]) -> Tensor:
    """(h*w, T) probabilities at one resolution -> (n_words, h, w) maps, unnormalised."""
    h, w = size
    grid = mean_probabilities.reshape(h, w, -1)  # (h, w, T)
    return torch.stack([grid[:, :, tokens].mean(dim=-1) for tokens in word_tokens])


def normalise_maps(maps: Tensor) -> Tensor:
    """Each map divided by its own max: (n, h, w) in [0, 1]."""
    peaks = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps / peaks[:, None, None]).clamp(0, 1)


def per_resolution_maps(means: dict[tuple[int, int], Tensor], word_tokens: list[list[int]]) -> dict[int, np.ndarray]:
    """{map height: (n_words, h, w) float32 in [0, 1]} for every captured resolution."""
    return {
        size[0]: normalise_maps(word_maps(mean, size, word_tokens)).float().cpu().numpy()
        for size, mean in sorted(means.items(), reverse=True)
    }


def combined_maps(means: dict[tuple[int, int], Tensor], word_tokens: list[list[int]]) -> np.ndarray:
    """All resolutions upsampled (bilinear) to the largest and averaged: (n_words, H, W) in [0, 1]."""
    largest = max(means)
    upsampled = [
        F.interpolate(word_maps(mean, size, word_tokens)[None].float(), size=largest, mode="bilinear", align_corners=False)[0]
        for size, mean in means.items()
    ]
    return normalise_maps(torch.stack(upsampled).mean(dim=0)).cpu().numpy()


def heat_map_overlay(image: Image.Image, heat_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a (h, w) map in [0, 1], upsampled to the image, as a JET colour map over it."""
    rgb = np.asarray(image.convert("RGB"))
    heat = cv2.resize(heat_map.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[:, :, ::-1]  # BGR -> RGB
    return Image.fromarray(np.uint8((1 - alpha) * rgb + alpha * colours))
