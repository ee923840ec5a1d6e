"""SDEdit (Meng et al. 2022, Algorithm 1): strokes or an image as the guide, noised to t0, denoised to 0.

    events = engine.sdedit(SDEditSpec(prompt="a red circle on a blue background", strengths=(0.4, 0.6)),
                           guide=stroke_drawing)                       # unmasked: the whole image may change
    events = engine.sdedit(spec, guide=painted, mask=editable, original=photo)   # masked: only `mask` changes

Unmasked: x_t0 = sqrt(ab_t0) x_g + sqrt(1-ab_t0) eps (VP, DDIM from t0) or x_t0 = x_g + sigma(t0) eps (Meng et al.)
(VE: the Euler scheduler, whose state lives in sigma space), then the ONE sampling loop from t0 to 0, with the
prompt under CFG when there is one. K repeats (seeds seed, seed+1, ...) run as one batch per t0; several t0
make the faithfulness/realism strip. Each result reports its L2 distance to the guide and, when the model has
a noisy-latent classifier (the embedded shapes model), the classifier's confidence as a realism score.

Masked (the masked variant of Meng et al.'s Algorithm 1, in their appendix): the start is (1-M) x_0 + M x_g
noised; after every step of the loop the frozen latents (1-M) are replaced by the original re-noised to the
noise level the step reached, with the same eps as the start (the two-branch update), and by the original
itself after the last step, so frozen latents end exactly equal to the original's. The loop is unchanged: the update is its post-step
hook (masks.follow_off_mask).

Structure (studio.structure: strokes plus an outline, say): `spec.structure` with its maps in `structure_images`
wraps the guider of every t0 run (studio.structure.runtime.StructuredGuidance), the maps prepared at the working
size; a window is a fraction of the steps a run takes from t0, as diffusers' ControlNet img2img pipeline counts it.
Masked, the frozen latents are still the original's: the control steers only what the mask lets change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageDraw
from torch import Tensor

from studio import schedule, specs
from studio.classifier import NoisyClassifier
from studio.denoiser import Denoiser
from studio.editing import masks
from studio.errors import InvalidInputError
from studio.conditioning import Tokens
from studio.costs import JobCost, guidance_passes, structure_passes
from studio.events import CancelToken, Event, Notice, SDEditResult, SDEditSample
from studio.generation import PreparedStructure, prepare_structure, structure_attached
from studio.guidance import ClassifierFreeGuidance
from studio.images import ImageInput, encode_image, prepare_image, working_size
from studio.jobs import (
    ModelHost,
    Stopwatch,
    image_record,
    mask_record,
    reproduction_record,
    resolve_seed,
    step_events,
    to_images,
)
from studio.models import decode_latents
from studio.sampling import make_scheduler, sample_steps
from studio.structure.spec import StructureImages, StructureSpec

NOISE_FORMS = {"vp": "ddim", "ve": "euler"}  # SDEdit's VP and VE forms -> the scheduler that integrates it
T0 = specs.Range(0.05, 1.0, 0.05, "t0 (noise level, fraction of T)")
REPEATS = specs.Range(1, 8, 1, "Repeats per t0")
MAX_STRENGTHS = 6


@dataclass(frozen=True)
class SDEditSpec:
    RANGES: ClassVar[dict[str, specs.Range]] = {
        "steps": specs.STEPS, "guidance_scale": specs.GUIDANCE, "repeats": REPEATS, "seed": specs.SEED,
    }

    prompt: str = ""  # "" = no text: the model's unconditional prediction (SDEdit needs none)
    # t0 / T. Meng et al. 2022 balance faithfulness and realism in [0.3, 0.6]; on the embedded model's masked edits
    # (bench/results/edit_bench.md, 60 edits, the true mask) 0.3 / 0.5 / 0.7 / 0.85 succeed 0.13 / 0.32 / 0.80 / 0.88
    strengths: tuple[float, ...] = (0.5, 0.7, 0.85)
    repeats: int = 2  # K samples per t0
    seed: int | None = None  # repeat k uses seed + k
    steps: int = 25  # steps of the full schedule; a run from t0 takes round(t0 * steps) of them
    guidance_scale: float = 5.0
    noise_form: str = "vp"
    composite: bool = True  # masked only: original pixels outside the painted mask after decoding (see masks.composite)
    keep_size: bool = False  # work at the guide's own size (images.working_size) instead of the model's native one
    preview_every: int = 5
    structure: StructureSpec | None = None  # control maps / image prompt (studio.structure), checked by the job
    concepts: tuple[specs.ConceptUse, ...] = ()  # loaded concepts the edit runs with (studio.personalize.concepts)

    def __post_init__(self) -> None:
        if isinstance(self.structure, dict):  # settings (JSON, PNG chunks) hold it as a dict
            object.__setattr__(self, "structure", StructureSpec(**self.structure))
        object.__setattr__(self, "concepts", specs.concept_uses(self.concepts))

    @property
    def scale_used(self) -> float:
        """The guidance scale the edit runs with: 1 (the unconditional prediction alone) without a prompt."""
        return self.guidance_scale if self.prompt.strip() else 1.0

    def validate(self) -> None:
        if self.noise_form not in NOISE_FORMS:
            raise InvalidInputError(f"Noise form must be one of {', '.join(NOISE_FORMS)}, got {self.noise_form!r}.")
        if not self.strengths:
            raise InvalidInputError("Choose at least one t0.")
        if len(self.strengths) > MAX_STRENGTHS:
            raise InvalidInputError(f"At most {MAX_STRENGTHS} values of t0 per run, got {len(self.strengths)}.")
        for strength in self.strengths:
            T0.check("t0", strength)
        specs.check_ranges(self, self.RANGES)
        for strength in self.strengths:
            if denoising_steps(self.steps, strength) < 1:
                raise InvalidInputError(
                    f"t0 = {strength:g} with {self.steps} steps leaves no step to denoise: raise t0 or the steps."
                )


# --------------------------------------------------------------------------------------------
# Pure maths


def sdedit_start(guide: Tensor, noise: Tensor, level: float | Tensor, noise_form: str) -> Tensor:
    """The guide noised to t0. VP: sqrt(ab) x_g + sqrt(1-ab) eps with level = ab_t0 (Ho et al. 2020 eq. 4);
    VE: x_g + sigma(t0) eps with level = sigma_t0 (the Euler scheduler's own state)."""
    if noise_form == "vp":
        return schedule.noise_to(guide, noise, level)
    return guide + torch.as_tensor(level).to(guide) * noise


def masked_guide(original: Tensor, guide: Tensor, mask: Tensor) -> Tensor:
    """Masked SDEdit's start (Meng et al. 2022): (1 - M) x_0 + M x_g, before noise is added."""
    return (1 - mask) * original + mask * guide


def denoising_steps(steps: int, strength: float) -> int:
    """How many steps of a `steps`-step schedule a run from t0 = strength takes (diffusers img2img's convention)."""
    return round(strength * steps)


def start_index(steps: int, strength: float) -> int:
    """Where the run from t0 = strength starts in a `steps`-step schedule."""
    return steps - denoising_steps(steps, strength)


def noise_levels(scheduler: SchedulerMixin, noise_form: str, start: int) -> list[Tensor]:
    """The noise level of the state before each step from `start` on, and after the last one (clean):
    alpha_bar (VP, DDIM) or sigma (VE, Euler) -- what `sdedit_start` takes."""
    if noise_form == "vp":
        alpha_bars = schedule.alpha_bars_at(scheduler.alphas_cumprod, scheduler.timesteps[start:])
        return [*alpha_bars, torch.tensor(1.0)]
    return list(scheduler.sigmas[start:].cpu())  # Euler's sigmas already end with 0


def l2_to_guide(pixels: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """Per image (B,): root-mean-square distance to the guide of [0, 1] pixels (B, H, W, 3) vs (H, W, 3),
    the SDEdit paper's faithfulness measure (an L2 distance, here per pixel so sizes compare)."""
    return np.sqrt(((pixels - guide[None]) ** 2).mean(axis=(1, 2, 3)))


def result_strip(guide: Image.Image, images: list[Image.Image], strengths: tuple[float, ...], repeats: int,
                 samples: list[SDEditSample]) -> Image.Image:
    """One picture of the trade-off: the guide, then one column per t0 (low to high), one row per repeat,
    each tile captioned with its L2 distance to the guide and realism."""
    size = guide.width
    caption = 24
    order = sorted(range(len(strengths)), key=lambda s: strengths[s])
    strip = Image.new("RGB", ((len(strengths) + 1) * size, repeats * (size + caption)), "white")
    draw = ImageDraw.Draw(strip)
    for k in range(repeats):
        top = k * (size + caption)
        strip.paste(guide, (0, top))
        draw.text((4, top + size + 2), "guide", fill="black")
        for column, s in enumerate(order, start=1):
            index = s * repeats + k
            strip.paste(images[index], (column * size, top))
            sample = samples[index]
            realism = "" if sample.realism is None else f" r {sample.realism:.2f}"
            draw.text((column * size + 4, top + size + 2), f"t0 {sample.t0:.2f}", fill="black")
            draw.text((column * size + 4, top + size + 12), f"L2 {sample.l2_to_guide:.3f}{realism}", fill="black")
    return strip


# --------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class _Inputs:
    guide: Image.Image
    original: Image.Image
    mask: np.ndarray | None  # (H, W) bool, editable
    notes: list[str]


def prepare_inputs(guide: ImageInput | None, mask: np.ndarray | None, original: ImageInput | None, size: int) -> _Inputs:
    """Guide, mask and original checked against each other at their uploaded size, then brought to `size`
    the same way (centre crop, resize). Raises InvalidInputError."""
    if guide is None:
        raise InvalidInputError("Paint a guide (strokes on the canvas) or upload an image first.")
    guide_array = np.asarray(guide)
    source_size = guide_array.shape[:2]
    if original is not None and np.asarray(original).shape[:2] != source_size:
        shape = np.asarray(original).shape
        raise InvalidInputError(
            f"The original image is {shape[1]}x{shape[0]} but the guide is {source_size[1]}x{source_size[0]}: "
            "they must be the same picture."
        )
    prepared_guide = prepare_image(guide, size)
    prepared_original = prepare_image(original, size) if original is not None else prepared_guide
    prepared_mask = masks.prepare_mask(mask, source_size, size) if mask is not None else None
    notes = [f"guide: {prepared_guide.note}"]
    return _Inputs(prepared_guide.image, prepared_original.image, prepared_mask, notes)


def sdedit(engine: ModelHost, spec: SDEditSpec, guide: ImageInput | None, mask: np.ndarray | None = None,
           original: ImageInput | None = None, structure_images: StructureImages | None = None,
           cancel: CancelToken | None = None) -> Iterator[Event]:
    """Check the inputs (raising InvalidInputError before any model work), then queue the job on the engine.
    `structure_images` carry the maps and the reference image of `spec.structure`'s rows."""
    # 1. check inputs
    spec.validate()
    tokens = engine.tokenize(spec.prompt, "Prompt")
    size = working_size(guide, engine.native_size, engine.size_multiple, spec.keep_size)
    inputs = prepare_inputs(guide, mask, original, size)
    structure = prepare_structure(engine, spec.structure, structure_images, size, size)
    seed = resolve_seed(spec.seed, span=spec.repeats)
    total = sum(denoising_steps(spec.steps, s) for s in spec.strengths)
    job = _sdedit(engine, spec, inputs, tokens, seed, total, structure, cancel)
    passes = guidance_passes(spec.scale_used) + structure_passes(spec.structure, spec.scale_used != 1)
    return engine.exclusive(job, total, cancel, f"{len(spec.strengths)} t0 values x {spec.repeats} repeats",
                            JobCost(size, size, total, spec.repeats, passes))


@torch.no_grad()
def _sdedit(engine: ModelHost, spec: SDEditSpec, inputs: _Inputs, tokens: Tokens, seed: int, total: int,
            structure: PreparedStructure | None, cancel: CancelToken | None) -> Iterator[Event]:
    clock = Stopwatch()
    model = engine.model
    for note in structure.notes if structure is not None else ():
        yield Notice(note)

    # 2. encode the guide, the original and the prompt (no prompt: the unconditional prediction alone)
    guide_latents = encode_image(model.vae, inputs.guide).to(model.dtype)  # (1, C, h, w)
    same_image = inputs.original is inputs.guide  # unmasked, or masked on the guide itself: encode once
    original_latents = guide_latents if same_image else encode_image(model.vae, inputs.original).to(model.dtype)
    null = engine.null_conditioning()
    guider = ClassifierFreeGuidance(cond=engine.encode_prompt(tokens), uncond=null, scale=spec.scale_used)
    latent_mask = None
    start_latents = guide_latents
    if inputs.mask is not None:
        latent_mask = masks.to_latent_mask(inputs.mask, tuple(guide_latents.shape[2:]), engine.device, model.dtype)
        start_latents = masked_guide(original_latents, guide_latents, latent_mask)

    # 3. one noise per repeat, seeded on the CPU like generation (repeat k = seed + k)
    generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(spec.repeats)]
    noise = randn_tensor((spec.repeats, *guide_latents.shape[1:]), generator=generators, device=engine.device,
                         dtype=model.dtype)  # (K, C, h, w)

    # 4. one run of the sampling loop per t0, the K repeats batched
    results: list[Tensor] = []
    unet_evaluations = done_before = 0  # done_before: steps of the earlier t0 runs, for the progress count
    for strength in spec.strengths:
        scheduler = make_scheduler(NOISE_FORMS[spec.noise_form], model.scheduler_config)
        scheduler.set_timesteps(spec.steps, device=engine.device)
        start = start_index(spec.steps, strength)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)  # Euler keeps its own step index into sigmas
        timesteps = scheduler.timesteps[start:]
        levels = noise_levels(scheduler, spec.noise_form, start)
        x = sdedit_start(start_latents, noise, levels[0], spec.noise_form)  # (K, C, h, w)
        two_branch = None
        if latent_mask is not None:
            # masked step 2: after step i the state is at levels[i + 1], where the frozen latents are the original
            # re-noised with the start's eps; the last level is clean: the original itself
            frozen = [sdedit_start(original_latents, noise, level, spec.noise_form) for level in levels[1:-1]]
            two_branch = masks.follow_off_mask(latent_mask, [*frozen, original_latents.expand_as(x)])
        denoiser = Denoiser(model, scheduler.alphas_cumprod)
        run_guider = guider
        if structure is not None:  # the controls' windows over this run's steps, T2I features once per run
            run_guider = structure.wrap(engine.model, guider, null, timesteps, scheduler.alphas_cumprod)
        with structure_attached(run_guider, model.unet, denoiser):
            for state in sample_steps(denoiser, run_guider, scheduler, timesteps, x, cancel, generators[0],
                                      after_step=two_branch):
                x = state["x"]
                yield from step_events(state, len(timesteps), model.vae, spec.preview_every, done_before, total,
                                       f"t0 {strength:g}: ")
        results.append(x)
        unet_evaluations += denoiser.unet_evaluations
        done_before += len(timesteps)
    latents = torch.cat(results)  # (S * K, C, h, w)
    clock.lap("sampling")

    # 5. decode; masked runs may paste the original pixels back outside the painted mask
    pixels = decode_latents(model.vae, latents)  # (S * K, H, W, 3) in [0, 1]
    if inputs.mask is not None and spec.composite:
        original_pixels = np.asarray(inputs.original, dtype=np.float32) / 255
        pixels = np.stack([masks.composite(p, original_pixels, inputs.mask) for p in pixels])

    # 6. faithfulness and realism of every result
    samples = measure_samples(model.classifier, spec, seed, pixels, latents, inputs.guide)
    images = to_images(pixels)
    strip = result_strip(inputs.guide, images, spec.strengths, spec.repeats, samples)
    clock.lap("decode")

    timings = clock.timings()
    inputs_used = {"source_image": image_record(inputs.guide)}
    if inputs.original is not inputs.guide:
        inputs_used["original_image"] = image_record(inputs.original)
    if inputs.mask is not None:
        inputs_used["mask"] = mask_record(inputs.mask, "given")
    if structure is not None:
        inputs_used["structure_images"] = structure.record()
    settings = reproduction_record(
        engine, "sdedit", {"method": "sdedit", **asdict(spec)}, timings, unet_evaluations, seed=seed,
        seeds=[sample.seed for sample in samples], masked=inputs.mask is not None, guidance_scale_used=spec.scale_used,
        inputs=inputs.notes, results=[asdict(sample) for sample in samples], **inputs_used,
    )
    yield SDEditResult(images, settings, timings, unet_evaluations, pixels, seed=seed, samples=samples,
                       masked=inputs.mask is not None, guidance_scale_used=spec.scale_used, strip=strip, latents=latents,
                       original_latents=original_latents, latent_mask=latent_mask)


def measure_samples(classifier: NoisyClassifier | None, spec: SDEditSpec, seed: int, pixels: np.ndarray,
                    latents: Tensor, guide: Image.Image) -> list[SDEditSample]:
    """Each image's L2 distance to the guide and, with a noisy-latent classifier that scores realism, its
    realism, in the images' order ([t0_0 x K, t0_1 x K, ...])."""
    distances = l2_to_guide(pixels, np.asarray(guide, dtype=np.float32) / 255)
    scores = classifier.realism if classifier is not None else None
    realism = scores(latents).tolist() if scores is not None else None
    return [
        SDEditSample(t0=strength, repeat=k, seed=seed + k, l2_to_guide=float(distances[index]),
                     realism=None if realism is None else float(realism[index]))
        for index, (strength, k) in enumerate((s, k) for s in spec.strengths for k in range(spec.repeats))
    ]
