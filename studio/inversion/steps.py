"""The deterministic DDIM step as an affine map, and the pieces every inversion method builds on.

A DDIM step (Song et al. 2021, eq. 12 with sigma = 0) from x_t to x_prev, with the network output
`out` held fixed, is affine in x_t:

    x_prev = A x_t + B out        (A, B) = ddim_coefficients(ab_t, ab_prev, prediction_type)

so it can be solved for x_t exactly: x_t = (x_prev - B out) / A. Inversion methods differ only in
where `out` is evaluated: DDIM inversion (Song et al. 2021 §4.3) evaluates it at the state it already has
(x_prev, an approximation); EDICT (Wallace et al. 2022, Alg. 1/2) and BDIA (Zhang et al. 2023)
arrange their states so that the very same `out` is available in both directions (exact).

Why the affine form in the model's own parameterisation: the embedded model predicts v with zero
terminal SNR (ab = 0 at t = 999). The eps form of the step, x_prev = sqrt(ab_prev/ab_t) x_t + ...,
divides by sqrt(ab_t) = 0 there; the v form is a rotation, A = cos(phi_t - phi_prev) with
sqrt(ab) = cos(phi), which is finite and invertible at every t, the last one included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _roots(alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def ddim_sigma(alpha_bar_t: float | Tensor, alpha_bar_prev: float | Tensor, eta: float) -> float:
    """sigma_t of the DDIM step with stochasticity `eta` (Song et al. 2021, eq. 16):
    eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev); eta = 1 is DDPM's posterior (Ho et al. 2020).
    Finite at zero terminal SNR (ab_t = 0: eta sqrt(1 - ab_prev)). Computed in float64."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    return float(eta * variance.clamp(min=0).sqrt())  # clamp: rounding below 0 where ab_t ~ ab_prev


def ddim_coefficients(alpha_bar_t: float | Tensor, alpha_bar_prev: float | Tensor,
                      prediction_type: str, eta: float = 0.0) -> tuple[float, float]:
    """(A, B) of the DDIM step x_prev = A x_t + B out (+ sigma z), for a network output `out` of `prediction_type`.

    Song et al. 2021, eq. 12: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z, sigma =
    ddim_sigma(ab_t, ab_prev, eta); with x0 = p x_t + q out and eps = r x_t + u out (schedule.py's conversions)
      epsilon:      x0 = (x_t - s_t eps) / a_t                      p, q, r, u = 1/a_t, -s_t/a_t, 0, 1
      v_prediction: x0 = a_t x_t - s_t v,  eps = a_t v + s_t x_t   p, q, r, u = a_t, -s_t, s_t, a_t
      sample:       eps = (x_t - a_t x0) / s_t                      p, q, r, u = 0, 1, 1/s_t, -a_t/s_t
    A = a_p p + d r, B = a_p q + d u with d = sqrt(1 - ab_prev - sigma^2) (d = s_p at eta = 0: the deterministic
    step), where a = sqrt(ab), s = sqrt(1 - ab). The noise term sigma z is not part of (A, B): a caller adds it.
    Computed in float64.
    """
    a_t, s_t = _roots(alpha_bar_t)
    a_p, s_p = _roots(alpha_bar_prev)
    if prediction_type == "epsilon":
        p, q, r, u = 1 / a_t, -s_t / a_t, 0.0, 1.0
    elif prediction_type == "v_prediction":
        p, q, r, u = a_t, -s_t, s_t, a_t
    elif prediction_type == "sample":
        p, q, r, u = 0.0, 1.0, 1 / s_t, -a_t / s_t
    else:
        raise ValueError(f"unknown prediction type {prediction_type!r}")
    d = s_p if eta == 0 else (s_p ** 2 - ddim_sigma(alpha_bar_t, alpha_bar_prev, eta) ** 2).clamp(min=0).sqrt()
    return float(a_p * p + d * r), float(a_p * q + d * u)


def affine_step(out: Tensor, x: Tensor, coefficients: tuple[float, float]) -> Tensor:
    """x_prev = A x + B out: one DDIM step (sampling direction)."""
    a, b = coefficients
    return a * x + b * out


def solve_affine_step(out: Tensor, x_prev: Tensor, coefficients: tuple[float, float]) -> Tensor:
    """x = (x_prev - B out) / A: the state a DDIM step with this output came from (inversion direction)."""
    a, b = coefficients
    return (x_prev - b * out) / a


@dataclass(frozen=True)
class StepGrid:
    """The alpha_bars of a DDIM run: step i goes from timesteps[i] (alpha_bar[i]) to its previous state
    (alpha_bar_prev[i]), exactly as diffusers' DDIMScheduler.step computes it (prev = t - T // N, or the
    final alpha_cumprod after the last step), so inversions reconstruct through that scheduler."""

    timesteps: Tensor  # (N,) descending, on the CPU
    alpha_bar: Tensor  # (N,) float64
    alpha_bar_prev: Tensor  # (N,) float64
    prediction_type: str

    @classmethod
    def of(cls, scheduler, prediction_type: str) -> StepGrid:
        """From a DDIMScheduler after set_timesteps."""
        timesteps = scheduler.timesteps.cpu()
        alphas = scheduler.alphas_cumprod.cpu().double()
        ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        final = torch.as_tensor(scheduler.final_alpha_cumprod).double()
        prev = [alphas[t - ratio] if t - ratio >= 0 else final for t in timesteps.tolist()]
        return cls(timesteps, alphas[timesteps], torch.stack(prev), prediction_type)

    def __len__(self) -> int:
        return len(self.timesteps)

    def coefficients(self, i: int, eta: float = 0.0) -> tuple[float, float]:
        """(A, B) of sampling step i (with stochasticity eta: its mean, the sigma z term apart)."""
        return ddim_coefficients(self.alpha_bar[i], self.alpha_bar_prev[i], self.prediction_type, eta)

    def sigma(self, i: int, eta: float) -> float:
        """sigma of sampling step i at stochasticity eta (ddim_sigma)."""
        return ddim_sigma(self.alpha_bar[i], self.alpha_bar_prev[i], eta)
