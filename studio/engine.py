"""The engine: one resident model, one job at a time, every job a generator of typed events.

    engine = Engine()                      # embedded model, best device
    for event in engine.generate(GenerateSpec("a red circle on the left", seed=1)):
        ...                                # Progress, Preview, AttentionMaps, then one Result

Plain generation is StableDiffusionPipeline's algorithm step for step (tests/test_parity.py):
same latent initialisation, prompt encoding, CFG and decoding.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from studio import specs
from studio.attention.maps import combined_maps, per_resolution_maps
from studio.attention.processors import AttentionStore, capture_cross_attention
from studio.conditioning import Cond, Tokens, encode, tokenize, zeroed
from studio.denoiser import Denoiser
from studio.editing.diffedit import DiffEditSpec, diffedit, diffedit_mask
from studio.editing.p2p import P2PSpec, prompt_to_prompt
from studio.editing.sdedit import SDEditSpec, sdedit
from studio.errors import DeviceOutOfMemoryError, InvalidInputError, UnknownWordError
from studio.events import AttentionMaps, CancelToken, Event, Preview, Progress, Result
from studio.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guider,
    MultiConditionGuidance,
    classifier_targets,
    schedule_factors,
    step_alpha_bars,
)
from studio.inversion import InversionSpec, invert
from studio.fair_lock import FairLock
from studio.models import LoadedModel, decode_latents, load_model
from studio.sampling import make_scheduler, sample_steps
from studio.specs import GenerateSpec


@dataclass(frozen=True)
class GuidancePlan:
    """Every guidance weight of a run, per step: what the sampler will apply and the UI plots."""

    timesteps: Tensor  # (N,)
    labels: list[str]  # condition names: the prompt, then each condition row
    weights: Tensor  # (N, K) signed weight w_k(t_i); column 0 is the prompt (guidance scale)
    classifier_strengths: Tensor | None  # (N,) s(t_i), None without classifier guidance


class Engine:
    """Loads a model once (see studio.models for sources and device policy) and runs jobs on it."""

    def __init__(self, source: str | None = None, device: str | None = None, dtype: torch.dtype | None = None,
                 offload: bool = False, compile_unet: bool = False):
        self.model: LoadedModel = load_model(source, device, dtype, offload=offload, compile_unet=compile_unet)
        self._lock = FairLock()

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def native_size(self) -> int:
        return self.model.native_size

    @property
    def size_multiple(self) -> int:
        return self.model.size_multiple

    @property
    def prediction_type(self) -> str:
        return self.model.prediction_type

    @property
    def jobs_waiting(self) -> int:
        return self._lock.waiting

    @property
    def classifier_targets(self) -> list[str]:
        """Classes classifier guidance can steer towards; empty when the model has no classifier."""
        return list(classifier_targets()) if self.model.classifier is not None else []

    def guidance_plan(self, spec: GenerateSpec) -> GuidancePlan:
        """Per-step weights of the prompt and every condition (and the classifier strength) for `spec`:
        no model work, so the UI can plot them while the user edits. Raises InvalidInputError."""
        spec.validate(self.size_multiple)
        scheduler = make_scheduler(spec.scheduler, self.model.scheduler_config)
        scheduler.set_timesteps(spec.steps)
        return self._plan(spec, scheduler.timesteps, scheduler.alphas_cumprod)

    @staticmethod
    def _plan(spec: GenerateSpec, timesteps: Tensor, alphas_cumprod: Tensor) -> GuidancePlan:
        alpha_bars = step_alpha_bars(timesteps, alphas_cumprod)
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

    def p2p(self, spec: P2PSpec, inversion: object | None = None, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Prompt-to-Prompt edit of a generated image, or of `inversion` (studio.editing.p2p)."""
        return prompt_to_prompt(self, spec, inversion, cancel)

    def sdedit(self, spec: SDEditSpec, guide: object, mask: np.ndarray | None = None, original: object = None,
               cancel: CancelToken | None = None) -> Iterator[Event]:
        """SDEdit of a stroke drawing or image, masked when `mask` is given (studio.editing.sdedit)."""
        return sdedit(self, spec, guide, mask, original, cancel)

    def diffedit_mask(self, spec: DiffEditSpec, image: object = None, inversion: object | None = None,
                      cancel: CancelToken | None = None) -> Iterator[Event]:
        """DiffEdit Stage I: the edit mask, streamed as it accumulates (studio.editing.diffedit)."""
        return diffedit_mask(self, spec, image, inversion, cancel)

    def diffedit(self, spec: DiffEditSpec, image: object = None, mask: np.ndarray | None = None,
                 inversion: object | None = None, cancel: CancelToken | None = None) -> Iterator[Event]:
        """DiffEdit: Stage II with `mask`, or Stages I and II without (studio.editing.diffedit)."""
        return diffedit(self, spec, image, mask, inversion, cancel)

    def invert(self, spec: InversionSpec, image: object, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Map a real image into the model's latent trajectory; ends with an InversionResult (studio.inversion)."""
        return invert(self, spec, image, cancel)

    def generate(self, spec: GenerateSpec, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Text to image. Bad input raises InvalidInputError here, before any model work;
        the returned generator waits for its turn on the model, then streams the job's events."""
        # 1. check inputs (spec ranges, size multiple, words the tokenizer knows, prompt length)
        spec.validate(self.size_multiple)
        prompt_tokens = self.tokenize(spec.prompt)
        negative_tokens = self.tokenize(spec.negative_prompt, "Negative prompt")
        condition_tokens = [self.tokenize(c.prompt, f"Condition {row}") for row, c in enumerate(spec.conditions, start=1)]
        if spec.classifier_guidance is not None:
            if self.model.classifier is None:
                raise InvalidInputError(
                    f"{self.model_name} has no noisy-latent classifier (a classifier/ folder beside its weights): "
                    "turn classifier guidance off."
                )
            if spec.classifier_guidance.target not in classifier_targets():
                raise InvalidInputError(
                    f"Classifier guidance: unknown target {spec.classifier_guidance.target!r}; choose one of "
                    f"{', '.join(classifier_targets())}."
                )
        seed = spec.seed if spec.seed is not None else secrets.randbelow(int(specs.SEED.high) + 1)
        return self._queued(spec, seed, prompt_tokens, negative_tokens, condition_tokens, cancel)

    def _queued(self, spec: GenerateSpec, seed: int, prompt_tokens: Tokens, negative_tokens: Tokens,
                condition_tokens: list[Tokens], cancel: CancelToken | None) -> Iterator[Event]:
        width, height = spec.width or self.native_size, spec.height or self.native_size
        job = self._generate(spec, seed, prompt_tokens, negative_tokens, condition_tokens, cancel)
        return self.exclusive(job, spec.steps, cancel, f"{width}x{height} with batch size {spec.batch_size}")

    def exclusive(self, job: Iterator[Event], total_steps: int, cancel: CancelToken | None,
                  workload: str) -> Iterator[Event]:
        """Run `job` (an un-started generator of events) with the model to itself: waits its turn
        (announced by a Progress event), and turns a device out-of-memory error into
        DeviceOutOfMemoryError naming `workload` ("512x512 with batch size 4"), leaving the engine usable.
        Every engine job (generate, invert, edit) goes through here."""
        if self._lock.busy:
            yield Progress(0, total_steps, "Waiting for the previous job to finish…")
        with self._lock.hold(cancel):
            try:
                yield from job
            except torch.cuda.OutOfMemoryError as error:
                torch.cuda.empty_cache()  # give the failed job's memory back so the next one can run
                raise DeviceOutOfMemoryError(
                    f"The {self.device} device ran out of memory at {workload}: "
                    "lower the size, the batch size or the number of images and try again."
                ) from error

    def tokenize(self, prompt: str, label: str = "") -> Tokens:
        """Tokens of a prompt, checked (unknown words, length); `label` ("Target prompt") prefixes errors."""
        try:
            return tokenize(self.model.tokenizer, prompt, self.model_name, self.model.tokenizer_2)
        except UnknownWordError as error:
            raise UnknownWordError(error.words, self.model_name, label) from None
        except InvalidInputError as error:
            raise InvalidInputError(f"{label}: {error}" if label else str(error)) from None

    def encode_prompt(self, tokens: Tokens) -> Cond:
        return encode(self.model.text_encoder, tokens, text_encoder_2=self.model.text_encoder_2)

    def encode_negative_prompt(self, tokens: Tokens) -> Cond:
        """The unconditional branch: the negative prompt's embedding, or SDXL's zeros for an empty one."""
        cond = self.encode_prompt(tokens)
        return zeroed(cond) if self.model.zeros_for_empty_negative and not tokens.words else cond

    @torch.no_grad()
    def _generate(self, spec: GenerateSpec, seed: int, prompt_tokens: Tokens, negative_tokens: Tokens,
                  condition_tokens: list[Tokens], cancel: CancelToken | None) -> Iterator[Event]:
        started = time.perf_counter()
        width, height = spec.width or self.native_size, spec.height or self.native_size
        model = self.model

        # 2. encode prompts (the negative prompt, "" by default, is the unconditional branch)
        prompt = self.encode_prompt(prompt_tokens)
        uncond = self.encode_negative_prompt(negative_tokens)
        conditions = [self.encode_prompt(tokens) for tokens in condition_tokens]
        encoded = time.perf_counter()

        # 3. prepare the scheduler and its timesteps
        scheduler = make_scheduler(spec.scheduler, model.scheduler_config)
        scheduler.set_timesteps(spec.steps, device=self.device)
        denoiser = Denoiser(model, scheduler.alphas_cumprod)
        guider = self._guider(spec, prompt, uncond, conditions, scheduler.timesteps, scheduler.alphas_cumprod)

        # 4. initial latents: seeded on the CPU so a seed gives the same image on every device
        generator = torch.Generator("cpu").manual_seed(seed)
        latent_shape = (spec.batch_size, model.unet.config.in_channels, height // self.size_multiple,
                        width // self.size_multiple)
        latents = randn_tensor(latent_shape, generator=generator, device=self.device, dtype=model.dtype)
        latents = latents * scheduler.init_noise_sigma

        # 5. attention capture, installed only for this job and only when asked
        store = None
        if spec.capture_attention:
            store = AttentionStore(
                latent_size=latent_shape[2:],
                batch_index=denoiser.batch_index(guider.primary, image=0, batch=spec.batch_size),
            )
        capture = capture_cross_attention(model.unet, store) if store is not None else nullcontext()

        # 6. denoising loop, streaming progress, previews and attention maps
        last = spec.steps - 1
        with capture:
            steps = sample_steps(denoiser, guider, scheduler, scheduler.timesteps, latents, cancel, generator,
                                 on_step_begin=store.begin_step if store is not None else None)
            for state in steps:
                i, done = state["i"], state["i"] + 1
                latents = state["x"]
                yield Progress(done, spec.steps)
                if done % spec.preview_every == 0 and i != last:  # the Result is the last step's image
                    yield Preview(done, self._to_images(decode_latents(model.vae, state["denoised"])))
                if store is not None and (done % spec.attention_every == 0 or i == last):
                    yield self._attention_event(done, store, prompt_tokens)
        sampled = time.perf_counter()

        # 7. decode
        pixels = decode_latents(model.vae, latents)
        finished = time.perf_counter()

        # 8. result: everything needed to make these images again, and what the guidance cost
        timings = {
            "encode": encoded - started,
            "sampling": sampled - encoded,
            "decode": finished - sampled,
            "total": finished - started,
        }
        guidance_report = self._guidance_report(spec, guider, denoiser, sampled - encoded)
        if "classifier_gradient" in guidance_report:
            timings["classifier_gradient"] = guidance_report.pop("classifier_gradient")
        settings = {
            "model": self.model_name,
            "seed": seed,
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
            "timings": timings,
            "unet_evaluations": denoiser.unet_evaluations,
            **guidance_report,
        }
        yield Result(self._to_images(pixels), settings, timings, denoiser.unet_evaluations, pixels)

    def _guider(self, spec: GenerateSpec, prompt: Cond, uncond: Cond, conditions: list[Cond], timesteps: Tensor,
                alphas_cumprod: Tensor) -> Guider:
        """Plain CFG exactly as StableDiffusionPipeline (parity); otherwise scheduled multi-condition CFG,
        wrapped by classifier guidance when asked."""
        if not spec.uses_global_guidance:
            return ClassifierFreeGuidance(cond=prompt, uncond=uncond, scale=spec.guidance_scale)
        plan = self._plan(spec, timesteps, alphas_cumprod)
        shared = dict(alphas_cumprod=alphas_cumprod, prediction_type=self.prediction_type)
        guider: Guider = MultiConditionGuidance(
            uncond=uncond, conditions=[prompt, *conditions], weights=plan.weights, rescale=spec.guidance_rescale,
            **shared,
        )
        if spec.classifier_guidance is not None:
            guider = ClassifierGuidance(
                inner=guider, classifier=self.model.classifier,
                target=classifier_targets()[spec.classifier_guidance.target],
                strengths=plan.classifier_strengths, **shared,
            )
        return guider

    @staticmethod
    def _guidance_report(spec: GenerateSpec, guider: Guider, denoiser: Denoiser, sampling_seconds: float) -> dict:
        """NFE per step (UNet predictions per image per step, all in one batched call) and, with classifier
        guidance, its gradient evaluations and seconds per step beside the whole sampling step's
        (UNet, guidance, scheduler, previews)."""
        report: dict = {"nfe_per_step": len(guider.conds_at(0))}
        if isinstance(guider, ClassifierGuidance):
            report.update({
                "classifier_gradient": guider.gradient_seconds,
                "classifier_gradient_evaluations": guider.gradient_evaluations,
                "classifier_seconds_per_step": guider.gradient_seconds / spec.steps,
                "sampling_seconds_per_step": sampling_seconds / spec.steps,
            })
        return report

    @staticmethod
    def _to_images(pixels: np.ndarray) -> list[Image.Image]:
        return [Image.fromarray((p * 255).round().astype(np.uint8)) for p in pixels]

    @staticmethod
    def _attention_event(step: int, store: AttentionStore, tokens: Tokens) -> AttentionMaps:
        means = store.means()
        return AttentionMaps(
            step=step,
            tokens=tokens.words,
            maps=combined_maps(means, tokens.word_tokens),
            resolution=None,
            per_resolution=per_resolution_maps(means, tokens.word_tokens),
        )
