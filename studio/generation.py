"""Text to image: a job like the others (studio.editing, studio.inversion), run through the engine.

    for event in engine.generate(GenerateSpec("a red circle on the left", seed=1)):
        ...                                # Progress, Preview, AttentionMaps, then one GenerationResult

Plain generation is StableDiffusionPipeline's algorithm step for step (tests/test_parity.py): same
latent initialisation, prompt encoding, CFG and decoding. With conditions, guidance rescale or
classifier guidance it runs the scheduled multi-condition guider instead, whose per-step weights are
the GuidancePlan the UI plots. Structure (control maps, an image prompt: studio.structure) wraps whichever guider
runs (studio.structure.runtime.StructuredGuidance); in diffusers' default mode it is StableDiffusionControlNetPipeline,
StableDiffusionAdapterPipeline and the IP-Adapter path of StableDiffusionPipeline step for step
(tests/test_structure_parity.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from studio import schedule, specs
from studio.attention.maps import combined_maps, per_resolution_maps
from studio.attention.processors import AttentionStore, capture_cross_attention
from studio.conditioning import Cond, Tokens
from studio.costs import JobCost, guidance_passes, structure_passes
from studio.denoiser import Denoiser
from studio.errors import InvalidInputError
from studio.events import AttentionMaps, CancelToken, Event, GenerationResult, Notice
from studio.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guider,
    MultiConditionGuidance,
    schedule_factors,
)
from studio.jobs import (
    ModelHost,
    Stopwatch,
    image_record,
    reproduction_record,
    resolve_seed,
    step_events,
    to_images,
)
from studio.models import LoadedModel, decode_latents
from studio.sampling import make_scheduler, sample_steps
from studio.specs import GenerateSpec
from studio.structure.maps import prepare_control_map
from studio.structure.runtime import (
    StructuredGuidance,
    StructureSchedule,
    structure_schedule,
    structured_guider,
)
from studio.structure.spec import StructureImages, StructureSpec


@dataclass(frozen=True)
class GuidancePlan:
    """Every guidance weight of a run, per step: what the sampler will apply and the UI plots."""

    timesteps: Tensor  # (N,)
    labels: list[str]  # condition names: the prompt, then each condition row
    weights: Tensor  # (N, K) signed weight w_k(t_i); column 0 is the prompt (guidance scale)
    classifier_strengths: Tensor | None  # (N,) s(t_i), None without classifier guidance
    structure: StructureSchedule | None = None  # each structure row's scale and channel weight per step; None without


@dataclass(frozen=True)
class Prompts:
    """A spec's prompts, tokenized and checked."""

    prompt: Tokens
    negative: Tokens
    conditions: list[Tokens]


@dataclass(frozen=True)
class PreparedStructure:
    """A run's structure, checked: the spec, its control maps at the output size, the image prompt's reference, and
    the notes on how the maps were read (resized, converted) for the user."""

    spec: StructureSpec
    maps: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8, one per control row
    reference: np.ndarray | None = None  # (h, w, 3) uint8
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        """The maps and the reference as image records, for the reproduction record."""
        return {
            "controls": [image_record(Image.fromarray(m)) for m in self.maps],
            "image_prompt": None if self.reference is None else image_record(Image.fromarray(self.reference)),
        }

    def wrap(self, model: LoadedModel, inner: Guider, null: Cond, timesteps: Tensor,
             alphas_cumprod: Tensor) -> StructuredGuidance:
        """`inner` with this structure attached over the run's `timesteps` (windows are fractions of the steps it
        runs, as diffusers' img2img ControlNet pipelines count them), on `model`'s controls: what every job that
        samples uses."""
        return structured_guider(inner, null, self.spec, self.maps, self.reference, model.controls,
                                 model.image_prompt, timesteps, alphas_cumprod, model.device, model.dtype)


def structure_attached(guider: Guider, unet: object, denoiser: Denoiser) -> AbstractContextManager[None]:
    """For a run: the image prompt's attention installed when `guider` carries structure (see
    StructuredGuidance.attached); nothing to install otherwise."""
    return guider.attached(unet, denoiser) if isinstance(guider, StructuredGuidance) else nullcontext()


def check_structure(host: ModelHost, structure: StructureSpec) -> None:
    """`structure` against the model's loaded controls and IP-Adapter; raises InvalidInputError."""
    controls = host.model.controls
    structure.validate({name: f"{c.kind} for {c.trained_for or 'unknown maps'}" for name, c in controls.items()},
                       host.model.image_prompt is not None)


def prepare_structure(host: ModelHost, structure: StructureSpec | None, images: StructureImages | None,
                      width: int, height: int) -> PreparedStructure | None:
    """Check a spec's structure against the loaded controls and its images (no model work); None when it has none.
    Raises InvalidInputError: unknown control, no IP-Adapter loaded, missing or empty map, missing reference."""
    if structure is None or structure.empty:
        return None
    check_structure(host, structure)
    if images is None:
        raise InvalidInputError("The structure rows need their images: give each control row its map"
                                + (" and the image prompt its reference." if structure.image_prompt else "."))
    images.check_against(structure)
    maps, notes = [], []
    for row, (control, image) in enumerate(zip(structure.controls, images.controls, strict=True), start=1):
        try:
            prepared, map_notes = prepare_control_map(image, width, height)
        except InvalidInputError as error:
            raise InvalidInputError(f"Control {row} ({control.control}): {error}") from None
        maps.append(prepared)
        notes.extend(f"Control {row} ({control.control}): {note}" for note in map_notes)
    reference = None
    if structure.image_prompt is not None:
        reference = np.asarray(Image.fromarray(np.asarray(images.image_prompt, dtype=np.uint8)).convert("RGB"))
    return PreparedStructure(structure, maps, reference, notes)


def guidance_plan(host: ModelHost, spec: GenerateSpec) -> GuidancePlan:
    """Per-step weights of the prompt and every condition (and the classifier strength) for `spec`:
    no model work, so the UI can plot them while the user edits. Raises InvalidInputError."""
    spec.validate(host.size_multiple)
    scheduler = make_scheduler(spec.scheduler, host.model.scheduler_config)
    scheduler.set_timesteps(spec.steps)
    plan = plan_of(spec, scheduler.timesteps, scheduler.alphas_cumprod)
    if spec.structure is None or spec.structure.empty:
        return plan
    check_structure(host, spec.structure)
    kinds = {name: control.kind for name, control in host.model.controls.items()}
    return replace(plan, structure=structure_schedule(spec.structure, kinds, scheduler.timesteps, scheduler.alphas_cumprod))


def plan_of(spec: GenerateSpec, timesteps: Tensor, alphas_cumprod: Tensor) -> GuidancePlan:
    alpha_bars = schedule.alpha_bars_at(alphas_cumprod, timesteps).double()  # (N,) the plan is float64
    columns = [torch.full_like(alpha_bars, spec.guidance_scale)]
    for c in spec.conditions:
        columns.append(c.weight * schedule_factors(c.schedule, c.exponent, c.start, c.stop, alpha_bars))
    strengths = None
    if (cg := spec.classifier_guidance) is not None:
        strengths = cg.strength * schedule_factors(cg.schedule, cg.exponent, cg.start, cg.stop, alpha_bars)
    return GuidancePlan(
        timesteps=timesteps.cpu(),
        labels=[spec.prompt, *(c.prompt for c in spec.conditions)],
        weights=torch.stack(columns, dim=1),
        classifier_strengths=strengths,
    )


def generate(host: ModelHost, spec: GenerateSpec, structure_images: StructureImages | None = None,
             cancel: CancelToken | None = None) -> Iterator[Event]:
    """Bad input raises InvalidInputError here, before any model work; the returned generator waits for
    its turn on the model, then streams the job's events. `structure_images` carry the maps and the reference
    image of `spec.structure`'s rows."""
    # 1. check inputs (spec ranges, size multiple, words the tokenizer knows, prompt length)
    spec.validate(host.size_multiple)
    prompts = Prompts(
        prompt=host.tokenize(spec.prompt),
        negative=host.tokenize(spec.negative_prompt, "Negative prompt"),
        conditions=[host.tokenize(c.prompt, f"Condition {row}") for row, c in enumerate(spec.conditions, start=1)],
    )
    if spec.classifier_guidance is not None:
        classifier = host.model.classifier
        if classifier is None:
            raise InvalidInputError(
                f"{host.model_name} has no noisy-latent classifier (a classifier/ folder beside its weights): "
                "turn classifier guidance off."
            )
        if spec.classifier_guidance.target not in classifier.targets:
            raise InvalidInputError(
                f"Classifier guidance: unknown target {spec.classifier_guidance.target!r}; choose one of "
                f"{', '.join(classifier.targets)}."
            )
    if spec.seed is not None and spec.seed + spec.batch_size - 1 > specs.SEED.high:
        raise InvalidInputError(
            f"Seed {spec.seed} with batch size {spec.batch_size} would use seeds up to {spec.seed + spec.batch_size - 1}, "
            f"past the largest seed {int(specs.SEED.high)}: lower the seed or the batch size."
        )
    width, height = spec.size_on(host.native_size)
    structure = prepare_structure(host, spec.structure, structure_images, width, height)
    job = _generate(host, spec, resolve_seed(spec.seed, span=spec.batch_size), prompts, structure, cancel)
    return host.exclusive(job, spec.steps, cancel, f"{width}x{height} with batch size {spec.batch_size}",
                          generation_cost(spec, width, height))


def generation_cost(spec: GenerateSpec, width: int, height: int) -> JobCost:
    """The UNet passes choose_guider's guider makes a step: plain CFG's, or the negative prompt, the prompt and
    each condition; then structure's channel rows."""
    passes = 2 + len(spec.conditions) if spec.uses_global_guidance else guidance_passes(spec.guidance_scale)
    has_unconditional = spec.uses_global_guidance or spec.guidance_scale != 1
    return JobCost(width, height, spec.steps, spec.batch_size,
                   passes + structure_passes(spec.structure, has_unconditional))


@torch.no_grad()
def _generate(host: ModelHost, spec: GenerateSpec, seed: int, prompts: Prompts, structure: PreparedStructure | None,
              cancel: CancelToken | None) -> Iterator[Event]:
    clock = Stopwatch()
    model = host.model
    width, height = spec.size_on(host.native_size)
    for note in structure.notes if structure is not None else ():
        yield Notice(note)

    # 2. encode prompts (the negative prompt, "" by default, is the unconditional branch)
    prompt = host.encode_prompt(prompts.prompt)
    uncond = host.encode_negative_prompt(prompts.negative)
    conditions = [host.encode_prompt(tokens) for tokens in prompts.conditions]
    clock.lap("encode")

    # 3. prepare the scheduler and its timesteps
    scheduler = make_scheduler(spec.scheduler, model.scheduler_config)
    scheduler.set_timesteps(spec.steps, device=host.device)
    denoiser = Denoiser(model, scheduler.alphas_cumprod)
    guider = choose_guider(host, spec, prompt, uncond, conditions, scheduler.timesteps, scheduler.alphas_cumprod)
    if structure is not None:  # control maps and image prompt on top of whichever guider runs
        guider = structure.wrap(model, guider, uncond, scheduler.timesteps, scheduler.alphas_cumprod)
        clock.lap("structure")  # the T2I-Adapter's features and the image embedding, once per run

    # 4. initial latents: item i from its own CPU generator seeded seed + i (as AUTOMATIC1111 seeds a batch), so
    #    batch item i is remade alone with seed + i, on every device; the generators also draw ancestral noise
    generators = [torch.Generator("cpu").manual_seed(item_seed) for item_seed in batch_seeds(seed, spec.batch_size)]
    latent_shape = (spec.batch_size, model.unet.config.in_channels, height // host.size_multiple,
                    width // host.size_multiple)
    latents = randn_tensor(latent_shape, generator=generators, device=host.device, dtype=model.dtype)
    latents = latents * scheduler.init_noise_sigma

    # 5. attention capture, installed only for this job and only when asked
    store = None
    if spec.capture_attention:
        store = AttentionStore(
            latent_size=latent_shape[2:],
            batch_index=denoiser.batch_index(guider.primary, image=0, batch=spec.batch_size),
        )
    capture = capture_cross_attention(model.unet, store) if store is not None else nullcontext()

    # 6. denoising loop, streaming progress, previews and attention maps (the image prompt's attention wraps the
    #    stock processors first, so capture wraps it in turn)
    with structure_attached(guider, model.unet, denoiser), capture:
        for state in sample_steps(denoiser, guider, scheduler, scheduler.timesteps, latents, cancel, generators,
                                  on_step_begin=store.begin_step if store is not None else None):
            latents = state["x"]
            yield from step_events(state, spec.steps, model.vae, spec.preview_every)
            done = state["i"] + 1
            if store is not None and (done % spec.attention_every == 0 or done == spec.steps):
                yield attention_event(done, store, prompts.prompt)
    sampling_seconds = clock.lap("sampling")

    # 7. decode
    pixels = decode_latents(model.vae, latents)
    clock.lap("decode")

    # 8. result: everything needed to make these images again, and what the guidance cost
    yield _result(host, spec, seed, pixels, clock, guider, denoiser.unet_evaluations, sampling_seconds, structure)


def _result(host: ModelHost, spec: GenerateSpec, seed: int, pixels: np.ndarray, clock: Stopwatch, guider: Guider,
            unet_evaluations: int, sampling_seconds: float,
            structure: PreparedStructure | None = None) -> GenerationResult:
    """The images, the settings that make them again, and per step: NFE (UNet predictions per image, all in
    one batched call) and, with classifier guidance, its gradient evaluations and seconds beside the whole
    sampling step's (UNet, guidance, scheduler, previews)."""
    timings = clock.timings()
    measured: dict[str, float] = {"nfe_per_step": len(guider.conds_at(0))}
    if structure is not None:
        measured["structure_images"] = structure.record()
        guider = guider.inner  # the classifier's counters below
    classified = isinstance(guider, ClassifierGuidance)
    if classified:
        timings["classifier_gradient"] = guider.gradient_seconds
        measured.update({
            "classifier_gradient_evaluations": guider.gradient_evaluations,
            "classifier_seconds_per_step": guider.gradient_seconds / spec.steps,
            "sampling_seconds_per_step": sampling_seconds / spec.steps,
        })
    width, height = spec.size_on(host.native_size)
    spec_fields = {
        "seed": seed,
        "seeds": batch_seeds(seed, spec.batch_size),
        "scheduler": spec.scheduler,
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "width": width,
        "height": height,
        "batch_size": spec.batch_size,
        "conditions": [asdict(c) for c in spec.conditions],
        "guidance_rescale": spec.guidance_rescale,
        "classifier_guidance": asdict(spec.classifier_guidance) if spec.classifier_guidance else None,
        "structure": asdict(spec.structure) if structure is not None else None,
    }
    settings = reproduction_record(host, "generate", spec_fields, timings, unet_evaluations, **measured)
    return GenerationResult(
        to_images(pixels), settings, timings, unet_evaluations, pixels, seed=seed, steps=spec.steps,
        nfe_per_step=measured["nfe_per_step"], sampling_seconds_per_step=sampling_seconds / spec.steps,
        classifier_gradient_evaluations=guider.gradient_evaluations if classified else None,
        classifier_seconds_per_step=measured.get("classifier_seconds_per_step"),
    )


def batch_seeds(seed: int, batch_size: int) -> list[int]:
    """The seed of each image of a batch: seed, seed + 1, ... (AUTOMATIC1111's convention)."""
    return [seed + item for item in range(batch_size)]


def choose_guider(host: ModelHost, spec: GenerateSpec, prompt: Cond, uncond: Cond, conditions: list[Cond],
                  timesteps: Tensor, alphas_cumprod: Tensor) -> Guider:
    """Plain CFG exactly as StableDiffusionPipeline (parity); otherwise scheduled multi-condition CFG,
    wrapped by classifier guidance when asked."""
    if not spec.uses_global_guidance:
        return ClassifierFreeGuidance(cond=prompt, uncond=uncond, scale=spec.guidance_scale)
    plan = plan_of(spec, timesteps, alphas_cumprod)
    shared = dict(alphas_cumprod=alphas_cumprod, prediction_type=host.model.prediction_type)
    guider: Guider = MultiConditionGuidance(
        uncond=uncond, conditions=[prompt, *conditions], weights=plan.weights, rescale=spec.guidance_rescale,
        **shared,
    )
    if spec.classifier_guidance is not None:
        classifier, target = host.model.classifier, spec.classifier_guidance.target
        guider = ClassifierGuidance(
            inner=guider, log_prob=classifier.log_prob(target), strengths=plan.classifier_strengths,
            normalise=spec.classifier_guidance.normalise, region=classifier.region(target), **shared,
        )
    return guider


def attention_event(step: int, store: AttentionStore, tokens: Tokens) -> AttentionMaps:
    means = store.means()
    return AttentionMaps(
        step=step,
        tokens=tokens.words,
        maps=combined_maps(means, tokens.word_tokens),
        per_resolution=per_resolution_maps(means, tokens.word_tokens),
    )
