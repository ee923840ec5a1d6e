"""Classifier-free guidance with a different unconditional embedding at every step.

Null-text inversion optimises one null embedding O_t per step (Mokady et al. 2023); negative-prompt
inversion (Miyake et al. 2023) uses the prompt's own embedding as the null one; Prompt-to-Prompt edits of a real image sample
with the inversion's embeddings so its source branch reproduces the reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from studio.conditioning import Cond
from studio.denoiser import Denoiser
from studio.guidance import Guider, cfg


@dataclass
class PerStepUncondGuidance:
    """eps_u(O_i) + w (eps_c - eps_u(O_i)) at sampling step i, with O_i = unconds[i].

    Stateless: the sampler tells the step index, so a run that starts part-way (an edit from t_edit)
    passes the null embeddings from its first step on."""

    cond: Cond
    unconds: Sequence[Cond]  # one per step of the run
    scale: float

    @property
    def primary(self) -> int:
        return 1

    @property
    def unconditional(self) -> tuple[int, ...]:
        return (0,)

    def conds_at(self, i: int) -> list[Cond]:
        if not 0 <= i < len(self.unconds):
            raise IndexError(f"step {i} of a run with {len(self.unconds)} null embeddings")
        return [self.unconds[i], self.cond]

    def combine(self, predictions: Sequence[Tensor], i: int, t: Tensor, x_t: Tensor | None = None) -> Tensor:
        uncond, cond = predictions
        return cfg(uncond, cond, self.scale)


@dataclass
class InverseOrder:
    """`inner`, a guider for sampling, told the index of the sampling step an inversion step inverts (inverse step k
    undoes sampling step N-1-k), so per-step data (a control's window, a schedule) is the same in both directions."""

    inner: Guider
    steps: int  # N

    @property
    def primary(self) -> int:
        return self.inner.primary

    @property
    def unconditional(self) -> tuple[int, ...]:
        return self.inner.unconditional

    def conds_at(self, k: int) -> Sequence[Cond]:
        return self.inner.conds_at(self.steps - 1 - k)

    def combine(self, predictions: Sequence[Tensor], k: int, t: Tensor, x_t: Tensor | None = None) -> Tensor:
        return self.inner.combine(predictions, self.steps - 1 - k, t, x_t)


def guided_output(denoiser: Denoiser, guider: Guider, x: Tensor, i: int, t: Tensor) -> Tensor:
    """The guided network output of step i at (x, t) in x's dtype: the UNet runs in the model's dtype, so
    states kept in float64 (EDICT/BDIA on the CPU) see exactly the prediction their float32 copy would."""
    model_input = x.to(denoiser.unet.dtype)
    predictions = denoiser.predict(model_input, t, guider.conds_at(i))
    return guider.combine(predictions, i, t, model_input).to(x.dtype)
