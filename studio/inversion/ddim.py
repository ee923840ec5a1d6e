"""DDIM inversion (Song et al. 2021 §4.3; Mokady et al. 2023's pivot): x_0 -> x_T, the DDIM step backwards.

The map x_t -> x_{t+1} solves the sampler's step (Song et al. 2021, eq. 12 with sigma = 0) for its start
point with the network output held at its value at the state we have (out(x_t) ~ out(x_{t+1}); the only approximation).
It runs through the one sampling loop (studio.sampling.sample_steps) with `InverseDDIM` as its step
rule, so guidance, cancellation and step reporting are the sampler's own.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from studio.denoiser import Denoiser
from studio.events import CancelToken
from studio.guidance import Guider
from studio.inversion.guider import InverseOrder
from studio.inversion.steps import StepGrid, solve_affine_step
from studio.sampling import StepState, sample_steps


class InverseDDIM:
    """A step rule (studio.sampling.StepRule) that goes up in noise: inverse step k, at the label of
    sampling step N-1-k, turns the state that step lands on into the state it starts from.
    Timesteps: `inverse_timesteps`."""

    def __init__(self, grid: StepGrid):
        self.grid = grid

    @property
    def inverse_timesteps(self) -> Tensor:
        return self.grid.timesteps.flip(0)  # (N,) ascending: x_0's side first

    def scale_model_input(self, x: Tensor, t: Tensor) -> Tensor:
        return x  # DDIM states are the VP x_t the network expects

    def step_at(self, k: int, out: Tensor, t: Tensor, x: Tensor) -> Tensor:
        return solve_affine_step(out, x, self.grid.coefficients(len(self.grid) - 1 - k))


def ddim_inversion_steps(denoiser: Denoiser, guider: Guider, grid: StepGrid, latents: Tensor,
                         cancel: CancelToken | None = None) -> Iterator[StepState]:
    """Invert `latents` (x_0, (B, C, h, w)) along `grid`, yielding the sampler's states; state k's "x" is
    the start point of sampling step N-1-k, so the last one is x_T. Guided by `guider` (w = 1: the
    prompt alone, the guidance-neutral map NTI pivots on; any w to show why w = 1). The guider is a sampling one:
    it is told the sampling step each inverse step undoes (structure's windows hold both ways)."""
    stepper = InverseDDIM(grid)
    timesteps = stepper.inverse_timesteps.to(latents.device)
    return sample_steps(denoiser, InverseOrder(guider, len(grid)), stepper, timesteps, latents, cancel)

