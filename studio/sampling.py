"""The ONE denoising loop, over any diffusers scheduler.

Like k-diffusion's samplers, the loop is a short function of (denoiser, guider, scheduler,
timesteps, x) that reports each step as a plain dict {i, t, x, denoised}; it knows neither prompts
nor attention. Attention control learns the step index from `on_step_begin`, never by counting
layer calls. `sample_steps` is the loop as a generator (the engine streams events from it);
`sample` drives it with a callback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from studio.denoiser import Denoiser
from studio.errors import CancelledError
from studio.events import CancelToken
from studio.guidance import Guider

# specs.SCHEDULERS name -> (class, overrides of the model's scheduler config)
SCHEDULER_CLASSES: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}

StepState = dict[str, Any]  # {"i": int, "t": Tensor, "x": Tensor, "denoised": Tensor}


def make_scheduler(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler (they keep per-run state) built from the model's own scheduler config."""
    cls, overrides = SCHEDULER_CLASSES[name]
    return cls.from_config(config, **overrides)


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | None) -> dict[str, Any]:
    """Pass a generator to stochastic steps (Euler ancestral) and eta=0 to DDIM, as the pipeline does."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def sample_steps(
    denoiser: Denoiser,
    guider: Guider,
    scheduler: SchedulerMixin,
    timesteps: Tensor,
    x: Tensor,
    cancel: CancelToken | None = None,
    generator: torch.Generator | None = None,
    on_step_begin: Callable[[int, Tensor], None] | None = None,
) -> Iterator[StepState]:
    """Denoise x (B, C, h, w), already scaled by scheduler.init_noise_sigma, yielding after each step.

    The last state's "x" is the result. Raises CancelledError between steps once `cancel` is set.
    """
    extra = step_kwargs(scheduler, generator)
    for i, t in enumerate(timesteps):
        if cancel is not None and cancel.cancelled:
            raise CancelledError(f"Cancelled after {i} of {len(timesteps)} steps.")
        if on_step_begin is not None:
            on_step_begin(i, t)
        model_input = scheduler.scale_model_input(x, t)  # the VP x_t the network expects
        predictions = denoiser.predict(model_input, t, guider.conds)
        guided = guider.combine(predictions, t, model_input)
        denoised = denoiser.to_x0(guided, model_input, t)
        x = scheduler.step(guided, t, x, **extra, return_dict=False)[0]
        yield {"i": i, "t": t, "x": x, "denoised": denoised}


def sample(
    denoiser: Denoiser,
    guider: Guider,
    scheduler: SchedulerMixin,
    timesteps: Tensor,
    x: Tensor,
    on_step: Callable[[StepState], None] | None = None,
    cancel: CancelToken | None = None,
    generator: torch.Generator | None = None,
    on_step_begin: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """`sample_steps` run to the end with a callback; returns the final latents."""
    for state in sample_steps(denoiser, guider, scheduler, timesteps, x, cancel, generator, on_step_begin):
        if on_step is not None:
            on_step(state)
        x = state["x"]
    return x
