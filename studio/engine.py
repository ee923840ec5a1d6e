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

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from studio import specs
from studio.attention.maps import combined_maps, per_resolution_maps
from studio.attention.processors import AttentionStore, capture_cross_attention
from studio.conditioning import Tokens, encode, tokenize
from studio.denoiser import Denoiser
from studio.errors import DeviceOutOfMemoryError
from studio.events import AttentionMaps, CancelToken, Event, Preview, Progress, Result
from studio.guidance import ClassifierFreeGuidance
from studio.jobs import FairLock
from studio.models import LoadedModel, load_pipeline
from studio.sampling import make_scheduler, sample_steps
from studio.specs import GenerateSpec


class Engine:
    """Loads a model once (see studio.models for sources and device policy) and runs jobs on it."""

    def __init__(self, source: str | None = None, device: str | None = None, dtype: torch.dtype | None = None):
        self.model: LoadedModel = load_pipeline(source, device, dtype)
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

    def generate(self, spec: GenerateSpec, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Text to image. Bad input raises InvalidInputError here, before any model work;
        the returned generator waits for its turn on the model, then streams the job's events."""
        # 1. check inputs (spec ranges, size multiple, words the tokenizer knows, prompt length)
        spec.validate(self.size_multiple)
        prompt_tokens = tokenize(self.model.tokenizer, spec.prompt, self.model_name)
        negative_tokens = tokenize(self.model.tokenizer, spec.negative_prompt, self.model_name)
        seed = spec.seed if spec.seed is not None else secrets.randbelow(int(specs.SEED.high) + 1)
        return self._queued(spec, seed, prompt_tokens, negative_tokens, cancel)

    def _queued(self, spec: GenerateSpec, seed: int, prompt_tokens: Tokens, negative_tokens: Tokens,
                cancel: CancelToken | None) -> Iterator[Event]:
        if self._lock.busy:
            yield Progress(0, spec.steps, "Waiting for the previous job to finish…")
        with self._lock.hold(cancel):
            try:
                yield from self._generate(spec, seed, prompt_tokens, negative_tokens, cancel)
            except torch.cuda.OutOfMemoryError as error:
                torch.cuda.empty_cache()  # give the failed job's memory back so the next one can run
                raise DeviceOutOfMemoryError(
                    f"The {self.device} device ran out of memory at {spec.width or self.native_size}x"
                    f"{spec.height or self.native_size} with batch size {spec.batch_size}: "
                    "lower the size or the batch size and try again."
                ) from error

    @torch.no_grad()
    def _generate(self, spec: GenerateSpec, seed: int, prompt_tokens: Tokens, negative_tokens: Tokens,
                  cancel: CancelToken | None) -> Iterator[Event]:
        started = time.perf_counter()
        width, height = spec.width or self.native_size, spec.height or self.native_size
        model = self.model

        # 2. encode prompt (the negative prompt, "" by default, is the unconditional branch)
        guider = ClassifierFreeGuidance(
            cond=encode(model.text_encoder, prompt_tokens),
            uncond=encode(model.text_encoder, negative_tokens),
            scale=spec.guidance_scale,
        )
        encoded = time.perf_counter()

        # 3. prepare the scheduler and its timesteps
        scheduler = make_scheduler(spec.scheduler, model.scheduler_config)
        scheduler.set_timesteps(spec.steps, device=self.device)
        denoiser = Denoiser(model, scheduler.alphas_cumprod)

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
                if done % spec.preview_every == 0 or i == last:
                    yield Preview(done, self._to_images(self._decode(state["denoised"])))
                if store is not None and (done % spec.attention_every == 0 or i == last):
                    yield self._attention_event(done, store, prompt_tokens)
        sampled = time.perf_counter()

        # 7. decode
        pixels = self._decode(latents)
        finished = time.perf_counter()

        # 8. result: everything needed to make these images again
        timings = {
            "encode": encoded - started,
            "sampling": sampled - encoded,
            "decode": finished - sampled,
            "total": finished - started,
        }
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
            "timings": timings,
            "unet_evaluations": denoiser.unet_evaluations,
        }
        yield Result(self._to_images(pixels), settings, timings, denoiser.unet_evaluations, pixels)

    def _decode(self, latents: Tensor) -> np.ndarray:
        """Latents (B, 4, h, w) -> (B, H, W, 3) float32 in [0, 1], as the pipeline's postprocess."""
        vae = self.model.vae
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        image = (image / 2 + 0.5).clamp(0, 1)
        return image.cpu().permute(0, 2, 3, 1).float().numpy()

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
