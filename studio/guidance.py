"""Guidance: pure maths that combines per-condition predictions into one.

A guider lists the conditions it needs (`conds`, evaluated by the denoiser in one batched call)
and `combine`s their predictions. Every rule here is affine with weights summing to one, so it
holds for eps, v and x0 predictions alike (seed §2.1, "the same mixing rule").
Multi-condition guidance (issue #4) is another guider over more conds, not a new loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from studio.conditioning import Cond


def cfg(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): eps_u + w (eps_c - eps_u)."""
    return uncond + scale * (cond - uncond)


class Guider(Protocol):
    conds: Sequence[Cond]  # what the denoiser evaluates, in this order
    primary: int  # position in `conds` of the prompt being drawn (attention maps show it)

    def combine(self, predictions: Sequence[Tensor], t: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    cond: Cond
    uncond: Cond
    scale: float

    @property
    def conds(self) -> list[Cond]:
        # At w = 1 the unconditional branch cancels out: skip it and halve the UNet batch.
        return [self.cond] if self.scale == 1 else [self.uncond, self.cond]

    @property
    def primary(self) -> int:
        return len(self.conds) - 1

    def combine(self, predictions: Sequence[Tensor], t: Tensor) -> Tensor:
        if self.scale == 1:
            return predictions[0]
        uncond, cond = predictions
        return cfg(uncond, cond, self.scale)
