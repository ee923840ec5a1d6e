"""Noisy-latent classifier of the shapes world (classifier guidance: Dhariwal & Nichol 2021 §4).

A time-conditioned CNN on scaled latents x_t (4 x 16 x 16) that predicts, per latent cell, the
colour and shape of the object covering it ("none" where background), and the background colour.
At t = 0 it judges the fidelity of generated images; at any t its gradient steers generation
(classifier guidance). Per-cell outputs keep it spatial: counts and positions follow from them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from studio.classifier import NoisyClassifier, Region
from studio.shapes.vocabulary import COLOURS, SHAPES

CELL = 8  # pixels per latent cell (the VAE's down-sampling factor)
NONE = 0  # label of background cells; object labels are 1 + index into COLOURS / SHAPES
COLOUR_NAMES = ("none", *COLOURS)
SHAPE_NAMES = ("none", *SHAPES)
BACKGROUND_NAMES = tuple(COLOURS)
LABEL_KEYS = ("cell_colour", "cell_shape", "background")


def cell_labels(rendering) -> dict[str, np.ndarray]:
    """Per-cell ground truth of a Rendering: a cell belongs to an object when it covers half of it."""
    n, h, w = rendering.masks.shape
    coverage = rendering.masks.reshape(n, h // CELL, CELL, w // CELL, CELL).mean(axis=(2, 4))  # (n, 16, 16)
    colour = np.zeros((h // CELL, w // CELL), dtype=np.uint8)
    shape = np.zeros_like(colour)
    for obj, cover in zip(rendering.scene.objects, coverage):
        inside = cover >= 0.5
        colour[inside] = 1 + list(COLOURS).index(obj.colour)
        shape[inside] = 1 + SHAPES.index(obj.shape)
    return {"cell_colour": colour, "cell_shape": shape, "background": np.uint8(list(COLOURS).index(rendering.scene.background))}


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class FiLMBlock(nn.Module):
    """Residual conv block whose normalised activations are scaled and shifted by the timestep."""

    def __init__(self, channels: int, time_dim: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(16, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.film = nn.Linear(time_dim, 2 * channels)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(time)[:, :, None, None].chunk(2, dim=1)
        return x + self.conv(F.silu(self.norm(x) * (1 + scale) + shift))


class LatentClassifier(nn.Module):
    def __init__(self, channels: int = 64, time_dim: int = 128, dilations: tuple[int, ...] = (1, 2, 4, 1, 2)):
        super().__init__()
        self.config = {"channels": channels, "time_dim": time_dim, "dilations": list(dilations)}
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(4, channels, 3, padding=1)
        self.blocks = nn.ModuleList(FiLMBlock(channels, time_dim, d) for d in dilations)
        self.out_norm = nn.GroupNorm(16, channels)
        self.colour_head = nn.Conv2d(channels, len(COLOUR_NAMES), 1)
        self.shape_head = nn.Conv2d(channels, len(SHAPE_NAMES), 1)
        self.background_head = nn.Linear(channels, len(BACKGROUND_NAMES))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """x_t: (B, 4, h, w) scaled latents; t: (B,) training timesteps. Returns logits:
        cell_colour (B, 9, h, w), cell_shape (B, 4, h, w), background (B, 8)."""
        time = self.time_mlp(timestep_embedding(t.expand(len(x_t)), self.time_dim))
        h = self.stem(x_t)
        for block in self.blocks:
            h = block(h, time)
        h = F.silu(self.out_norm(h))
        return {
            "cell_colour": self.colour_head(h),
            "cell_shape": self.shape_head(h),
            "background": self.background_head(h.mean(dim=(2, 3))),
        }


def loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    total = sum(F.cross_entropy(logits[k], labels[k]) for k in LABEL_KEYS)
    accuracy = {f"acc_{k}": (logits[k].argmax(1) == labels[k]).float().mean().item() for k in LABEL_KEYS}
    return total, accuracy


def save(model: LatentClassifier, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"class": "LatentClassifier", **model.config}, indent=2))


def load_weights(path: Path, **config) -> LatentClassifier:
    model = LatentClassifier(**config)
    model.load_state_dict(load_file(path))
    return model.eval()


def load(folder: Path) -> LatentClassifier:
    config = json.loads((folder / "config.json").read_text())
    config.pop("class")
    config["dilations"] = tuple(config["dilations"])
    return load_weights(folder / "model.safetensors", **config)


# --------------------------------------------------------------------------------------------
# Targets of classifier guidance: what "red object" means to this classifier


@dataclass(frozen=True)
class ClassifierTarget:
    name: str  # "red object", "circle object", "blue background"
    head: str  # classifier output: "cell_colour", "cell_shape" (per latent cell) or "background"
    index: int  # class index in that head's logits (per-cell heads: 0 is "none", i.e. background)


def classifier_targets() -> dict[str, ClassifierTarget]:
    """Every class the shapes classifier can be asked for, by name."""
    targets = [ClassifierTarget(f"{name} object", "cell_colour", i) for i, name in enumerate(COLOUR_NAMES) if i]
    targets += [ClassifierTarget(f"{name} object", "cell_shape", i) for i, name in enumerate(SHAPE_NAMES) if i]
    targets += [ClassifierTarget(f"{name} background", "background", i) for i, name in enumerate(BACKGROUND_NAMES)]
    return {target.name: target for target in targets}


def target_log_prob(logits: dict[str, Tensor], target: ClassifierTarget) -> Tensor:
    """log p(target | x_t) per image (B,) from the classifier's logits.

    Background: the background head's log-softmax. Object attributes are per latent cell: we take the
    log-likelihood that the object's cells all show the attribute (cells independent given x_t), each
    cell counted by the classifier's belief that it is object, pi = 1 - p(none):
        sum_cells pi_cell log p(c | cell, object)
    pi is held fixed (stop-gradient): the gradient changes what the object is, and cannot raise the
    score by turning cells of other colours into background. A sum, not a mean over cells, so an
    object's gradient does not shrink with the image size and strengths stay on Dhariwal & Nichol's scale.
    """
    if target.head == "background":
        return logits["background"].log_softmax(dim=1)[:, target.index]
    cells = logits[target.head].float()  # (B, C, h, w), class 0 = none
    objectness = 1 - cells.softmax(dim=1)[:, 0].detach()  # (B, h, w)
    log_p_given_object = cells[:, target.index] - cells[:, 1:].logsumexp(dim=1)  # renormalised over objects
    return (objectness * log_p_given_object).sum(dim=(1, 2))


def target_log_prob_fn(classifier: LatentClassifier, target: ClassifierTarget) -> Callable[[Tensor, Tensor], Tensor]:
    """The log-probability classifier guidance takes (studio.guidance.LogProb): log p(target | x_t) (B,) of
    scaled VP latents x_t at timestep t (float timesteps, Euler's, are rounded to the trained ones)."""

    def log_prob(x_t: Tensor, t: Tensor) -> Tensor:
        return target_log_prob(classifier(x_t, _timestep(t, x_t)), target)

    return log_prob


def _timestep(t: Tensor, x_t: Tensor) -> Tensor:
    return torch.as_tensor(t, device=x_t.device).double().round().long().reshape(1)


def target_region_fn(classifier: LatentClassifier, target: ClassifierTarget) -> Region | None:
    """Where a target lives in the latent (studio.classifier.Region): for a background, each cell's probability of
    being background, p(none). The background head reads the mean feature of the whole image, so its gradient alone
    recolours or erases the object too (bench/results/guidance_sweep.md). None for object targets: their log p
    already weights cells by objectness."""
    if target.head != "background":
        return None

    def region(x_t: Tensor, t: Tensor) -> Tensor:
        logits = classifier(x_t.float(), _timestep(t, x_t))["cell_colour"]
        return logits.softmax(dim=1)[:, NONE:NONE + 1].to(x_t.dtype)  # (B, 1, h, w)

    return region


def realism(classifier: LatentClassifier, latents: Tensor) -> Tensor:
    """Realism score per image (B,) in [0, 1]: the classifier's mean confidence at t = 0 (its background head
    and the colour and shape of every latent cell). A clean render of the shapes world scores near 1; blurry
    strokes or shapes that are neither circle nor square score lower. SDEdit reports it beside the L2 distance."""
    logits = classifier(latents.float(), torch.zeros(1, dtype=torch.long, device=latents.device))
    background = logits["background"].softmax(1).amax(1)  # (B,)
    colour = logits["cell_colour"].softmax(1).amax(1).mean(dim=(1, 2))  # (B,)
    shape = logits["cell_shape"].softmax(1).amax(1).mean(dim=(1, 2))  # (B,)
    return ((background + colour + shape) / 3).cpu()


def noisy_classifier(classifier: LatentClassifier) -> NoisyClassifier:
    """The shapes classifier as the jobs take it (studio.classifier): its targets, their log-probabilities
    and its realism score."""
    targets = classifier_targets()
    return NoisyClassifier(
        network=classifier,
        targets=tuple(targets),
        log_prob=lambda name: target_log_prob_fn(classifier, targets[name]),
        region=lambda name: target_region_fn(classifier, targets[name]),
        realism=lambda latents: realism(classifier, latents),
    )
