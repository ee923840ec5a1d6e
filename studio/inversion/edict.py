"""EDICT: exact inversion with two coupled sequences (Wallace, Gokul & Naik 2022, arXiv 2211.12446).

Sampling step i (Alg. 2), with the affine DDIM step x_prev = A x + B out (steps.py) and the mixing p:

    x_inter = A x_i + B out(y_i)            y_inter = A y_i + B out(x_inter)
    x_{i+1} = p x_inter + (1 - p) y_inter   y_{i+1} = p y_inter + (1 - p) x_{i+1}

Every line can be solved for its left-hand side's inputs with the same network outputs, so the
inversion (Alg. 1) retraces it exactly, up to float rounding:

    y_inter = (y_{i+1} - (1 - p) x_{i+1}) / p    x_inter = (x_{i+1} - (1 - p) y_inter) / p
    y_i = (y_inter - B out(x_inter)) / A          x_i = (x_inter - B out(y_i)) / A

Two UNet passes per step in each direction (they cannot be batched: each needs the other's result).
The states may be kept in float64 (CPU) while the UNet runs in float32: see guider.guided_output.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from studio.denoiser import Denoiser
from studio.events import CancelToken, check_cancelled
from studio.guidance import Guider
from studio.inversion.guider import guided_output
from studio.inversion.steps import StepGrid, affine_step, solve_affine_step
from studio.sampling import StepState


def mix(a: Tensor, b: Tensor, p: float) -> Tensor:
    """EDICT's averaging layer: p a + (1 - p) b (Wallace et al. eq. 13/14)."""
    return p * a + (1 - p) * b


def unmix(mixed: Tensor, b: Tensor, p: float) -> Tensor:
    """The a with mix(a, b, p) = mixed."""
    return (mixed - (1 - p) * b) / p


def edict_sampling_steps(denoiser: Denoiser, guider: Guider, grid: StepGrid, x: Tensor, y: Tensor, p: float,
                         cancel: CancelToken | None = None) -> Iterator[StepState]:
    """Denoise the pair (x, y) from trajectory position 0 (x_T); yields {i, t, x, y} after each step."""
    for i, t in enumerate(grid.timesteps.to(x.device)):
        check_cancelled(cancel, i, len(grid))
        coefficients = grid.coefficients(i)
        x_inter = affine_step(guided_output(denoiser, guider, y, i, t), x, coefficients)
        y_inter = affine_step(guided_output(denoiser, guider, x_inter, i, t), y, coefficients)
        x = mix(x_inter, y_inter, p)
        y = mix(y_inter, x, p)
        yield {"i": i, "t": t, "x": x, "y": y}


def edict_inversion_steps(denoiser: Denoiser, guider: Guider, grid: StepGrid, latents: Tensor, p: float,
                          cancel: CancelToken | None = None) -> Iterator[StepState]:
    """Invert x_0 = y_0 = latents up to x_T; yields {i, t, x, y}: the start states of sampling step i,
    for i = N-1 down to 0."""
    x = y = latents
    for done, i in enumerate(reversed(range(len(grid)))):
        check_cancelled(cancel, done, len(grid))
        t = grid.timesteps[i].to(latents.device)
        coefficients = grid.coefficients(i)
        y_inter = unmix(y, x, p)
        x_inter = unmix(x, y_inter, p)
        y = solve_affine_step(guided_output(denoiser, guider, x_inter, i, t), y_inter, coefficients)
        x = solve_affine_step(guided_output(denoiser, guider, y, i, t), x_inter, coefficients)
        yield {"i": i, "t": t, "x": x, "y": y}
