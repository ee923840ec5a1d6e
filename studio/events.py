"""Typed events streamed by every engine job (generators yield these), and the cancel flag.

A job yields any number of Progress / Preview / AttentionMaps / Mask / ... events and ends with exactly
one Result (or raises a StudioError). Consumers (UI, CLI, tests) render what they need and ignore the
rest. Every event class lives here, the job-specific Results included: a Result carries what it
measured as typed fields, and `settings` is the reproduction record (the PNG settings and the CLI read it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from torch import Tensor

from studio.errors import CancelledError

if TYPE_CHECKING:
    from studio.inversion.result import Inversion


@dataclass(frozen=True)
class Progress:
    step: int  # steps done, 0..total
    total: int
    message: str = ""


@dataclass(frozen=True)
class Notice:
    """A note for the user about how the job read its inputs ("The control map was 256x256; resized to 128x128.")."""

    text: str


@dataclass(frozen=True)
class Preview:
    """Decoded x0 prediction of the current step (throttled)."""

    step: int
    images: list[Image.Image]


@dataclass(frozen=True)
class AttentionMaps:
    """Cross-attention probability maps per prompt token, for the first image of the batch.

    maps: (n_tokens, H, W) float32 in [0, 1], each map normalised by its own max, all UNet resolutions
    upsampled to the largest and averaged. tokens: the words the maps belong to, in prompt order
    (special tokens excluded).
    """

    step: int
    tokens: list[str]
    maps: np.ndarray
    # map height -> (n_tokens, h, w) maps of that UNet resolution alone, same normalisation
    per_resolution: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class EditAttentionMaps:
    """Cross-attention maps of a Prompt-to-Prompt source and of the edited target (the fused Ã it used)."""

    step: int
    source: AttentionMaps
    target: AttentionMaps
    aligned: list[str]  # per target word, the source word whose attention it takes ("" for a new word)


@dataclass(frozen=True)
class Mask:
    """A mask as it is being computed (DiffEdit discovery, Prompt-to-Prompt local blend), for live preview.

    mask: (H, W) float32 in [0, 1] at image resolution; `binary` is the thresholded mask when one exists;
    `image` the image it belongs to, at the mask's size (overlay the mask on it), when the job has one.
    """

    step: int  # units of work done (probes, sampling steps), 1..total
    total: int
    mask: np.ndarray
    label: str = ""
    binary: np.ndarray | None = None  # (H, W) bool
    image: Image.Image | None = None  # (H, W) RGB


@dataclass(frozen=True)
class NullTextLoss:
    """Streamed after each outer step of null-text inversion, for the live loss plot."""

    step: int  # outer steps done, 1..total
    total: int
    losses: list[float]  # L_rec at each inner iteration of this step (the last one is where it stopped)


@dataclass(frozen=True)
class TrainingLoss:
    """A personalization run's loss after optimiser step `step` (1..), for the live loss plot."""

    step: int
    loss: float


@dataclass(frozen=True)
class TrainingSamples:
    """Preview samples of a personalization run after `step` steps: the same prompts and seeds every time."""

    step: int
    images: list[Image.Image]
    prompts: list[str]


@dataclass(frozen=True)
class TrainingCheckpoint:
    """The concept's files were written to `folder` after `step` steps (loadable as they are)."""

    step: int
    folder: Path


# --------------------------------------------------------------------------------------------
# Results: one per job, the last event of its stream


@dataclass(frozen=True)
class Result:
    images: list[Image.Image]
    settings: dict[str, Any]  # the reproduction record: model, seed, sampler, steps, ... (PNG settings, CLI)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase and "total"
    unet_evaluations: int = 0
    pixels: np.ndarray | None = None  # (B, H, W, 3) float32 in [0, 1] before 8-bit rounding (parity, metrics)
    seed: int | None = None  # the seed used (drawn when none was given); None where no seed applies


@dataclass(frozen=True)
class GenerationResult(Result):
    """Text to image: images = the batch; what the guidance cost per step."""

    steps: int = 0
    nfe_per_step: int = 0  # UNet predictions per image per step, all in one batched call
    sampling_seconds_per_step: float = 0.0  # the whole step: UNet, guidance, scheduler, previews
    classifier_gradient_evaluations: int | None = None  # None without classifier guidance
    classifier_seconds_per_step: float | None = None


@dataclass(frozen=True)
class SDEditSample:
    """One SDEdit image: its t0 and repeat, and how faithful and how realistic it came out."""

    t0: float
    repeat: int
    seed: int  # seed + repeat
    l2_to_guide: float  # RMS distance of its pixels to the guide's, in [0, 1] units
    realism: float | None  # the noisy-latent classifier's confidence; None without a classifier


@dataclass(frozen=True)
class SDEditResult(Result):
    """images = [t0_0 x K, t0_1 x K, ...]; `strip` shows them with the guide, one column per t0."""

    samples: list[SDEditSample] = field(default_factory=list)  # one per image, in the images' order
    masked: bool = False
    guidance_scale_used: float = 0.0  # 1 without a prompt (the unconditional prediction alone)
    strip: Image.Image | None = None
    latents: Tensor | None = None  # (len(strengths) * K, C, h, w) final latents, before decoding
    original_latents: Tensor | None = None  # (1, C, h, w) the frozen branch's target
    latent_mask: Tensor | None = None  # (1, 1, h, w), 1 = editable; None when unmasked


@dataclass(frozen=True)
class MaskResult(Result):
    """DiffEdit Stage I's outcome: images = [the image with the mask overlaid]."""

    image: Image.Image | None = None  # the image the mask belongs to, at the mask's size
    soft: np.ndarray | None = None  # (H, W) float32 in [0, 1], the normalised deviation map
    binary: np.ndarray | None = None  # (H, W) bool, thresholded and cleaned
    mask_fraction: float = 0.0  # share of the pixels in the binary mask
    probe_timesteps: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DiffEditResult(Result):
    """DiffEdit Stage II's outcome: images = [edited]."""

    mask: np.ndarray | None = None  # (H, W) bool pixel mask used
    mask_from: str = ""  # "Stage I" (found here) or "given"
    mask_fraction: float = 0.0
    soft: np.ndarray | None = None  # Stage I's soft map when Stage I ran here
    latents: Tensor | None = None  # (1, C, h, w) final latents
    original_latents: Tensor | None = None  # (1, C, h, w)
    latent_mask: Tensor | None = None  # (1, 1, h, w), 1 = editable


@dataclass(frozen=True)
class P2PResult(Result):
    """Prompt-to-Prompt: images = [source, edited]; latents (2, C, h, w) before decoding; mask the local
    blend's last binary mask at image resolution (None without local blend)."""

    latents: Tensor | None = None
    mask: np.ndarray | None = None
    alignment: list[tuple[str, str]] = field(default_factory=list)  # (target word, source word or "")
    seconds_per_step: float = 0.0  # the sampling loop's, attention control included
    attention_maps_bytes: int = 0  # memory the controller held for the maps shown


@dataclass(frozen=True)
class InversionResult(Result):
    """images = [reconstruction]; the Inversion for editing, and how well it reconstructs the image."""

    inversion: Inversion | None = None
    step_errors: list[float] = field(default_factory=list)  # latent MSE to the inverted trajectory, per step
    method: str = ""
    psnr: float = 0.0  # reconstruction vs image, dB
    ssim: float = 0.0
    latent_mse: float = 0.0  # reconstructed x_0 vs the image's latents
    vae_psnr: float = 0.0  # the ceiling: the VAE's own encode -> decode vs the image
    vae_ssim: float = 0.0
    inversion_unet_passes: int = 0
    backward_passes: int = 0  # autograd passes through the UNet (null-text inversion)
    reconstruction_unet_passes: int = 0
    inversion_seconds: float = 0.0


@dataclass(frozen=True)
class PersonalizeResult(Result):
    """A finished personalization run: images = the last preview samples; the trained concept's folder and files."""

    folder: Path | None = None
    files: list[Path] = field(default_factory=list)
    method: str = ""
    words: tuple[str, ...] = ()
    steps: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0  # the device's peak allocation (CUDA), or the process's peak resident memory (CPU)
    final_loss: float = float("nan")


Event = (Progress | Notice | Preview | AttentionMaps | EditAttentionMaps | Mask | NullTextLoss | TrainingLoss | TrainingSamples
         | TrainingCheckpoint | Result)


class CancelToken:
    """Set from any thread; the sampler checks it between steps and raises CancelledError."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def check_cancelled(cancel: CancelToken | None, done: int, total: int, unit: str = "steps") -> None:
    """Raise CancelledError ("Cancelled after 3 of 25 steps.") once `cancel` is set; the sampler and the jobs
    call it between units of work, never inside one."""
    if cancel is not None and cancel.cancelled:
        raise CancelledError(f"Cancelled after {done} of {total} {unit}.")
