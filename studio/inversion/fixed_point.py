"""Fixed-point inversion: each DDIM inversion step solved for its start point by fixed-point iteration
(Pan et al. 2023, "Effective real image editing with accelerated iterative diffusion inversion" (AIDI): the
inversion step as a fixed-point problem; Garibi et al. 2024, "ReNoise", Alg. 1: renoising iterations per step).
Plain iteration, without AIDI's acceleration or ReNoise's averaging of the last iterates: on the embedded model
it converges in a few iterations (bench/results/inversion.md).

The DDIM step x_prev = A x_t + B out(x_t) (steps.py) is an implicit equation for its start point x_t:

    x_t = (x_prev - B out(x_t)) / A                   (the fixed point of F(x) = solve_affine_step(out(x), x_prev))

DDIM inversion (ddim.py) takes one evaluation, x_t ~ F(x_prev), i.e. out(x_t) ~ out(x_prev): where the network's
output changes fast between the two states (few steps, high noise, an under-described caption) that guess is far
off and the sampler does not come back to the image. Iterating x^(j+1) = F(x^(j)) from that guess converges to the
state that the DDIM sampler's step really maps onto x_prev, with the guidance of the *sampling* run (w), so the plain
DDIM sampler at w reconstructs. One guided UNet pass per iteration; an iteration moving the state by less than the
tolerance (mean squared) ends the step early, and one moving it more than the iteration before ends it at the
midpoint of the last two iterates: the map is no contraction there and the iterates swing about the fixed point
(on the embedded model at 10 steps, a mid-noise step from its second iteration; without the midpoint, 10 iterations
reconstructed an under-described image at 22 dB where 3 gave 32; with it, 32.6 dB).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from studio.denoiser import Denoiser
from studio.events import CancelToken
from studio.guidance import Guider
from studio.inversion.ddim import InverseDDIM
from studio.inversion.guider import InverseOrder, guided_output
from studio.inversion.steps import StepGrid, solve_affine_step
from studio.sampling import StepState, sample_steps


class FixedPointInverseDDIM(InverseDDIM):
    """InverseDDIM whose step k refines DDIM inversion's guess by `iterations` fixed-point iterations, each with a
    guided output of `guider` (the inversion-order guider the loop runs with) at the refined state. `updates[k]`:
    the mean squared move of each iteration (the last under `tolerance` when it stopped early, or above the one before
    when it stopped on a growing move)."""

    def __init__(self, grid: StepGrid, denoiser: Denoiser, guider: Guider, iterations: int, tolerance: float):
        super().__init__(grid)
        self.denoiser, self.guider = denoiser, guider
        self.iterations, self.tolerance = iterations, tolerance
        self.updates: list[list[float]] = []

    def step_at(self, k: int, out: Tensor, t: Tensor, x: Tensor) -> Tensor:
        coefficients = self.grid.coefficients(len(self.grid) - 1 - k)
        state = solve_affine_step(out, x, coefficients)  # DDIM inversion's guess: out at x_prev
        moves = []
        for _ in range(self.iterations):
            refined = solve_affine_step(guided_output(self.denoiser, self.guider, state, k, t), x, coefficients)
            # the move F(x) - x is the step's residual at x (over A): (A x + B out(x) - x_prev) / A
            moves.append(float((refined.double() - state.double()).pow(2).mean()))
            if len(moves) > 1 and moves[-1] > moves[-2]:
                # no contraction here: the iterates swing about the fixed point; their midpoint is nearer to it
                state = (state + refined) / 2
                break
            state = refined
            if moves[-1] < self.tolerance:
                break
        self.updates.append(moves)
        return state


def fixed_point_inversion_steps(denoiser: Denoiser, guider: Guider, grid: StepGrid, latents: Tensor, iterations: int,
                                tolerance: float, cancel: CancelToken | None = None
                                ) -> tuple[FixedPointInverseDDIM, Iterator[StepState]]:
    """Invert `latents` (x_0) along `grid` through the one sampling loop, as ddim_inversion_steps does, each step
    iterated to its fixed point under `guider` (a sampling guider: CFG at the w the inversion is sampled with).
    Returns the step rule (its per-step `updates`) and the sampler's states (the last one's "x" is x_T)."""
    inverse_guider = InverseOrder(guider, len(grid))
    stepper = FixedPointInverseDDIM(grid, denoiser, inverse_guider, iterations, tolerance)
    timesteps = stepper.inverse_timesteps.to(latents.device)
    return stepper, sample_steps(denoiser, inverse_guider, stepper, timesteps, latents, cancel)
