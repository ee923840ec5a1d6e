"""The one personalization training loop, on HF accelerate: the Personalize tab's job and `studio train <method>` run it.

Every method (studio.personalize.methods) trains with the base model's own loss (studio.shapes.train's
v_prediction_loss: v-prediction at zero terminal SNR, min-SNR-5 weight; a plain eps-MSE for epsilon models) on the
instance images' latents and captions (a shapes-world caption with the base model's attribute dropout,
studio.personalize.data.caption_variants); DreamBooth adds the class-prior term (Ruiz et al. 2023, eq. 2):
    L = E ||v - v_theta(x_t, t, c_instance)||^2 + lambda E ||v - v_theta(x'_t, t', c_class)||^2
on class images the model draws itself from the class prompts before training (cached in the output folder).
Accelerate gives mixed precision, gradient accumulation, several processes (`accelerate launch --num_processes N`)
and the resumable state (`state/`: trained modules, optimiser, RNG, step); the concept's files are written every
`checkpoint_every` steps, at the end, and when the run is stopped.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from studio import schedule
from studio.errors import CancelledError
from studio.events import CancelToken, Event, Progress, TrainingCheckpoint, TrainingLoss, TrainingSamples
from studio.images import to_tensor
from studio.personalize import files
from studio.personalize.data import TrainingImage, caption_variants, class_captions
from studio.personalize.methods import METHOD_TRAINEES, TrainingParts
from studio.personalize.spec import PersonalizeSpec, drawn_words
from studio.shapes.judge import judge_pixels
from studio.shapes.train import lr_at, v_prediction_loss
from studio.structure.training import Progress as StepClock

SAMPLE_SEEDS = (0, 1)
SAMPLE_STEPS, SAMPLE_GUIDANCE = 20, 5.0  # the embedded model card's DDIM recipe, fewer steps for a preview
WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class TrainingOutcome:
    folder: Path
    files: list[Path]
    steps: int
    seconds: float
    final_loss: float
    peak_memory_bytes: int
    samples: list[Image.Image]
    resumed_from: int


def sample_prompts(parts: TrainingParts, words: Sequence[str]) -> list[str]:
    """The previews' prompts: on the shapes model a composition never in the training images, else "a <word>"."""
    if drawn_words(parts.tokenizer):
        return [f"a red {word} on a blue background" for word in words]
    return [f"a {word}" for word in words]


def pipeline(parts: TrainingParts) -> StableDiffusionPipeline:
    """diffusers' own pipeline over the training copies (DDIM from the model's scheduler config)."""
    runner = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                     unet=parts.unet, scheduler=DDIMScheduler.from_config(parts.scheduler_config),
                                     safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    runner.set_progress_bar_config(disable=True)
    return runner


@torch.no_grad()
def draw(parts: TrainingParts, prompts: Sequence[str], seeds: Sequence[int], steps: int = SAMPLE_STEPS,
         guidance: float = SAMPLE_GUIDANCE) -> list[Image.Image]:
    """One image per (prompt, seed) pair, prompts outer."""
    runner = pipeline(parts)
    pairs = [(prompt, seed) for prompt in prompts for seed in seeds]
    return runner([p for p, _ in pairs], num_inference_steps=steps, guidance_scale=guidance,
                  generator=[torch.Generator().manual_seed(s) for _, s in pairs]).images


@torch.no_grad()
def encode_latents(parts: TrainingParts, images: Sequence[Image.Image], device: torch.device) -> torch.Tensor:
    vae = parts.vae
    pixels = torch.cat([to_tensor(image, device, vae.dtype) for image in images])
    return (vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).float()


def token_ids(parts: TrainingParts, captions: Sequence[str], device: torch.device) -> torch.Tensor:
    return parts.tokenizer(list(captions), padding="max_length", max_length=parts.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids.to(device)


def class_images(parts: TrainingParts, prompts: list[str], folder: Path, seed: int) -> list[Image.Image]:
    """DreamBooth's class images, drawn by the base model (the copies before training) from the class prompts, once
    per run: a folder that already holds them for the same prompts is reused (a resumed run, the same run again)."""
    index = folder / "prompts.json"
    if index.is_file() and json.loads(index.read_text()) == prompts:
        return [Image.open(folder / f"{i}.png").convert("RGB") for i in range(len(prompts))]
    folder.mkdir(parents=True, exist_ok=True)
    images = [draw(parts, [prompt], [seed + i])[0] for i, prompt in enumerate(prompts)]
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")
    index.write_text(json.dumps(prompts))
    return images


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def train(parts: TrainingParts, spec: PersonalizeSpec, instances: Sequence[TrainingImage], out: Path,
          base: dict[str, str], cancel: CancelToken | None = None, resume: bool = False,
          save_state: bool = False) -> Iterator[Event]:
    """Train `spec.method` on `instances`, writing the concept into `out`; yields Progress, TrainingLoss,
    TrainingSamples and TrainingCheckpoint events and returns a TrainingOutcome. On cancel the files are written,
    TrainingCheckpoint is yielded, then CancelledError is raised. `save_state` keeps accelerate's resumable state in
    `out/state` at each checkpoint; `resume` continues from it."""
    accelerator = Accelerator(gradient_accumulation_steps=spec.gradient_accumulation, mixed_precision=spec.mixed_precision,
                              cpu=parts.vae.device.type == "cpu")
    set_seed(spec.seed, device_specific=True)
    device = accelerator.device
    trainee = METHOD_TRAINEES[spec.method](parts, spec)
    for module in (parts.unet, parts.text_encoder):
        module.to(device)
    latents = encode_latents(parts, [i.image for i in instances], device)
    variants = [caption_variants(i.caption, i.word) for i in instances]
    width = max(len(v) for v in variants)
    ids = token_ids(parts, [v[min(k, len(v) - 1)][0] for v in variants for k in range(width)], device)
    ids = ids.view(len(instances), width, -1)  # (N, variants, L): each image's captions under attribute dropout
    variant_odds = torch.tensor([[p for _, p in v] + [0.0] * (width - len(v)) for v in variants],
                                device=device, dtype=torch.float32)  # multinomial takes float odds ("a <word>" has odds 1)
    prior = spec.method == "dreambooth" and spec.prior_preservation
    if prior:
        yield Progress(0, spec.steps, f"Drawing {spec.class_images} class images of {spec.class_word!r}…")
        prompts = class_captions([instances[i % len(instances)] for i in range(spec.class_images)], spec.concept, spec.class_word)
        drawn = class_images(parts, prompts, out / "class_images", spec.seed)
        class_latents, class_ids = encode_latents(parts, drawn, device), token_ids(parts, prompts, device)
    optimizer = torch.optim.AdamW(trainee.parameters, lr=spec.learning_rate, weight_decay=0.0)
    names = list(trainee.modules)
    *modules, optimizer = accelerator.prepare(*trainee.modules.values(), optimizer)
    prepared = dict(zip(names, modules))
    unet, text_encoder = prepared.get("unet", parts.unet), prepared.get("text_encoder", parts.text_encoder)
    for module in (unet, text_encoder):
        module.train()
    clock = StepClock()
    accelerator.register_for_checkpointing(clock)
    state_dir = out / "state"
    if resume and state_dir.is_dir():
        accelerator.load_state(str(state_dir))
    resumed_from = clock.step
    alphas_cumprod = DDIMScheduler.from_config(parts.scheduler_config).alphas_cumprod.to(device)
    v_prediction = parts.scheduler_config.get("prediction_type") == "v_prediction"
    prompts = sample_prompts(parts, spec.words)
    warmup = max(1, int(WARMUP_FRACTION * spec.steps))

    def denoising_loss(x0: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x0)
        t = torch.randint(0, len(alphas_cumprod), (len(x0),), device=device)
        alpha_bar = alphas_cumprod[t]
        x_t = schedule.noise_to(x0, noise, alpha_bar.view(-1, 1, 1, 1))
        with accelerator.autocast():
            prediction = unet(x_t, t, text_encoder(text_ids)[0]).sample.float()
        if v_prediction:
            return v_prediction_loss(prediction, schedule.velocity(x0, noise, alpha_bar.view(-1, 1, 1, 1)), alpha_bar)
        return F.mse_loss(prediction, noise)

    def write(step: int, stopped: bool) -> list[Path]:
        written: list[Path] = []
        if accelerator.is_main_process:
            written = trainee.save(out, step)
            written.append(files.write_concept_json(
                out, method=spec.method, words=spec.words, class_word=spec.class_word, base=base, steps=step,
                stopped=stopped, files=written, settings=asdict(spec)))
        if save_state:
            accelerator.save_state(str(state_dir))
        return written

    started, loss_value, samples, written = time.perf_counter() - clock.seconds, float("nan"), [], []
    while clock.step < spec.steps:
        if cancel is not None and cancel.cancelled:
            written = write(clock.step, stopped=True)
            yield TrainingCheckpoint(clock.step, out)
            raise CancelledError(f"Stopped after {clock.step} of {spec.steps} steps; the checkpoint in {out} is kept.")
        for group in optimizer.param_groups:
            group["lr"] = lr_at(clock.step, spec.steps, spec.learning_rate, warmup)
        for _ in range(spec.gradient_accumulation):
            with accelerator.accumulate(*prepared.values()):
                pick = torch.randint(0, len(latents), (spec.batch_size,), device=device)
                variant = torch.multinomial(variant_odds[pick], 1).squeeze(1)
                loss = denoising_loss(latents[pick], ids[pick, variant])
                if prior:
                    pick = torch.randint(0, len(class_latents), (spec.batch_size,), device=device)
                    loss = loss + spec.prior_weight * denoising_loss(class_latents[pick], class_ids[pick])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainee.parameters, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                trainee.after_step()
        clock.step += 1
        clock.seconds = time.perf_counter() - started
        loss_value = accelerator.gather(loss.detach().reshape(1)).mean().item()
        left = clock.seconds / max(1, clock.step - resumed_from) * (spec.steps - clock.step)
        yield TrainingLoss(clock.step, loss_value)
        yield Progress(clock.step, spec.steps, f"step {clock.step} / {spec.steps}, {left:.0f} s left")
        if spec.sample_every and (clock.step % spec.sample_every == 0 or clock.step == spec.steps):
            if accelerator.is_main_process:
                samples = draw(parts, prompts, SAMPLE_SEEDS)
                yield TrainingSamples(clock.step, samples, [p for p in prompts for _ in SAMPLE_SEEDS])
        if clock.step % spec.checkpoint_every == 0 or clock.step == spec.steps:
            written = write(clock.step, stopped=False)
            yield TrainingCheckpoint(clock.step, out)
    accelerator.wait_for_everyone()
    for module in (parts.unet, parts.text_encoder):
        module.eval()
    return TrainingOutcome(out, written, clock.step, round(clock.seconds, 2), loss_value, peak_memory(device), samples,
                           resumed_from)


@torch.no_grad()
def judged_rate(parts: TrainingParts, prompt: str, shape: str, seeds: Sequence[int], steps: int = 25) -> float:
    """The share of `seeds` whose image of `prompt` has its largest object judged `shape` by the pixel judge
    (studio.shapes.judge.judge_pixels with the concept shapes): the shapes world's concept fidelity."""
    images = draw(parts, [prompt], seeds, steps=steps)
    judged = [judge_pixels(np.asarray(image), concept_shapes=True).objects for image in images]
    return float(np.mean([bool(objects) and objects[0].shape == shape for objects in judged]))
