"""A model's noisy-latent classifier as the jobs see it (classifier guidance: Dhariwal & Nichol 2021 §4).

Which targets it offers, log p(target | x_t) for each (what studio.guidance.ClassifierGuidance takes) and,
where the classifier can judge clean latents, a realism score (SDEdit's). Nothing here knows a particular
classifier: a model world builds one (models.py builds the shapes world's with
studio.shapes.classifier.noisy_classifier), so another model's classifier plugs in without touching the jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from studio.guidance import LogProb, Region


@dataclass(frozen=True)
class NoisyClassifier:
    network: nn.Module  # the classifier itself, for callers that read its raw outputs (benches, judges, tests)
    targets: tuple[str, ...]  # what guidance can steer towards, by name ("red object", ...)
    log_prob: Callable[[str], LogProb]  # target name -> log_prob(x_t, t) -> (B,) log p(target | x_t)
    realism: Callable[[Tensor], Tensor] | None = None  # clean latents (B, C, h, w) -> (B,) score in [0, 1]
    # target name -> where it lives in x_t (studio.guidance.Region), or None for the whole image; the normalised
    # guidance weights the gradient by it
    region: Callable[[str], Region | None] = lambda name: None
