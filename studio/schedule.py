"""Pure maths of the variance-preserving forward process x_t = sqrt(ab)*x0 + sqrt(1-ab)*eps.

`ab` is alpha_bar_t (the scheduler's `alphas_cumprod[t]`), a float or a broadcastable tensor.
Conversions between the three parameterisations a network may predict (eps, v, x0), alpha_bar of
a timestep, and noising an image to a chosen t (SDEdit; with x0 and eps estimates it is also the
deterministic DDIM step of Song et al. 2021, eq. 12 with sigma = 0, which masked DDIM takes). The
DDIM step as the affine map inversion solves lives in studio/inversion/steps.py.
With zero terminal SNR (ab = 0 at t = T) eps -> x0 divides by zero; v -> x0 does not, which is
why v-prediction models are converted through v whenever possible.
"""

from __future__ import annotations

import torch
from torch import Tensor


def alpha_bar_at(alphas_cumprod: Tensor, t: Tensor | float) -> Tensor:
    """alpha_bar of timestep t; float timesteps (Euler's) index the nearest trained one."""
    return alphas_cumprod[int(torch.as_tensor(t).round().item())]


def alpha_bars_at(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """alpha_bar_at of each of a run's timesteps (N,), on the CPU in alphas_cumprod's dtype."""
    indices = torch.as_tensor(timesteps).double().round().long().cpu()
    return alphas_cumprod.cpu()[indices]


def _roots(alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def x0_from_eps(eps: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab)."""
    a, s = _roots(alpha_bar)
    return (x_t - s.to(x_t) * eps) / a.to(x_t)


def eps_from_x0(x0: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1-ab)."""
    a, s = _roots(alpha_bar)
    return (x_t - a.to(x_t) * x0) / s.to(x_t)


def x0_from_v(v: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """x0 = sqrt(ab) x_t - sqrt(1-ab) v, with v = sqrt(ab) eps - sqrt(1-ab) x0 (Salimans & Ho 2022)."""
    a, s = _roots(alpha_bar)
    return a.to(x_t) * x_t - s.to(x_t) * v


def eps_from_v(v: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """eps = sqrt(ab) v + sqrt(1-ab) x_t."""
    a, s = _roots(alpha_bar)
    return a.to(x_t) * v + s.to(x_t) * x_t


def v_from_eps(eps: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """v = (eps - sqrt(1-ab) x_t) / sqrt(ab)."""
    a, s = _roots(alpha_bar)
    return (eps - s.to(x_t) * x_t) / a.to(x_t)


def v_from_x0(x0: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """v = (sqrt(ab) x_t - x0) / sqrt(1-ab): x0_from_v solved for v; finite at zero SNR (ab = 0: v = -x0)."""
    a, s = _roots(alpha_bar)
    return (a.to(x_t) * x_t - x0) / s.to(x_t)


def _given(output: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    return output


def _convert(table: dict, prediction_type: str, output: Tensor, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    if prediction_type not in table:
        raise ValueError(f"unknown prediction type {prediction_type!r}")
    return table[prediction_type](output, x_t, alpha_bar)


def to_x0(prediction: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction_type: str) -> Tensor:
    """Clean-image estimate from a network output of any parameterisation."""
    table = {"epsilon": x0_from_eps, "v_prediction": x0_from_v, "sample": _given}
    return _convert(table, prediction_type, prediction, x_t, alpha_bar)


def to_eps(prediction: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction_type: str) -> Tensor:
    """Noise estimate from a network output of any parameterisation."""
    table = {"epsilon": _given, "v_prediction": eps_from_v, "sample": eps_from_x0}
    return _convert(table, prediction_type, prediction, x_t, alpha_bar)


def from_x0(x0: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction_type: str) -> Tensor:
    """The network output of `prediction_type` that a clean-image estimate corresponds to (inverse of to_x0)."""
    table = {"epsilon": eps_from_x0, "v_prediction": v_from_x0, "sample": _given}
    return _convert(table, prediction_type, x0, x_t, alpha_bar)


def from_eps(eps: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction_type: str) -> Tensor:
    """The network output of `prediction_type` that a noise estimate corresponds to (inverse of to_eps).
    Undefined at zero SNR (ab = 0) for v and x0: there eps = x_t says nothing about x0."""
    table = {"epsilon": _given, "v_prediction": v_from_eps, "sample": x0_from_eps}
    return _convert(table, prediction_type, eps, x_t, alpha_bar)


def noise_to(x0: Tensor, noise: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """Forward process in one jump (SDEdit's x_{t0}): x_t = sqrt(ab) x0 + sqrt(1-ab) noise."""
    a, s = _roots(alpha_bar)
    return a.to(x0) * x0 + s.to(x0) * noise


def velocity(x0: Tensor, noise: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """The v-prediction target of x_t = noise_to(x0, noise, ab): v = sqrt(ab) noise - sqrt(1-ab) x0
    (Salimans & Ho 2022); finite at zero terminal SNR, where v = -x0."""
    a, s = _roots(alpha_bar)
    return a.to(x0) * noise - s.to(x0) * x0
