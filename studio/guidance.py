"""Guidance: pure maths that combines per-condition predictions into one, and the guiders using it.

A guider lists the conditions it needs at step i (`conds_at(i)`, evaluated by the denoiser in ONE
batched call) and `combine`s their predictions; the sampler tells it i. Predictions arrive in the model's own
parameterisation (eps, v or x0). Affine rules whose weights sum to one -- CFG and its
multi-condition form -- commute with the conversions between them (each conversion is affine in
the prediction), so they run on the raw outputs. Guidance rescale (a ratio of standard deviations) and the
classifier gradient (a shift of the score) do not; those convert to one common form first (x0 and
eps respectively) and back, so every prediction type gets the same result -- no special cases.

    cfg                      eps_u + w (eps_c - eps_u)                           (Ho & Salimans 2022 eq. 6)
    multi_condition_cfg      eps_u + sum_k w_k(t) (eps_k - eps_u), w_k < 0 negative  (Liu et al. 2022, AND/NOT)
    rescale_noise_cfg        std-matching of the guided x0 to the prompt's x0    (Lin et al. 2023 §3.4; diffusers')
    classifier_guided_eps    eps - sqrt(1-ab) s(t) grad log p(c | x_t)           (Dhariwal & Nichol 2021 eq. 14)
    normalised_classifier_eps  eps - s(t) c |eps| grad / |grad|, per image       (ours: one step size for every target)
    schedule_factors         f(t) of w_k(t) = w_k f(t): constant, SNR^alpha, sigma^-beta, ramps, windows
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from torch import Tensor

from studio import schedule
from studio.conditioning import Cond

# --------------------------------------------------------------------------------------------
# Pure maths


def cfg(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): eps_u + w (eps_c - eps_u)."""
    return uncond + scale * (cond - uncond)


def multi_condition_cfg(uncond: Tensor, conds: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """eps_u + sum_k w_k (eps_k - eps_u): Liu et al. 2022's concept conjunction (AND); a negative w_k is a
    negative condition, their negation (NOT) in the same sum. With one condition this is `cfg` (Ho &
    Salimans 2022 eq. 6, with w = 1 + their w), operation for operation."""
    guided = uncond
    for cond, weight in zip(conds, weights, strict=True):
        guided = guided + weight * (cond - uncond)
    return guided


def classifier_guided_eps(eps: Tensor, gradient: Tensor, alpha_bar: float | Tensor, strength: float) -> Tensor:
    """Dhariwal & Nichol 2021 eq. 14: eps_hat = eps - sqrt(1 - ab) s grad_x log p(c | x_t).
    The score is -eps / sqrt(1 - ab) (their eq. 11), so this adds s grad log p to it: the classifier term
    of the conditional reverse SDE (Song et al. 2021, score SDE, eq. 14), scaled by s."""
    noise_scale = torch.as_tensor(1 - alpha_bar, dtype=torch.float64).sqrt().to(eps)
    return eps - noise_scale * strength * gradient


NORMALISED_STEP = 0.075  # c, the unit of strength: 2 moves eps by 15% of its norm (bench/guidance_sweep.py ranks strengths)


def normalised_classifier_eps(eps: Tensor, gradient: Tensor, strength: float) -> Tensor:
    """eps - s c |eps| g / |g| per image, g = grad_x log p(c | x_t): eq. 14's direction with a step of fixed size
    relative to eps (our own normalisation, from no paper). The raw gradient's norm spans orders of magnitude
    across targets, noise levels and images (a confident classifier's log p is flat, a doubtful one's steep), so
    one strength of eq. 14 overshoots some targets and barely moves others; here a strength means the same
    push for every target. A zero gradient (a classifier already certain) moves nothing."""
    def norm(x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)
    direction = gradient / norm(gradient).clamp_min(torch.finfo(gradient.dtype).tiny)
    return eps - strength * NORMALISED_STEP * norm(eps) * direction


def snr(alpha_bar: Tensor) -> Tensor:
    """Signal-to-noise ratio ab / (1 - ab) of VP x_t; sigma = SNR^-1/2 is the k-diffusion noise level."""
    return alpha_bar / (1 - alpha_bar)


def schedule_factors(kind: str, exponent: float, start: float, stop: float, alpha_bars: Tensor) -> Tensor:
    """Per-step factor f_i of a weight, w_k(t_i) = w_k f_i, for a run whose steps have alpha_bars (N,).

    constant  1
    snr       SNR(t)^alpha (our own schedule, from no paper): ~0 at high noise, 1 where signal and noise
              are equal, >1 after
    sigma     sigma(t)^-beta with sigma = sqrt((1-ab)/ab): the same family, SNR^(beta/2)
    ramp_up   0 -> 1 linearly across the window; ramp_down 1 -> 0
    The window keeps steps whose progress i/(N-1) lies in [start, stop]; outside it f = 0.
    At zero terminal SNR (ab = 0) snr and sigma give 0 (exponent > 0): x_T holds no signal to guide.
    """
    alpha_bars = alpha_bars.double()
    n = len(alpha_bars)
    progress = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    tolerance = 1e-9  # i/(N-1) is inexact in binary; 0.5 must include the middle step
    active = (progress >= start - tolerance) & (progress <= stop + tolerance)
    ramp = ((progress - start) / (stop - start)).clamp(0, 1)
    if kind == "constant":
        factors = torch.ones(n, dtype=torch.float64)
    elif kind == "snr":
        factors = snr(alpha_bars) ** exponent
    elif kind == "sigma":
        factors = ((1 - alpha_bars) / alpha_bars).sqrt() ** -exponent  # ab = 0: inf^-beta = 0
    elif kind == "ramp_up":
        factors = ramp
    elif kind == "ramp_down":
        factors = 1 - ramp
    else:
        raise ValueError(f"unknown guidance schedule {kind!r}")
    return torch.where(active, factors, torch.zeros_like(factors))


LogProb = Callable[[Tensor, Tensor], Tensor]  # log_prob(x_t, t) -> (B,) log p(c | x_t) of a noisy-latent classifier
Region = Callable[[Tensor, Tensor], Tensor]  # region(x_t, t) -> (B, 1, h, w) weights in [0, 1]: where a target lives


def classifier_gradient(log_prob: LogProb, x_t: Tensor, t: Tensor) -> Tensor:
    """grad_x log p(c | x_t) (B, C, h, w) by autograd through the classifier only.

    x_t is the scaled VP latent the UNet sees (scheduler.scale_model_input); t the step's timestep.
    Summing over the batch gives each image its own gradient (images do not interact)."""
    with torch.enable_grad():
        x = x_t.detach().float().requires_grad_(True)
        (gradient,) = torch.autograd.grad(log_prob(x, t).sum(), x)
    return gradient.to(x_t.dtype)


# --------------------------------------------------------------------------------------------
# Guiders


class Guider(Protocol):
    """Combines per-condition predictions; the sampler tells it the step index i (nothing counts steps)."""

    primary: int  # position in `conds_at(i)` of the prompt being drawn (attention maps show it)
    unconditional: tuple[int, ...]  # positions in `conds_at(i)` of the unconditional branch (structure modes read it)

    def conds_at(self, i: int) -> Sequence[Cond]:
        """What the denoiser evaluates at step i, in this order (the same number at every step)."""
        ...

    def combine(self, predictions: Sequence[Tensor], i: int, t: Tensor, x_t: Tensor) -> Tensor:
        """predictions[k] for conds_at(i)[k], in the model's parameterisation; x_t the (scaled) latents they saw."""
        ...


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

    @property
    def unconditional(self) -> tuple[int, ...]:
        return () if self.scale == 1 else (0,)

    def conds_at(self, i: int) -> list[Cond]:
        return self.conds

    def combine(self, predictions: Sequence[Tensor], i: int, t: Tensor, x_t: Tensor | None = None) -> Tensor:
        if self.scale == 1:
            return predictions[0]
        uncond, cond = predictions
        return cfg(uncond, cond, self.scale)


@dataclass
class MultiConditionGuidance:
    """Multi-condition guidance (Liu et al. 2022's conjunction) with per-step weights:
    eps_u + sum_k w_k(t) (eps_k - eps_u), optionally rescaled (Lin et al. 2023 §3.4).

    `weights` (N, K) is precomputed data (per step, per condition; schedules and windows applied),
    so the plot the UI draws is exactly what runs. conditions[0] is the prompt; `uncond` the
    negative prompt ("" when none), i.e. the familiar mode where a negative prompt replaces eps_u.
    """

    uncond: Cond
    conditions: Sequence[Cond]
    weights: Tensor  # (N, K) signed weight of condition k at step i
    alphas_cumprod: Tensor  # (num_train_timesteps,) for conversions
    prediction_type: str
    rescale: float = 0.0  # phi; the prompt's prediction is the "positive" one of Lin et al.

    @property
    def conds(self) -> list[Cond]:
        return [self.uncond, *self.conditions]

    @property
    def primary(self) -> int:
        return 1

    @property
    def unconditional(self) -> tuple[int, ...]:
        return (0,)

    def conds_at(self, i: int) -> list[Cond]:
        return self.conds

    def combine(self, predictions: Sequence[Tensor], i: int, t: Tensor, x_t: Tensor) -> Tensor:
        uncond, *conds = predictions
        guided = multi_condition_cfg(uncond, conds, self.weights[i].tolist())  # affine: fine in the model's own form
        if self.rescale > 0:
            # std ratios do not commute with eps/v/x0 conversions: rescale the clean-image estimates
            # (x0 is finite at every t, zero terminal SNR included, for v and x0 models).
            alpha_bar = schedule.alpha_bar_at(self.alphas_cumprod, t)
            guided_x0 = schedule.to_x0(guided, x_t, alpha_bar, self.prediction_type)
            positive_x0 = schedule.to_x0(conds[0], x_t, alpha_bar, self.prediction_type)
            # diffusers' rescale_noise_cfg (Lin et al. 2023 §3.4, eqs. 15-18: the guided prediction scaled back to
            # the prompt's standard deviation per image, blended by phi), on x0 rather than on the raw output
            rescaled = rescale_noise_cfg(guided_x0, positive_x0, self.rescale)
            guided = schedule.from_x0(rescaled, x_t, alpha_bar, self.prediction_type)
        return guided


@dataclass
class ClassifierGuidance:
    """Wraps any guider and adds the classifier's gradient (Dhariwal & Nichol 2021 §4), so it combines with CFG.
    Any noisy-latent classifier plugs in as its log-probability `log_prob(x_t, t)` (the shapes world's:
    studio.shapes.classifier.target_log_prob_fn).

    Only this part needs autograd; the UNet stays under no_grad. Counts its gradient evaluations and
    the seconds they took, so the cost per step can be shown beside the UNet's."""

    inner: Guider
    log_prob: LogProb
    strengths: Tensor  # (N,) s(t_i): strength times its schedule factor
    alphas_cumprod: Tensor
    prediction_type: str
    normalise: bool = False  # normalised_classifier_eps instead of eq. 14's raw gradient
    # with normalise: the gradient weighted by where the target lives before it is normalised (eq. 14 stays as
    # published). A background classifier reads the whole image, so its gradient alone repaints the object too.
    region: Region | None = None
    gradient_evaluations: int = field(default=0, init=False)
    gradient_seconds: float = field(default=0.0, init=False)

    @property
    def primary(self) -> int:
        return self.inner.primary

    @property
    def unconditional(self) -> tuple[int, ...]:
        return self.inner.unconditional

    def conds_at(self, i: int) -> Sequence[Cond]:
        return self.inner.conds_at(i)

    def combine(self, predictions: Sequence[Tensor], i: int, t: Tensor, x_t: Tensor) -> Tensor:
        guided = self.inner.combine(predictions, i, t, x_t)
        strength = float(self.strengths[i])
        alpha_bar = schedule.alpha_bar_at(self.alphas_cumprod, t)
        # At zero SNR p(c | x_T) = p(c): the true gradient is 0, and eps -> v/x0 would divide by 0.
        if strength == 0 or float(alpha_bar) == 0:
            return guided
        started = time.perf_counter()
        gradient = classifier_gradient(self.log_prob, x_t, t)
        if self.normalise and self.region is not None:  # timed with the gradient: it is the classifier's cost too
            with torch.no_grad():
                gradient = gradient * self.region(x_t, t)
        if gradient.is_cuda:
            torch.cuda.synchronize()
        self.gradient_seconds += time.perf_counter() - started
        self.gradient_evaluations += 1
        # A shift of the score: convert to eps, shift, convert back (no per-type formulas).
        eps = schedule.to_eps(guided, x_t, alpha_bar, self.prediction_type)
        if self.normalise:
            eps = normalised_classifier_eps(eps, gradient, strength)
        else:
            eps = classifier_guided_eps(eps, gradient, alpha_bar, strength)
        return schedule.from_eps(eps, x_t, alpha_bar, self.prediction_type)
