"""The inversion job: check the input, encode, invert with the chosen method, reconstruct, measure.

Every method is a generator over the same context that streams its events and returns an
`Inverted` (trajectory, null embeddings, coupled states); reconstruction samples it back with the
method's own sampler; the report compares the reconstruction with the image and with the VAE's
own encode -> decode (the ceiling no inversion can pass).

Under structure (`spec.structure`, its maps in `structure_images`: the edit of a real image under a ControlNet that
lllyasviel/ControlNet#359 asks for) every guided step of the method, the inversion's and the reconstruction's,
runs with the controls attached (studio.structure.runtime.StructuredGuidance), so sampling the inversion back under
the same control reconstructs the image, and an edit under it (P2P, DiffEdit) starts from a trajectory made for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from torch import Tensor

from studio import metrics
from studio.conditioning import Cond
from studio.costs import ADAPTER_TRAINING_PASSES, JobCost, guidance_passes, structure_passes
from studio.denoiser import Denoiser
from studio.errors import InvalidInputError
from studio.conditioning import Tokens
from studio.events import CancelToken, Event, InversionResult, Notice, NullTextLoss, Progress
from studio.generation import PreparedStructure, prepare_structure, structure_attached
from studio.guidance import ClassifierFreeGuidance, Guider
from studio.images import ImageInput, encode_image, prepare_image, working_size
from studio.inversion.bdia import bdia_inversion_steps, bdia_sampling_steps
from studio.inversion.ddim import ddim_inversion_steps
from studio.inversion.ddpm import CorrectedDDIM, NoiseSpaceInversion, noisy_states
from studio.inversion.direct import SourceOnPath
from studio.inversion.edict import edict_inversion_steps, edict_sampling_steps
from studio.inversion.fixed_point import fixed_point_inversion_steps
from studio.inversion.guider import PerStepUncondGuidance
from studio.inversion.null_text import null_text_optimisation
from studio.inversion.result import METHOD_LABELS, Inversion, InversionSpec
from studio.inversion.steps import StepGrid
from studio.jobs import ModelHost, Stopwatch, image_record, reproduction_record, to_images
from studio.models import LoadedModel, decode_latents
from studio.sampling import StepHook, StepRule, StepState, make_scheduler, sample_steps
from studio.structure.spec import StructureImages, StructureSpec


@dataclass
class Context:
    """What every method works with: the model's pieces for this run, and its counters."""

    denoiser: Denoiser
    grid: StepGrid
    cond: Cond  # the caption
    null: Cond  # the empty prompt
    latents: Tensor  # (1, C, h, w) x_0
    spec: InversionSpec
    cancel: CancelToken | None
    scheduler_config: dict[str, Any]
    vae: AutoencoderKL | None = None  # the VAE, for NTI's optional image-space term
    image: Image.Image | None = None
    model: LoadedModel | None = None  # its controls, when `structure` is given
    structure: PreparedStructure | None = None
    backward_passes: int = 0  # autograd passes through the UNet (NTI)
    guiders: dict[float, Guider] = field(default_factory=dict)  # by scale: structure's T2I features, embedding once

    def guidance(self, scale: float) -> Guider:
        """CFG of the caption at `scale` (sampling step order), with the run's structure attached when it has one."""
        if scale not in self.guiders:
            guider = _cfg(self.cond, self.null, scale)
            self.guiders[scale] = with_structure(guider, self.structure, self.model, self.null, self.grid.timesteps,
                                                 self.alphas_cumprod)
        return self.guiders[scale]

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.denoiser.alphas_cumprod

    @property
    def total_work(self) -> int:
        return PHASES[self.spec.method] * len(self.grid)

    def progress(self, phase: int, done: int, label: str) -> Progress:
        """Progress after `done` (1..N) steps of pass `phase` over the steps (0 inverts, the last reconstructs)."""
        return Progress(phase * len(self.grid) + done, self.total_work, f"{METHOD_LABELS[self.spec.method]}: {label}")


@dataclass
class Inverted:
    trajectory: list[Tensor]
    uncond_embeddings: list[Tensor] | None = None
    coupled: list[Tensor] | None = None
    losses: list[list[float]] = field(default_factory=list)
    dtype: torch.dtype = torch.float32
    corrections: list[Tensor] | None = None  # edit-friendly DDPM inversion's c_i (sampling order)


def _ddim(ctx: Context) -> Iterator[Event]:
    """DDIM inversion at `inversion_guidance` (1 = the prompt alone)."""
    trajectory = yield from _streamed_ddim(ctx, ctx.guidance(ctx.spec.inversion_guidance))
    return Inverted(trajectory)


def _negative_prompt(ctx: Context) -> Iterator[Event]:
    """Negative-prompt inversion (Miyake et al. 2023, §3): DDIM inversion at w = 1, then the
    prompt's embedding serves as the null one at every step, so CFG at any w samples the w = 1 path."""
    trajectory = yield from _streamed_ddim(ctx, ctx.guidance(1.0))
    return Inverted(trajectory, uncond_embeddings=[ctx.cond.embeddings] * len(ctx.grid))


def _streamed_ddim(ctx: Context, guider: Guider) -> Iterator[Event]:
    """DDIM inversion with a Progress event per step; returns the trajectory (sampling order)."""
    return (yield from _streamed(ctx, ddim_inversion_steps(ctx.denoiser, guider, ctx.grid, ctx.latents, ctx.cancel)))


def _streamed(ctx: Context, steps: Iterator[StepState], start: Tensor | None = None) -> Iterator[Event]:
    """An inversion's states from `start` (the image's latents unless given) with a Progress event per step; returns
    them in sampling order."""
    states = [ctx.latents if start is None else start]
    for done, state in enumerate(steps, start=1):  # BDIA's states count i down: count them here
        states.append(state["x"])
        yield ctx.progress(0, done, "inverting")
    return states[::-1]


def _fixed_point(ctx: Context) -> Iterator[Event]:
    """Fixed-point inversion (fixed_point.py) at the sampling guidance w, so plain DDIM sampling at w reconstructs;
    each step's iteration moves are kept in `losses`."""
    stepper, steps = fixed_point_inversion_steps(
        ctx.denoiser, ctx.guidance(ctx.spec.guidance_scale), ctx.grid, ctx.latents, ctx.spec.fixed_point_iterations,
        ctx.spec.fixed_point_tolerance, ctx.cancel)
    trajectory = yield from _streamed(ctx, steps)
    return Inverted(trajectory, losses=stepper.updates)


def _direct(ctx: Context) -> Iterator[Event]:
    """Direct Inversion (direct.py; Ju et al. 2023, Alg. 1): the w = 1 DDIM trajectory, which sampling and edits put
    the source image back on after every step."""
    trajectory = yield from _streamed_ddim(ctx, ctx.guidance(1.0))
    return Inverted(trajectory)


def _ddpm(ctx: Context) -> Iterator[Event]:
    """Edit-friendly DDPM inversion (ddpm.py; Huberman-Spiegelglas et al. 2024, Alg. 1): independent noisy states
    from `seed`, then per step the correction of the eta = 1 step under the caption at the sampling guidance w, walked
    in sampling order through the one loop."""
    states = noisy_states(ctx.latents, ctx.grid, torch.Generator("cpu").manual_seed(ctx.spec.seed))
    stepper = NoiseSpaceInversion(ctx.grid, states)
    timesteps = ctx.grid.timesteps.to(ctx.latents.device)
    for state in sample_steps(ctx.denoiser, ctx.guidance(ctx.spec.guidance_scale), stepper, timesteps, states[0],
                              ctx.cancel):
        yield ctx.progress(0, state["i"] + 1, "inverting")
    return Inverted(states, corrections=stepper.corrections)


def _with_progress(ctx: Context, events: Iterator[NullTextLoss], phase: int, label: str) -> Iterator[Event]:
    """Pass a method's per-step events on, each followed by a Progress; returns what the method returns."""
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        yield event
        yield ctx.progress(phase, event.step, label)


def _cfg(cond: Cond, null: Cond, scale: float) -> ClassifierFreeGuidance:
    return ClassifierFreeGuidance(cond=cond, uncond=null, scale=scale)


def _null_text(ctx: Context) -> Iterator[Event]:
    """Null-text inversion (Mokady et al. 2023, Algorithm 1): the w = 1 DDIM pivot, then per-step null embeddings (null_text.py)."""
    pivot = yield from _streamed_ddim(ctx, ctx.guidance(1.0))
    embeddings, losses = yield from _with_progress(ctx, null_text_optimisation(ctx, pivot), 1, "optimising null text")
    return Inverted(pivot, uncond_embeddings=embeddings, losses=losses)


def _edict(ctx: Context) -> Iterator[Event]:
    """EDICT (edict.py): coupled x/y sequences, exact up to float rounding; float64 states on request."""
    latents = ctx.latents.double() if ctx.spec.float64 else ctx.latents
    xs, ys = [latents], [latents]
    guider = ctx.guidance(ctx.spec.guidance_scale)
    steps = edict_inversion_steps(ctx.denoiser, guider, ctx.grid, latents, ctx.spec.edict_mix, ctx.cancel)
    for done, state in enumerate(steps, start=1):
        xs.append(state["x"])
        ys.append(state["y"])
        yield ctx.progress(0, done, "inverting")
    return Inverted(xs[::-1], coupled=ys[::-1], dtype=latents.dtype)


def _bdia(ctx: Context) -> Iterator[Event]:
    """BDIA-DDIM (bdia.py): exact after its first DDIM inversion step; float64 states on request."""
    latents = ctx.latents.double() if ctx.spec.float64 else ctx.latents
    guider = ctx.guidance(ctx.spec.guidance_scale)
    steps = bdia_inversion_steps(ctx.denoiser, guider, ctx.grid, latents, ctx.spec.bdia_gamma, ctx.cancel)
    return Inverted((yield from _streamed(ctx, steps, latents)), dtype=latents.dtype)


PHASES = {"ddim": 2, "negative_prompt": 2, "null_text": 3, "edict": 2, "bdia": 2, "fixed_point": 2, "direct": 2,
          "ddpm": 2}  # passes over the steps
# The InversionSpec fields each method reads beyond prompt, steps and guidance_scale: what an edit of its
# inversion records about it (Inversion.method_settings, studio.jobs.inversion_record)
METHOD_SETTINGS = {
    "ddim": ("inversion_guidance",),
    "negative_prompt": (),
    "null_text": ("inner_steps", "learning_rate", "lr_decay", "tolerance", "min_improvement", "null_start",
                  "smoothness", "image_weight"),
    "edict": ("edict_mix", "float64"),
    "bdia": ("bdia_gamma", "float64"),
    "fixed_point": ("fixed_point_iterations", "fixed_point_tolerance"),
    "direct": (),
    "ddpm": ("seed",),
}


def inversion_cost(spec: InversionSpec, size: int) -> JobCost:
    """UNet passes a step over the inversion and its reconstruction (sampled back at guidance_scale): DDIM's
    at inversion_guidance, the w = 1 pivot of NPI and NTI, NTI's prompt prediction and its inner_steps iterations
    (a forward and a backward pass to the null embedding each, the most it runs: early stops spend fewer), EDICT's
    two coupled sequences, BDIA's one; fixed-point inversion's guess and its iterations at w (the most it runs: early
    stops spend fewer), Direct Inversion's w = 1 pass, edit-friendly DDPM's one guided pass; the structure's rows on
    every guided pass."""
    sampled = guidance_passes(spec.guidance_scale)
    inverting = {
        "ddim": guidance_passes(spec.inversion_guidance),
        "negative_prompt": 1,
        "null_text": 1 + 1 + spec.inner_steps * ADAPTER_TRAINING_PASSES,
        "edict": 2 * sampled,
        "bdia": sampled,
        "fixed_point": (1 + spec.fixed_point_iterations) * sampled,
        "direct": 1,
        "ddpm": sampled,
    }[spec.method]
    reconstructing = 2 * sampled if spec.method == "edict" else sampled
    structured = PHASES[spec.method] * structure_passes(spec.structure)
    return JobCost(size, size, spec.steps, 1, inverting + reconstructing + structured)


METHOD_RUNNERS: dict[str, Callable[[Context], Iterator[Event]]] = {
    "ddim": _ddim,
    "negative_prompt": _negative_prompt,
    "null_text": _null_text,
    "edict": _edict,
    "bdia": _bdia,
    "fixed_point": _fixed_point,
    "direct": _direct,
    "ddpm": _ddpm,
}


# --------------------------------------------------------------------------------------------
# Reconstruction (and the sampling editors start from)


def sampling_guider(inversion: Inversion, cond: Cond, null: Cond, first_step: int = 0) -> Guider:
    """The guider that samples `inversion` back at its guidance scale, from sampling step `first_step` on
    (an edit from t_edit starts part-way): per-step null embeddings when it has them (NTI, NPI), else CFG
    with `null` (the empty prompt). `cond` may stack several prompts (Prompt-to-Prompt's source and
    target): every image of the batch gets the same null embedding."""
    if inversion.uncond_embeddings is None:
        return _cfg(cond, null, inversion.guidance_scale)
    unconds = [Cond(embeddings=e, tokens=null.tokens, pooled=null.pooled) for e in inversion.uncond_embeddings[first_step:]]
    return PerStepUncondGuidance(cond, unconds, inversion.guidance_scale)


def with_structure(guider: Guider, structure: PreparedStructure | None, model: LoadedModel | None, null: Cond,
                   timesteps: Tensor, alphas_cumprod: Tensor) -> Guider:
    """`guider` with `structure` attached over `timesteps` (sampling order) on `model`'s controls; as it is without."""
    if structure is None:
        return guider
    if model is None:
        raise ValueError("an inversion made under structure samples with its controls: pass the model that holds them")
    return structure.wrap(model, guider, null, timesteps, alphas_cumprod)


def edit_structure(host: ModelHost, structure: StructureSpec | None, images: StructureImages | None,
                   inversion: Inversion | None, width: int, height: int) -> PreparedStructure | None:
    """The structure an edit samples under, checked: its own (`structure`, its maps in `images`), else the one
    `inversion` was made under, so the unedited image is its reconstruction. The inversion's is checked again against
    the loaded controls (one read from a file may name a control this model has not loaded); its notes were shown
    when it was made. Raises InvalidInputError."""
    prepared = prepare_structure(host, structure, images, width, height)
    if prepared is not None or inversion is None or inversion.structure is None:
        return prepared
    made = inversion.structure
    return prepare_structure(host, made.spec, StructureImages(tuple(made.maps), made.reference), width, height)


def sampling_rule(inversion: Inversion, scheduler: SchedulerMixin, prediction_type: str,
                  first_step: int = 0) -> SchedulerMixin | StepRule:
    """The step rule that samples `inversion` from sampling step `first_step` on: `scheduler` (a DDIMScheduler set to
    the inversion's steps) for the methods sampled by plain DDIM, or, for an inversion with per-step corrections
    (edit-friendly DDPM), the eta = 1 DDIM mean plus the stored correction (ddpm.CorrectedDDIM) on the same grid.
    Every image of the batch gets the corrections (Prompt-to-Prompt's source and target; DiffEdit's edit)."""
    if inversion.corrections is None:
        return scheduler
    return CorrectedDDIM(StepGrid.of(scheduler, prediction_type), inversion.corrections, first_step)


def source_hook(inversion: Inversion, source: int = 0, first_step: int = 0) -> StepHook | None:
    """The after-step hook that keeps batch item `source` on the inversion's trajectory from sampling step
    `first_step` on (Direct Inversion, direct.py: its reconstruction is exact by construction); None for the other
    methods, whose source follows from the sampler alone."""
    if inversion.method != "direct":
        return None
    return SourceOnPath(inversion.trajectory[first_step + 1:], source)


def reconstruction_steps(denoiser: Denoiser, inversion: Inversion, cond: Cond, null: Cond, scheduler_config: dict,
                         cancel: CancelToken | None = None, model: LoadedModel | None = None) -> Iterator[StepState]:
    """Sample the inversion back from x_T with its own sampler (sampling_guider, sampling_rule, source_hook: what an
    edit of it samples with), yielding the sampler's states; an inversion made under structure is sampled under it,
    with the controls of `model`."""
    scheduler = make_scheduler("ddim", scheduler_config)
    scheduler.set_timesteps(inversion.steps, device=inversion.latents.device)
    guider = with_structure(sampling_guider(inversion, cond, null), inversion.structure, model, null,
                            scheduler.timesteps, scheduler.alphas_cumprod)
    rule = sampling_rule(inversion, scheduler, denoiser.prediction_type)
    steps = sample_steps(denoiser, guider, rule, scheduler.timesteps, inversion.noise_latents, cancel,
                         after_step=source_hook(inversion))
    return attached_steps(guider, denoiser, steps)


def attached_steps(guider: Guider, denoiser: Denoiser, steps: Iterator[StepState]) -> Iterator[StepState]:
    """`steps` with the image prompt's attention installed while they run, when `guider` has one (structure)."""
    with structure_attached(guider, denoiser.unet, denoiser):
        yield from steps


# --------------------------------------------------------------------------------------------
# The job


def invert(engine: ModelHost, spec: InversionSpec, image: ImageInput | None,
           structure_images: StructureImages | None = None, cancel: CancelToken | None = None) -> Iterator[Event]:
    """Invert `image` (any PIL image or array; cropped/resized to the model's size, or kept at its own with
    `spec.keep_size`, the change reported)
    with `spec.method`. Bad input raises InvalidInputError here, before any model work; the returned
    generator streams Progress (and NTI's loss) events and ends with an InversionResult."""
    # 1. check inputs
    spec.validate()
    if spec.float64 and engine.device.type != "cpu":
        raise InvalidInputError("float64 runs on the CPU only: untick float64 or run the studio on the CPU.")
    if image is None:
        raise InvalidInputError("Upload an image to invert.")
    tokens = engine.tokenize(spec.prompt, "Prompt")
    size = working_size(image, engine.native_size, engine.size_multiple, spec.keep_size)
    prepared = prepare_image(image, size)
    structure = prepare_structure(engine, spec.structure, structure_images, size, size)
    job = _invert(engine, spec, prepared.image, prepared.note, tokens, structure, cancel)
    return engine.exclusive(job, PHASES[spec.method] * spec.steps, cancel, f"one {size}px image",
                            inversion_cost(spec, size))


@torch.no_grad()
def _invert(engine: ModelHost, spec: InversionSpec, image: Image.Image, note: str, tokens: Tokens,
            structure: PreparedStructure | None, cancel: CancelToken | None) -> Iterator[Event]:
    clock = Stopwatch()
    model = engine.model
    for event_note in structure.notes if structure is not None else ():
        yield Notice(event_note)

    # 2. encode the prompt, the null prompt and the image
    cond = engine.encode_prompt(tokens)
    null = engine.null_conditioning()
    latents = encode_image(model.vae, image).to(model.dtype)  # (1, C, h, w)

    # 3. the DDIM grid of the model's scheduler (trailing timesteps, zero terminal SNR handled in steps.py)
    scheduler = make_scheduler("ddim", model.scheduler_config)
    scheduler.set_timesteps(spec.steps, device=engine.device)
    grid = StepGrid.of(scheduler, model.prediction_type)
    denoiser = Denoiser(model, scheduler.alphas_cumprod)
    ctx = Context(denoiser, grid, cond, null, latents, spec, cancel, model.scheduler_config, vae=model.vae,
                  image=image, model=model, structure=structure)
    clock.lap("encode")

    # 4. invert (the image prompt's attention, when the structure has one, installed for the method's passes)
    with structure_attached(ctx.guidance(spec.guidance_scale), model.unet, denoiser):
        inverted: Inverted = yield from METHOD_RUNNERS[spec.method](ctx)
    inversion_passes = denoiser.unet_evaluations
    clock.lap("inversion")
    inversion = Inversion(
        method=spec.method, image=image, prompt=spec.prompt, guidance_scale=spec.guidance_scale,
        timesteps=scheduler.timesteps.cpu(), latents=latents, trajectory=inverted.trajectory,
        uncond_embeddings=inverted.uncond_embeddings, coupled=inverted.coupled,
        edict_mix=spec.edict_mix if spec.method == "edict" else None,
        bdia_gamma=spec.bdia_gamma if spec.method == "bdia" else None,
        dtype=inverted.dtype, preparation=note, losses=inverted.losses, corrections=inverted.corrections,
        method_settings={name: getattr(spec, name) for name in METHOD_SETTINGS[spec.method]},
        structure=structure,
    )

    # 5. reconstruct with the method's own sampler (under the same structure), measuring the distance to the
    #    inverted trajectory
    step_errors = []
    x = inversion.noise_latents
    for state in reconstruct_steps(ctx, inversion):
        x = state["x"]
        step_errors.append(float((x.double() - inversion.trajectory[state["i"] + 1].double()).pow(2).mean()))
        yield ctx.progress(PHASES[spec.method] - 1, state["i"] + 1, "reconstructing")
    clock.lap("reconstruction")

    # 6. decode and compare with the image and with the VAE's own round trip
    pixels = decode_latents(model.vae, torch.cat([x.to(model.dtype), latents]))  # (2, H, W, 3)
    reconstruction_image, ceiling_image = to_images(pixels)
    reconstruction, ceiling = np.asarray(reconstruction_image), np.asarray(ceiling_image)  # (H, W, 3) uint8
    original = np.asarray(image)
    timings = clock.timings()
    report = {
        "psnr": metrics.psnr(original, reconstruction),
        "ssim": metrics.ssim(original, reconstruction),
        "latent_mse": float((x.double() - latents.double()).pow(2).mean()),
        "vae_psnr": metrics.psnr(original, ceiling),
        "vae_ssim": metrics.ssim(original, ceiling),
        "inversion_unet_passes": inversion_passes,
        "backward_passes": ctx.backward_passes,
        "reconstruction_unet_passes": denoiser.unet_evaluations - inversion_passes,
        "inversion_seconds": timings["inversion"],
    }
    inputs_used = {"source_image": image_record(image)}
    if structure is not None:
        inputs_used["structure_images"] = structure.record()
    settings = reproduction_record(engine, "invert", asdict(spec), timings, denoiser.unet_evaluations,
                                   preparation=note, **inputs_used, **report)
    yield InversionResult([reconstruction_image], settings, timings, denoiser.unet_evaluations,
                          pixels[:1], inversion=replace(inversion, metrics=report), step_errors=step_errors,
                          method=spec.method, **report)


def reconstruct_steps(ctx: Context, inversion: Inversion) -> Iterator[StepState]:
    """The method's own sampler from x_T (states with "i" and "x" as sample_steps yields them)."""
    guider = ctx.guidance(inversion.guidance_scale)
    if inversion.method == "edict":
        return attached_steps(guider, ctx.denoiser, edict_sampling_steps(
            ctx.denoiser, guider, ctx.grid, inversion.trajectory[0], inversion.coupled[0], inversion.edict_mix, ctx.cancel))
    if inversion.method == "bdia":
        return attached_steps(guider, ctx.denoiser, bdia_sampling_steps(
            ctx.denoiser, guider, ctx.grid, inversion.trajectory[0], inversion.trajectory[1], inversion.bdia_gamma,
            ctx.cancel))
    return reconstruction_steps(ctx.denoiser, inversion, ctx.cond, ctx.null, ctx.scheduler_config, ctx.cancel,
                                ctx.model)
