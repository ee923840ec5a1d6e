"""Classifier-free guidance with a different unconditional embedding at every step.

Null-text inversion optimises one null embedding O_t per step (seed 3.1); negative-prompt inversion (3.2)
uses the prompt's own embedding as the null one; Prompt-to-Prompt edits of a real image sample
with the inversion's embeddings so its source branch reproduces the reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from studio.conditioning import Cond
from studio.guidance import cfg


@dataclass
class PerStepUncondGuidance:
    """eps_u(O_i) + w (eps_c - eps_u(O_i)) at sampling step i, with O_i = unconds[i].

    A guider serves one run and follows its steps in order: `conds` gives step i's pair, `combine`
    checks that it was called at timesteps[i] (so it cannot silently drift) and moves on to i + 1.
    """

    cond: Cond
    unconds: Sequence[Cond]  # one per step
    scale: float
    timesteps: Tensor  # (N,) the run's timesteps, descending
    step: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if len(self.unconds) != len(self.timesteps):
            raise ValueError(f"{len(self.unconds)} null embeddings for {len(self.timesteps)} steps")

    @property
    def conds(self) -> list[Cond]:
        return [self.unconds[self.step], self.cond]

    @property
    def primary(self) -> int:
        return 1

    def combine(self, predictions: Sequence[Tensor], t: Tensor, x_t: Tensor | None = None) -> Tensor:
        if int(t) != int(self.timesteps[self.step]):
            raise ValueError(f"step {self.step} expected timestep {int(self.timesteps[self.step])}, got {int(t)}")
        self.step += 1
        uncond, cond = predictions
        return cfg(uncond, cond, self.scale)


def guided_output(denoiser, guider, x: Tensor, t: Tensor) -> Tensor:
    """One guided network output at (x, t) in x's dtype: the UNet runs in the model's dtype, so states kept
    in float64 (EDICT/BDIA on the CPU) see exactly the prediction their float32 copy would."""
    model_input = x.to(denoiser.unet.dtype)
    predictions = denoiser.predict(model_input, t, guider.conds)
    return guider.combine(predictions, t, model_input).to(x.dtype)
