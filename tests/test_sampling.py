"""Protects: the one sampling loop reports every step as a plain dict and stops when cancelled."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from studio.conditioning import encode, tokenize
from studio.denoiser import Denoiser
from studio.errors import CancelledError
from studio.events import CancelToken
from studio.guidance import ClassifierFreeGuidance, cfg
from studio.sampling import make_scheduler, sample_steps


@pytest.fixture
def parts(tiny_engine):
    model = tiny_engine.model
    scheduler = make_scheduler("euler", model.scheduler_config)
    scheduler.set_timesteps(3)
    guider = ClassifierFreeGuidance(
        cond=encode(model.text_encoder, tokenize(model.tokenizer, "a red circle")),
        uncond=encode(model.text_encoder, tokenize(model.tokenizer, "")),
        scale=4.0,
    )
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    return Denoiser(model, scheduler.alphas_cumprod), guider, scheduler, x


def test_each_step_reports_index_timestep_latents_and_x0_prediction(parts):
    denoiser, guider, scheduler, x = parts
    states = list(sample_steps(denoiser, guider, scheduler, scheduler.timesteps, x))
    assert [s["i"] for s in states] == [0, 1, 2]
    assert all(s["denoised"].shape == x.shape for s in states)
    assert [float(s["t"]) for s in states] == [float(t) for t in scheduler.timesteps]
    assert denoiser.unet_evaluations == 3  # uncond and cond in one call per step


def test_the_sampler_tells_the_step_index_to_the_hooks_and_their_result_is_the_state(parts):
    denoiser, guider, scheduler, x = parts
    begun, hooked = [], []

    def after_step(i: int, latents: torch.Tensor) -> torch.Tensor:
        hooked.append(i)
        return torch.zeros_like(latents) if i == 1 else latents

    states = list(sample_steps(denoiser, guider, scheduler, scheduler.timesteps, x,
                               on_step_begin=lambda i, t: begun.append(i), after_step=after_step))
    assert begun == hooked == [0, 1, 2]
    assert torch.equal(states[1]["x"], torch.zeros_like(x))


def test_cancel_stops_between_steps(parts):
    denoiser, guider, scheduler, x = parts
    cancel = CancelToken()
    with pytest.raises(CancelledError, match="after 1 of 3"):
        for _ in sample_steps(denoiser, guider, scheduler, scheduler.timesteps, x, cancel=cancel):
            cancel.cancel()


def test_cfg_is_the_seed_mixing_rule():
    uncond, cond = torch.tensor([1.0]), torch.tensor([3.0])
    assert cfg(uncond, cond, 0.0) == uncond and cfg(uncond, cond, 1.0) == cond
    assert cfg(uncond, cond, 2.5) == uncond + 2.5 * (cond - uncond)



def test_the_sampler_imports_neither_the_job_layer_nor_the_loaders():
    """Data flows one way: the maths (sampling, denoiser, guidance, schedule) sits below the jobs and the models."""
    code = "import sys, studio.sampling; print(sorted(m for m in sys.modules if m.startswith('studio')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "studio.jobs" not in loaded and "studio.models" not in loaded, loaded
