"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov & Michaeli, CVPR 2024, "An Edit Friendly DDPM Noise
Space", eqs. 6-7 and Alg. 1).

The stochastic DDIM / DDPM sampler (Song et al. 2021 eq. 12 at eta = 1) steps x_{t-1} = mu_t(x_t) + sigma_t z_t,
with mu_t affine in x_t and the network output (steps.ddim_coefficients with eta). The paper's noise space: draw
every x_t independently from the image (eq. 6),

    x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps_t,    eps_t ~ N(0, I) independent per t,

then take the residual of each step under the caption at the sampling guidance (eq. 7): sigma_t z_t =
x_{t-1} - mu_t(x_t). Sampling from x_T with those residuals retraces the x_t exactly (up to float rounding);
an edit samples the target prompt with the same residuals, which carry the image's structure. We store the
additive corrections c_t = sigma_t z_t rather than z_t: sigma_t vanishes where the last step lands on
alpha_bar = 1, and nothing is divided by it. On the trajectory convention of result.py, position i (i < N) is
drawn at alpha_bar[i] (position 0, x_T, is pure noise at zero terminal SNR) and position N is x_0 itself.
Both rules below are step rules of the one sampling loop (studio.sampling.sample_steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from studio.inversion.steps import StepGrid, affine_step

DDPM_ETA = 1.0  # the paper's sampler: DDPM's posterior variance (DDIM with eta = 1)


def noisy_states(latents: Tensor, grid: StepGrid, generator: torch.Generator) -> list[Tensor]:
    """The N + 1 trajectory positions of eq. 6: position i (< N) drawn at alpha_bar[i] with its own noise from
    `generator` (CPU, so a seed gives the same states on every device), position N the latents (1, C, h, w)."""
    states = []
    for alpha_bar in grid.alpha_bar.tolist():
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
        states.append(alpha_bar ** 0.5 * latents + (1 - alpha_bar) ** 0.5 * noise)
    return [*states, latents]


class NoiseSpaceInversion:
    """A step rule that walks the independent `states` in sampling order and records, per step i, the correction
    c_i = states[i + 1] - mu_i(states[i]) (eq. 7 times sigma_i), mu_i the eta = 1 DDIM mean under the loop's guider."""

    def __init__(self, grid: StepGrid, states: Sequence[Tensor]):
        self.grid, self.states = grid, states
        self.corrections: list[Tensor] = []

    def scale_model_input(self, x: Tensor, t: Tensor) -> Tensor:
        return x

    def step_at(self, i: int, out: Tensor, t: Tensor, x: Tensor) -> Tensor:
        following = self.states[i + 1]
        self.corrections.append(following - affine_step(out, x, self.grid.coefficients(i, DDPM_ETA)))
        return following


class CorrectedDDIM:
    """The step rule that samples an inversion with corrections: x_{i+1} = mu_i(x_i) + c_i (the eta = 1 DDIM mean plus
    the stored correction, the same c_i for every image of the batch: Prompt-to-Prompt's source and target alike).
    Runs over the grid's steps from `first_step` (an edit from t_edit): loop step i is grid step first_step + i."""

    def __init__(self, grid: StepGrid, corrections: Sequence[Tensor], first_step: int = 0):
        if len(corrections) != len(grid):
            raise ValueError(f"{len(corrections)} corrections for a grid of {len(grid)} steps")
        self.grid, self.corrections, self.first_step = grid, corrections, first_step

    def scale_model_input(self, x: Tensor, t: Tensor) -> Tensor:
        return x

    def step_at(self, i: int, out: Tensor, t: Tensor, x: Tensor) -> Tensor:
        step = self.first_step + i
        correction = self.corrections[step].to(x.device, x.dtype)  # (1, C, h, w): every image of the batch
        return affine_step(out, x, self.grid.coefficients(step, DDPM_ETA)) + correction
