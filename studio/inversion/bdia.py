"""BDIA-DDIM: exact inversion by bi-directional integration (Zhang, Lewis & Kleijn 2023, arXiv 2307.10829).

With trajectory positions k = 0 (x_T) ... N (x_0) and D(x_k -> j) the DDIM step from x_k to position j
with the output out(x_k, t_k) (steps.py), the authors' update (their repository's README form, gamma
in [0, 1)) is, in sampling order,

    x_{k+1} = D(x_k -> k+1) + (1 - gamma) (x_{k-1} - D(x_k -> k-1))          k >= 1

i.e. the DDIM step plus a share of how far the previous state lies from where a backward DDIM step
from x_k would put it. gamma = 1 is plain DDIM; gamma = 0 the symmetric, time-reversible scheme.
Solved for x_{k-1}, it runs backwards with the same single network output per step:

    x_{k-1} = D(x_k -> k-1) + (x_{k+1} - D(x_k -> k+1)) / (1 - gamma)

The first sampling step (x_T -> x_1) has no previous state: it is given by the inversion, which
starts with one DDIM inversion step x_N -> x_{N-1} and is exact from there on. Note the division by
(1 - gamma): each inverse step multiplies the backward residual by 1 / (1 - gamma), so inversion
is stable only near gamma = 0 (measured in bench/inversion.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from studio.denoiser import Denoiser
from studio.events import CancelToken, check_cancelled
from studio.guidance import Guider
from studio.inversion.guider import guided_output
from studio.inversion.steps import StepGrid, affine_step, ddim_coefficients, solve_affine_step
from studio.sampling import StepState


def _position_alpha_bars(grid: StepGrid) -> list[Tensor]:
    """alpha_bar at each trajectory position 0..N (N: where the last sampling step lands)."""
    return [*grid.alpha_bar, grid.alpha_bar_prev[-1]]


def _both_steps(denoiser: Denoiser, guider: Guider, grid: StepGrid, alpha_bars: list[Tensor], x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(D(x_k -> k-1), D(x_k -> k+1)): the backward and forward DDIM steps from x_k with one network output."""
    out = guided_output(denoiser, guider, x, k, grid.timesteps[k].to(x.device))
    backward = affine_step(out, x, ddim_coefficients(alpha_bars[k], alpha_bars[k - 1], grid.prediction_type))
    return backward, affine_step(out, x, grid.coefficients(k))


def bdia_sampling_steps(denoiser: Denoiser, guider: Guider, grid: StepGrid, x_start: Tensor, x_first: Tensor, gamma: float,
                        cancel: CancelToken | None = None) -> Iterator[StepState]:
    """Denoise from the pair (x_0 = x_T, x_1), yielding {i, t, x} after each sampling step i (step 0 lands
    on the given x_1)."""
    alpha_bars = _position_alpha_bars(grid)
    previous, x = x_start, x_first
    yield {"i": 0, "t": grid.timesteps[0], "x": x}
    for k in range(1, len(grid)):
        check_cancelled(cancel, k, len(grid))
        backward, forward = _both_steps(denoiser, guider, grid, alpha_bars, x, k)
        previous, x = x, forward + (1 - gamma) * (previous - backward)
        yield {"i": k, "t": grid.timesteps[k], "x": x}


def bdia_inversion_steps(denoiser: Denoiser, guider: Guider, grid: StepGrid, latents: Tensor, gamma: float,
                         cancel: CancelToken | None = None) -> Iterator[StepState]:
    """Invert x_N = latents; yields {i, t, x}: the start state of sampling step i, i = N-1 down to 0."""
    alpha_bars = _position_alpha_bars(grid)
    n = len(grid)
    # the one approximate step: DDIM inversion x_N -> x_{N-1} with the output at label t_{N-1}
    t = grid.timesteps[n - 1].to(latents.device)
    following, x = latents, solve_affine_step(guided_output(denoiser, guider, latents, n - 1, t), latents,
                                              grid.coefficients(n - 1))
    yield {"i": n - 1, "t": t, "x": x}
    for k in range(n - 1, 0, -1):
        check_cancelled(cancel, n - k, n)
        backward, forward = _both_steps(denoiser, guider, grid, alpha_bars, x, k)
        following, x = x, backward + (following - forward) / (1 - gamma)
        yield {"i": k - 1, "t": grid.timesteps[k - 1], "x": x}
