"""Protects: the pure VP maths (parameterisation conversions, DDIM step and its inverse) agrees with
itself and with diffusers' DDIMScheduler."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from studio import schedule
from studio.inversion.steps import affine_step, ddim_coefficients, solve_affine_step


def test_eps_v_x0_conversions_round_trip():
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    alpha_bar = 0.3
    x_t = schedule.noise_to(x0, eps, alpha_bar)
    v = alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0
    torch.testing.assert_close(schedule.x0_from_eps(eps, x_t, alpha_bar), x0)
    torch.testing.assert_close(schedule.eps_from_x0(x0, x_t, alpha_bar), eps)
    torch.testing.assert_close(schedule.x0_from_v(v, x_t, alpha_bar), x0)
    torch.testing.assert_close(schedule.eps_from_v(v, x_t, alpha_bar), eps)
    torch.testing.assert_close(schedule.v_from_eps(eps, x_t, alpha_bar), v)
    for kind, prediction in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        torch.testing.assert_close(schedule.to_x0(prediction, x_t, alpha_bar, kind), x0)
        torch.testing.assert_close(schedule.to_eps(prediction, x_t, alpha_bar, kind), eps)


def test_v_gives_x0_at_zero_terminal_snr():
    v, x_t = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(schedule.x0_from_v(v, x_t, 0.0), -v)


def test_ddim_step_matches_diffusers_and_inverse_step_undoes_it():
    """The engine's DDIM steps: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps (masked DDIM's form, through
    x0_from_eps and noise_to) and the affine step inversion solves (studio.inversion.steps)."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler.set_timesteps(10)
    t, prev = scheduler.timesteps[3], scheduler.timesteps[4]
    alpha_bar, alpha_bar_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[prev]
    generator = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    expected = scheduler.step(eps, t, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(schedule.noise_to(schedule.x0_from_eps(eps, x_t, alpha_bar), eps, alpha_bar_prev), expected)
    coefficients = ddim_coefficients(alpha_bar, alpha_bar_prev, "epsilon")
    stepped = affine_step(eps, x_t, coefficients)
    torch.testing.assert_close(stepped, expected)
    torch.testing.assert_close(solve_affine_step(eps, stepped, coefficients), x_t)


def test_training_targets_match_the_scheduler_including_zero_terminal_snr():
    scheduler = DDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(schedule.noise_to(x0, noise, alpha_bar), scheduler.add_noise(x0, noise, t))
    torch.testing.assert_close(schedule.velocity(x0, noise, alpha_bar), scheduler.get_velocity(x0, noise, t))
    torch.testing.assert_close(schedule.velocity(x0, noise, alpha_bar)[2], -x0[2])  # zero SNR: v = -x0


def test_alpha_bars_of_a_run_are_alpha_bar_at_each_timestep_euler_floats_rounded():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    timesteps = torch.tensor([999.0, 500.4, 120.6, 0.0])  # Euler's timesteps are floats
    alpha_bars = schedule.alpha_bars_at(scheduler.alphas_cumprod, timesteps)
    assert alpha_bars.dtype == scheduler.alphas_cumprod.dtype
    assert alpha_bars.tolist() == [schedule.alpha_bar_at(scheduler.alphas_cumprod, t).item() for t in timesteps]
    assert alpha_bars[1] == scheduler.alphas_cumprod[500] and alpha_bars[2] == scheduler.alphas_cumprod[121]
