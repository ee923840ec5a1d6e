"""Typed events streamed by every engine job (generators yield these), and the cancel flag.

A job yields any number of Progress / Preview / AttentionMaps events and ends with exactly one
Result (or raises a StudioError). Consumers (UI, CLI, tests) render what they need and ignore the rest.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Progress:
    step: int  # steps done, 0..total
    total: int
    message: str = ""


@dataclass(frozen=True)
class Preview:
    """Decoded x0 prediction of the current step (throttled)."""

    step: int
    images: list[Image.Image]


@dataclass(frozen=True)
class AttentionMaps:
    """Cross-attention probability maps per prompt token, for the first image of the batch.

    maps: (n_tokens, H, W) float32 in [0, 1], each map normalised by its own max, at the latent
    resolution of `resolution` (or all resolutions upsampled to the largest when resolution is None).
    tokens: the words the maps belong to, in prompt order (special tokens excluded).
    """

    step: int
    tokens: list[str]
    maps: np.ndarray
    resolution: int | None = None
    # map height -> (n_tokens, h, w) maps of that UNet resolution alone, same normalisation
    per_resolution: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Mask:
    """A mask as it is being computed (DiffEdit discovery, Prompt-to-Prompt local blend), for live preview.

    mask: (H, W) float32 in [0, 1] at image resolution; `binary` is the thresholded mask when one exists.
    """

    step: int  # units of work done (probes, sampling steps), 1..total
    total: int
    mask: np.ndarray
    label: str = ""
    binary: np.ndarray | None = None  # (H, W) bool


@dataclass(frozen=True)
class Result:
    images: list[Image.Image]
    settings: dict[str, Any]  # everything needed to reproduce: model, seed, sampler, steps, ...
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase and "total"
    unet_evaluations: int = 0
    pixels: np.ndarray | None = None  # (B, H, W, 3) float32 in [0, 1] before 8-bit rounding (parity, metrics)


Event = Progress | Preview | AttentionMaps | Mask | Result


class CancelToken:
    """Set from any thread; the sampler checks it between steps and raises CancelledError."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
