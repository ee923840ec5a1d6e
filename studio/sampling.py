"""The ONE denoising loop, over any diffusers scheduler.

Like k-diffusion's samplers, the loop is a short function of (denoiser, guider, scheduler,
timesteps, x) that reports each step as a plain dict {i, t, x, denoised}; it knows neither prompts
nor attention. The loop tells the step index to everything that depends on it: attention control
(`on_step_begin`), the guider (`conds_at(i)`, `combine(..., i, ...)`), step rules of our own
(`StepRule.step_at`) and post-step work (`after_step(i, x)`, e.g. masked SDEdit's two-branch update,
Prompt-to-Prompt's local blend); nothing counts steps or looks its step up by timestep.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, NotRequired, Protocol, TypedDict

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
from studio.events import CancelToken, check_cancelled
from studio.guidance import Guider

# specs.SCHEDULERS name -> (class, overrides of the model's scheduler config)
SCHEDULER_CLASSES: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


class StepState(TypedDict):
    """What a loop reports after step i (a plain dict, as k-diffusion's callback gets)."""

    i: int  # step index, 0-based
    t: Tensor  # the step's timestep
    x: Tensor  # (B, C, h, w) latents after the step
    denoised: NotRequired[Tensor]  # (B, C, h, w) x0 prediction: sample_steps gives it, inversion loops do not
    y: NotRequired[Tensor]  # (B, C, h, w) EDICT's second sequence (studio.inversion.edict)


def make_scheduler(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler (they keep per-run state) built from the model's own scheduler config."""
    cls, overrides = SCHEDULER_CLASSES[name]
    return cls.from_config(config, **overrides)


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
    """Pass a generator to stochastic steps (Euler ancestral) and eta=0 to DDIM, as the pipeline does."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


class StepRule(Protocol):
    """A step rule of our own (inverse DDIM, masked DDIM): like a scheduler, but told the step index."""

    def scale_model_input(self, x: Tensor, t: Tensor) -> Tensor: ...

    def step_at(self, i: int, output: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """The state step i lands on, from the model output at (x, t)."""
        ...


class SchedulerSteps:
    """A diffusers scheduler as a StepRule: the scheduler keeps its own step state (multistep solvers),
    and gets eta = 0 (DDIM) and the generator (ancestral steps) as StableDiffusionPipeline passes them."""

    def __init__(self, scheduler: SchedulerMixin, generator: torch.Generator | list[torch.Generator] | None):
        self.scheduler = scheduler
        self.extra = step_kwargs(scheduler, generator)

    def scale_model_input(self, x: Tensor, t: Tensor) -> Tensor:
        return self.scheduler.scale_model_input(x, t)

    def step_at(self, i: int, output: Tensor, t: Tensor, x: Tensor) -> Tensor:
        return self.scheduler.step(output, t, x, **self.extra, return_dict=False)[0]


StepHook = Callable[[int, Tensor], Tensor]  # after_step(i, x) -> x: post-step work (masked updates, local blend)


def chained(*hooks: StepHook | None) -> StepHook | None:
    """The after-step hooks given (None: absent) run in order, each on the state the one before returned."""
    present = [hook for hook in hooks if hook is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def run(i: int, x: Tensor) -> Tensor:
        for hook in present:
            x = hook(i, x)
        return x

    return run


def sample_steps(
    denoiser: Denoiser,
    guider: Guider,
    scheduler: SchedulerMixin | StepRule,
    timesteps: Tensor,
    x: Tensor,
    cancel: CancelToken | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,  # a list: one per batch item
    on_step_begin: Callable[[int, Tensor], None] | None = None,
    after_step: StepHook | None = None,
) -> Iterator[StepState]:
    """Denoise x (B, C, h, w), already scaled by scheduler.init_noise_sigma, yielding after each step.

    Step i: `on_step_begin(i, t)` (attention control), one batched prediction of the guider's conditions
    at step i, `guider.combine(predictions, i, t, x_t)`, the scheduler's step, then `after_step(i, x)`,
    whose result is the step's state. The last state's "x" is the result. Raises CancelledError
    between steps once `cancel` is set.
    """
    rule = SchedulerSteps(scheduler, generator) if isinstance(scheduler, SchedulerMixin) else scheduler
    for i, t in enumerate(timesteps):
        check_cancelled(cancel, i, len(timesteps))
        if on_step_begin is not None:
            on_step_begin(i, t)
        model_input = rule.scale_model_input(x, t)  # the VP x_t the network expects
        predictions = denoiser.predict(model_input, t, guider.conds_at(i))
        guided = guider.combine(predictions, i, t, model_input)
        denoised = denoiser.to_x0(guided, model_input, t)
        x = rule.step_at(i, guided, t, x)
        if after_step is not None:
            x = after_step(i, x)
        yield {"i": i, "t": t, "x": x, "denoised": denoised}
