"""Train the embedded model's structure controls with per-channel dropout, on HF accelerate.

    controlnet    diffusers ControlNetModel.from_unet (Zhang et al. 2023): a trainable copy of the UNet's encoder
                  joined to the frozen UNet by zero convolutions (eq. 1-4), so training starts from the base model
    t2i-adapter   diffusers T2IAdapter (Mou et al. 2024): a small encoder of the map whose features are added inside
                  the UNet's down blocks (down_intrablock_additional_residuals); it runs once per generation
    ip-adapter    decoupled cross-attention on an image embedding (Ye et al. 2023, eq. 5): the modules of
                  studio.structure.adapters, trained with its tiny image encoder; the reference image is the target
                  image itself, as IP-Adapter trains

The base UNet, VAE and text encoder are frozen; the loss is the base model's own (studio.shapes.train: v-prediction
with zero terminal SNR, timesteps uniform over the 1000 training steps, min-SNR-5 weight).

Per-channel dropout (InstructPix2Pix, Brooks et al. 2023, eq. 3; Uni-ControlNet, Zhao et al. 2023; Composer, Huang
et al. 2023): every sample drops each of its channels independently, each to its own null: text -> the empty
caption's embedding, control -> the black map, image -> the zero image embedding. The defaults, and why:
    text 0.30     the control alone must carry the layout: ControlNet trained with 50% empty prompts for the same reason;
                  a dropped caption with a kept control is exactly the eps_k (null text + this control) that
                  channel-wise guidance composes (Liu et al. 2022; Ho & Salimans 2022), 25.5% of the samples
    control 0.15  the black map must mean "no structure", so a control row can be guided against its own null;
                  higher than InstructPix2Pix's 5% because the control is the one channel this model must learn
    image 0.15    the same for the image prompt's zero embedding
    resulting (controls): text only 25.5%, control only 10.5%, both dropped 4.5% (the unconditional branch that CFG
    needs, which the frozen base already knows with the control null), both kept 59.5%.
`--high-noise-dropout P` raises the control (and image) rate linearly in t, from its rate at t = 0 to P at the last
timestep: at high noise the text decides the global arrangement, so the control is not needed there as much, and the
sampler's early steps are where a control window starts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import (
    DDIMScheduler,
    StableDiffusionAdapterPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from studio import schedule
from studio.models import EMBEDDED_MODEL_DIR, decode_latents, open_folder
from studio.shapes.judge import judge_pixels
from studio.shapes.render import (
    HELD_OUT,
    Scene,
    caption,
    make_object,
    render,
    sample_scene,
)
from studio.shapes.train import LossLog, lr_at, to_unit_range, v_prediction_loss
from studio.shapes.vocabulary import MAX_LENGTH
from studio.structure.adapters import (
    ImagePromptAdapter,
    new_control,
    new_ip_adapter,
    save_ip_adapter,
)
from studio.structure.maps import CONTROL_KINDS, control_map, layout_from_image

METHODS = ("controlnet", "t2i-adapter", "ip-adapter")
IMAGE_EMBED_DIM = 128  # the tiny image encoder's projection width (adapters.tiny_image_encoder_config's default)
CAPTION_KEEP = 0.8  # the base model's attribute dropout: each size/colour/position/background phrase kept with 0.8
EVAL_POSITIONS = ("left", "right", "top", "bottom", "center", "top left", "bottom right", "top right")


@dataclass(frozen=True)
class ChannelDropout:
    """Independent per-sample dropout rates of the text, control and image channels (see the module docstring)."""

    text: float = 0.30
    control: float = 0.15
    image: float = 0.15
    high_noise: float | None = None  # the control/image rate at the last timestep; None: constant in t

    def rate(self, base: float, t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
        if self.high_noise is None:
            return torch.full(t.shape, base, device=t.device)
        return base + (self.high_noise - base) * t.float() / (num_train_timesteps - 1)

    def draw(self, t: torch.Tensor, num_train_timesteps: int) -> dict[str, torch.Tensor]:
        """(B,) bool per channel, True where the channel is dropped to its null (torch's RNG: accelerate
        seeds it per process and save_state keeps it)."""
        uniform = {name: torch.rand(t.shape, device=t.device) for name in ("text", "control", "image")}
        return {
            "text": uniform["text"] < self.text,
            "control": uniform["control"] < self.rate(self.control, t, num_train_timesteps),
            "image": uniform["image"] < self.rate(self.image, t, num_train_timesteps),
        }

    def fractions(self, channel: str = "control") -> dict[str, float]:
        """The share of samples in each case of text and `channel` (control or image) at a constant rate (the card)."""
        t, c = self.text, getattr(self, channel)
        return {"text dropped only": t * (1 - c), f"{channel} dropped only": c * (1 - t), "both dropped": t * c,
                "both kept": (1 - t) * (1 - c)}


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """Everything a step reads, computed once with the frozen base (no grad) and cached in --work."""

    latents: torch.Tensor  # (N, 4, h, w) scaled VAE means, as the base model trained on
    captions: torch.Tensor  # (N, 2, L, D) text embeddings: the full caption and one with attribute dropout
    null_text: torch.Tensor  # (L, D) the empty caption's embedding: the text channel's null
    images: torch.Tensor  # (N, 3, H, W) uint8, the rendered pictures (the image prompt's reference)
    maps: dict[str, torch.Tensor]  # kind -> (N, 3, H, W) uint8 control maps

    def __len__(self) -> int:
        return len(self.latents)


def data_path(work: Path, count: int, seed: int) -> Path:
    return work / f"data-{count}-seed{seed}.safetensors"


@torch.no_grad()
def encode_texts(pipe: StableDiffusionPipeline, texts: list[str], batch: int = 256) -> torch.Tensor:
    chunks = []
    for start in range(0, len(texts), batch):
        ids = pipe.tokenizer(texts[start : start + batch], padding="max_length", max_length=MAX_LENGTH,
                             truncation=True, return_tensors="pt").input_ids
        chunks.append(pipe.text_encoder(ids).last_hidden_state)
    return torch.cat(chunks)


@torch.no_grad()
def build_data(pipe: StableDiffusionPipeline, path: Path, count: int, seed: int) -> None:
    """Render `count` training scenes (the held-out triples excluded, as the base model's data), their control maps,
    captions, text embeddings and VAE latents, and write them to `path` (atomically: a crash leaves no half file)."""
    rng = np.random.default_rng([seed, 17])
    renderings = [render(sample_scene(rng)) for _ in tqdm(range(count), desc="render", mininterval=10)]
    images = np.stack([r.image for r in renderings])
    texts = [[caption(r.scene), caption(r.scene, rng, keep=CAPTION_KEEP)] for r in renderings]
    captions = encode_texts(pipe, [t for pair in texts for t in pair]).reshape(count, 2, MAX_LENGTH, -1)
    latents = torch.cat([
        pipe.vae.encode(to_unit_range(images[i : i + 256])).latent_dist.mean for i in range(0, count, 256)
    ]) * pipe.vae.config.scaling_factor
    tensors = {
        "latents": latents.contiguous(), "captions": captions.half().contiguous(),
        "null_text": encode_texts(pipe, [""])[0].contiguous(),
        "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        **{f"map_{kind}": torch.from_numpy(np.stack([control_map(r, kind) for r in renderings])).permute(0, 3, 1, 2).contiguous()
           for kind in CONTROL_KINDS},
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    tmp.replace(path)


def load_data(path: Path) -> TrainingData:
    stored = load_file(path)
    return TrainingData(
        latents=stored["latents"], captions=stored["captions"].float(), null_text=stored["null_text"],
        images=stored["images"], maps={kind: stored[f"map_{kind}"] for kind in CONTROL_KINDS},
    )


# ---------------------------------------------------------------------------------------------- models


def predict(method: str, module: nn.Module, unet, x_t, t, text, condition: tuple) -> torch.Tensor:
    """The UNet's prediction with the trained channel: ControlNet's residuals are added to the skip connections and
    the middle block (diffusers' down_block/mid_block_additional_residual), T2I-Adapter's inside the down blocks;
    the image prompt's tokens go through the decoupled cross-attention (ImagePromptTrainee). `condition` is the
    control map (B, 3, H, W) in [0, 1], or (the encoder's pixel values, which samples drop the image)."""
    if method == "controlnet":
        down, mid = module(x_t, t, encoder_hidden_states=text, controlnet_cond=condition[0], return_dict=False)
        return unet(x_t, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    if method == "t2i-adapter":
        return unet(x_t, t, text, down_intrablock_additional_residuals=list(module(condition[0]))).sample
    return module(unet, x_t, t, text, *condition)


class ImagePromptTrainee(nn.Module):
    """The IP-Adapter's trainable parts as one module (what accelerate prepares and DDP synchronises): the image
    encoder, the projection to image tokens and each cross-attention layer's to_k_ip / to_v_ip. Its forward is the
    frozen UNet's prediction through diffusers' own decoupled cross-attention (see attach_ip_adapter)."""

    def __init__(self, adapter: ImagePromptAdapter):
        super().__init__()
        self.image_encoder, self.image_proj = adapter.image_encoder, adapter.image_proj
        self.to_k_ip = nn.ModuleList(to_k for to_k, _ in adapter.key_value.values())
        self.to_v_ip = nn.ModuleList(to_v for _, to_v in adapter.key_value.values())

    def forward(self, unet, x_t, t, text, pixel_values, image_dropped):
        embeds = self.image_encoder(pixel_values=pixel_values).image_embeds
        embeds = embeds * (~image_dropped).view(-1, 1).to(embeds.dtype)  # the zero embedding is the image null
        return unet(x_t, t, text, added_cond_kwargs={"image_embeds": [embeds.unsqueeze(1)]}).sample


def attach_ip_adapter(unet, adapter: ImagePromptAdapter, scale: float = 1.0) -> None:
    """Give `unet` the adapter as diffusers' load_ip_adapter does: IPAdapterAttnProcessor2_0 (Ye et al. 2023, eq. 5,
    Z = Attn(Q, K, V) + lambda Attn(Q, K', V')) on every cross-attention layer, sharing the adapter's to_k_ip /
    to_v_ip, and the image projection as the UNet's encoder_hid_proj ("ip_image_proj"). Training through diffusers'
    path means the weights are trained on exactly what diffusers' pipelines run."""
    processors = dict(unet.attn_processors)
    for key, (to_k_ip, to_v_ip) in adapter.key_value.items():
        processor = IPAdapterAttnProcessor2_0(hidden_size=to_k_ip.out_features, cross_attention_dim=to_k_ip.in_features,
                                              num_tokens=(adapter.num_tokens,), scale=scale)
        processor.to_k_ip, processor.to_v_ip = nn.ModuleList([to_k_ip]), nn.ModuleList([to_v_ip])
        processors[key] = processor
    unet.set_attn_processor(processors)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([adapter.image_proj])
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")


def reference_pixels(adapter: ImagePromptAdapter, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> the image encoder's input, through its own CLIPImageProcessor (as at run time)."""
    return adapter.image_processor(images=list(images.permute(0, 2, 3, 1).numpy()), return_tensors="pt").pixel_values


# ---------------------------------------------------------------------------------------------- evaluation


def held_out_scenes(count: int = 32) -> list[Scene]:
    """Scenes never trained on: half are one big object of a held-out (colour, shape, background) triple at jittered
    positions, half are random scenes (one or two objects, held-out triples allowed) from a seed the data never uses."""
    rng = np.random.default_rng([10**6, 17])
    scenes = []
    for i in range(count // 2):
        colour, shape, background = HELD_OUT[i % len(HELD_OUT)]
        position = EVAL_POSITIONS[(i // len(HELD_OUT) * 3 + i) % len(EVAL_POSITIONS)]
        scenes.append(Scene(background, (make_object(shape, colour, "big", position, rng),)))
    scenes += [sample_scene(rng, allow_held_out=True) for _ in range(count - len(scenes))]
    return scenes


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted & truth).sum() / max(1, (predicted | truth).sum()))


@torch.no_grad()
def control_fidelity(pipe: StableDiffusionPipeline, method: str, module: nn.Module | None, kind: str,
                     count: int = 32, steps: int = 25, guidance: float = 5.0, batch: int = 8) -> dict[str, float]:
    """Mean IoU of the generated objects' mask (pixels far from the generated background colour,
    maps.layout_from_image) with the control's ground-truth object mask, over `count` held-out scenes, through
    diffusers' own pipelines (DDIM, `steps` steps, CFG `guidance`, control on both branches). With module None,
    the same prompts and seeds without any control: the baseline a control has to beat."""
    parts = _pipeline_parts(pipe)
    if module is None:
        runner = StableDiffusionPipeline(**parts)
    elif method == "controlnet":
        runner = StableDiffusionControlNetPipeline(**parts, controlnet=module)
    else:
        runner = StableDiffusionAdapterPipeline(**parts, adapter=module)
    runner.set_progress_bar_config(disable=True)
    renderings = [render(scene) for scene in held_out_scenes(count)]
    ious = []
    for start in range(0, count, batch):
        chunk = renderings[start : start + batch]
        inputs = dict(prompt=[caption(r.scene) for r in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=[torch.Generator().manual_seed(start + i) for i in range(len(chunk))], output_type="latent")
        if module is not None:
            inputs["image"] = [Image.fromarray(control_map(r, kind)) for r in chunk]
        latents = runner(**inputs).images
        pictures = (decode_latents(pipe.vae, latents) * 255).round().astype(np.uint8)
        ious += [mask_iou(layout_from_image(p)[..., 0] > 0, r.masks.any(axis=0)) for p, r in zip(pictures, chunk)]
    return {"iou_mean": float(np.mean(ious)), "iou_median": float(np.median(ious)), "scenes": count}


def baseline_fidelity(pipe: StableDiffusionPipeline, work: Path, count: int) -> dict[str, float]:
    """control_fidelity without any control, cached in `work`: the same prompts and seeds for every control kind."""
    path = work / f"fidelity-without-control-{count}.json"
    if not path.exists():
        path.write_text(json.dumps(control_fidelity(pipe, "", None, "", count=count)))
    return json.loads(path.read_text())


def _pipeline_parts(pipe: StableDiffusionPipeline) -> dict:
    return dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                scheduler=DDIMScheduler.from_config(pipe.scheduler.config), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def _colours_agree(picture: np.ndarray, scene: Scene) -> bool:
    judgement = judge_pixels(picture)
    return (judgement.background == scene.background and bool(judgement.objects)
            and judgement.objects[0].colour in {o.colour for o in scene.objects})


@torch.no_grad()
def image_prompt_agreement(pipe: StableDiffusionPipeline, adapter: ImagePromptAdapter, count: int = 32,
                           steps: int = 25, guidance: float = 5.0, batch: int = 8) -> dict[str, float]:
    """Share of held-out reference scenes whose generated background and largest object's colour (judged by pixels,
    studio.shapes.judge) are the reference's: with the reference's caption, with the empty prompt (the image alone),
    and with the empty prompt and the zero image embedding (chance). diffusers' pipeline, `pipe.unet` carrying the
    adapter (attach_ip_adapter), the unconditional branch with the zero image embedding as diffusers does."""
    runner = StableDiffusionPipeline(**_pipeline_parts(pipe))
    runner.set_progress_bar_config(disable=True)
    renderings = [render(scene) for scene in held_out_scenes(count)]
    cases = {"image and text": (True, True), "image alone": (False, True), "neither": (False, False)}
    agreement = {}
    for case, (with_text, with_image) in cases.items():
        agrees = []
        for start in range(0, count, batch):
            chunk = renderings[start : start + batch]
            images = torch.from_numpy(np.stack([r.image for r in chunk])).permute(0, 3, 1, 2)
            embeds = adapter.image_encoder(pixel_values=reference_pixels(adapter, images).to(pipe.device)).image_embeds
            embeds = embeds if with_image else torch.zeros_like(embeds)
            latents = runner(prompt=[caption(r.scene) if with_text else "" for r in chunk], num_inference_steps=steps,
                             guidance_scale=guidance, output_type="latent",
                             generator=[torch.Generator().manual_seed(start + i) for i in range(len(chunk))],
                             ip_adapter_image_embeds=[torch.cat([torch.zeros_like(embeds), embeds]).unsqueeze(1)]).images
            pictures = (decode_latents(pipe.vae, latents) * 255).round().astype(np.uint8)
            agrees += [_colours_agree(p, r.scene) for p, r in zip(pictures, chunk)]
        agreement[case] = float(np.mean(agrees))
    return {**agreement, "scenes": count}


# ---------------------------------------------------------------------------------------------- training


class Progress:
    """The optimiser steps done and the seconds spent, saved and restored by accelerate with the rest of the state."""

    def __init__(self) -> None:
        self.step, self.seconds = 0, 0.0

    def state_dict(self) -> dict:
        return {"step": self.step, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.seconds = int(state["step"]), float(state["seconds"])


@dataclass(frozen=True)
class TrainConfig:
    method: str
    control: str  # the control kind the map shows (controlnet / t2i-adapter)
    steps: int
    batch: int
    lr: float
    warmup: int
    grad_accum: int
    mixed_precision: str
    work: Path
    out: Path | None  # None: --work/<name>/model
    resume: bool
    seed: int
    data: int
    checkpoint_every: int
    eval_scenes: int
    dropout: ChannelDropout
    base: Path = EMBEDDED_MODEL_DIR

    @property
    def name(self) -> str:
        return self.method if self.method == "ip-adapter" else f"{self.method}-{self.control}"

    @property
    def output(self) -> Path:
        return self.out or self.work / self.name / "model"


def prepare_data(config: TrainConfig, accelerator: Accelerator, pipe: StableDiffusionPipeline) -> TrainingData:
    """The cached data, built by the main process when missing while the others wait for it."""
    path = data_path(config.work, config.data, config.seed)
    if accelerator.is_main_process and not path.exists():
        build_data(pipe, path, config.data, config.seed)
    accelerator.wait_for_everyone()
    return load_data(path)


def train(config: TrainConfig, recipe: str) -> dict:
    """Train a ControlNet or T2I-Adapter on `config.control` maps, or the IP-Adapter; returns the run's summary
    (written beside the weights as training.json and the README.md card)."""
    run_dir = config.work / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision,
        project_config=ProjectConfiguration(project_dir=str(run_dir), automatic_checkpoint_naming=True, total_limit=2),
    )
    set_seed(config.seed, device_specific=True)  # each process draws its own noise, timesteps and dropout
    pipe = open_folder(config.base)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    data = prepare_data(config, accelerator, pipe)
    pipe.to(accelerator.device)
    unet = pipe.unet
    adapter = None
    if config.method == "ip-adapter":
        adapter = new_ip_adapter(pipe.unet, image_embed_dim=IMAGE_EMBED_DIM)
        attach_ip_adapter(pipe.unet, adapter)
        module = ImagePromptTrainee(adapter)
    else:
        # adapters.new_control: the T2I-Adapter's features come at 16, 8 and 4 latent cells, one per down block
        module = new_control(pipe.unet, config.method.replace("-", "_"), config.control, config.control).module
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=1e-2)
    # each item is a scene index; accelerate shards the batches over the processes
    loader = torch.utils.data.DataLoader(torch.arange(len(data)), batch_size=config.batch, shuffle=True, drop_last=True)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    if config.resume and checkpoints:
        accelerator.load_state(str(checkpoints[-1]))  # modules, optimiser, RNG and the progress
        # accelerate's automatic naming restarts at checkpoint_0 otherwise, and refuses to overwrite it
        accelerator.project_configuration.iteration = int(checkpoints[-1].name.split("_")[1]) + 1
    alphas_cumprod = DDIMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.to(accelerator.device)
    num_train_timesteps = len(alphas_cumprod)
    null_text = data.null_text.to(accelerator.device)
    log = LossLog(run_dir / "loss.jsonl") if accelerator.is_main_process else None
    bar = tqdm(initial=progress.step, total=config.steps, desc=config.name, mininterval=10,
               disable=not accelerator.is_main_process)
    started, mean_loss, resumed_from = time.perf_counter() - progress.seconds, float("nan"), progress.step
    # a resumed run continues its epoch where the checkpoint left it
    batches = accelerator.skip_first_batches(loader, progress.step * config.grad_accum % len(loader))
    while progress.step < config.steps:
        for idx in batches:
            idx = idx.cpu()  # accelerate moves batches to the device; the cached data stays in host memory
            with accelerator.accumulate(module):
                x0 = data.latents[idx].to(accelerator.device)
                t = torch.randint(0, num_train_timesteps, (len(idx),), device=accelerator.device)
                dropped = config.dropout.draw(t, num_train_timesteps)
                variant = torch.randint(0, 2, (len(idx),))
                text = data.captions[idx, variant].to(accelerator.device)
                text = torch.where(dropped["text"].view(-1, 1, 1), null_text, text)
                if adapter is None:
                    control_image = data.maps[config.control][idx].to(accelerator.device).float() / 255
                    condition = (control_image * (~dropped["control"]).view(-1, 1, 1, 1),)  # the black map is the null
                else:  # the reference image is the target image itself (Ye et al. 2023)
                    condition = (reference_pixels(adapter, data.images[idx]).to(accelerator.device), dropped["image"])
                noise = torch.randn_like(x0)
                alpha_bar = alphas_cumprod[t]
                x_t = schedule.noise_to(x0, noise, alpha_bar.view(-1, 1, 1, 1))
                with accelerator.autocast():
                    prediction = predict(config.method, module, unet, x_t, t, text, condition).float()
                loss = v_prediction_loss(prediction, schedule.velocity(x0, noise, alpha_bar.view(-1, 1, 1, 1)), alpha_bar)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(module.parameters(), 1.0)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(progress.step, config.steps, config.lr, config.warmup)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            progress.seconds = time.perf_counter() - started
            bar.update()
            mean_loss = accelerator.gather(loss.detach().reshape(1)).mean().item()
            if log and ((progress.step - 1) % 25 == 0 or progress.step == config.steps):
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                log.write(step=progress.step, loss=mean_loss, lr=optimizer.param_groups[0]["lr"], seconds=progress.seconds)
            if progress.step % config.checkpoint_every == 0 or progress.step == config.steps:
                accelerator.save_state()  # every process calls it: accelerate writes from the main one
            if progress.step >= config.steps:
                break
        batches = loader
    bar.close()
    accelerator.wait_for_everyone()
    summary = {"method": config.method, "control": config.control, "steps": progress.step, "batch": config.batch,
               "processes": accelerator.num_processes, "grad_accum": config.grad_accum, "lr": config.lr,
               "seconds": round(progress.seconds, 1), "final_loss": mean_loss,
               "dropout": asdict(config.dropout), "recipe": recipe, "resumed_from": resumed_from}
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(module).eval()
        if adapter is None:
            trained.save_pretrained(config.output, safe_serialization=True)
        else:
            save_ip_adapter(adapter, config.output)
        (config.output / "studio.json").write_text(json.dumps({"control": config.control}) + "\n")
        if config.eval_scenes and adapter is None:
            summary["fidelity"] = control_fidelity(pipe, config.method, trained, config.control, count=config.eval_scenes)
            summary["fidelity_without_control"] = baseline_fidelity(pipe, config.work, config.eval_scenes)
        elif config.eval_scenes:
            summary["colour_agreement"] = image_prompt_agreement(pipe, adapter, count=config.eval_scenes)
        (config.output / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_card(config.output, summary)
    accelerator.end_training()
    return summary


TITLES = {"controlnet": "ControlNet (Zhang et al. 2023)", "t2i-adapter": "T2I-Adapter (Mou et al. 2024)",
          "ip-adapter": "IP-Adapter (Ye et al. 2023)"}


UNDERTRAINED_MARGIN = 0.02  # a control that gains less than this over no control is reported as undertrained


def write_card(out: Path, summary: dict) -> None:
    """README.md beside the weights: what map it reads, the recipe, dropout, time, loss and measured fidelity."""
    dropout = ChannelDropout(**summary["dropout"])
    channel = "image" if summary["method"] == "ip-adapter" else "control"
    fractions = ", ".join(f"{name} {share:.1%}" for name, share in dropout.fractions(channel).items())
    lines = [
        "---", f"control: {summary['control']}", f"kind: {summary['method']}", "base_model: shapes-sd", "---", "",
        f"# {summary['method'] if channel == 'image' else summary['method'] + '-' + summary['control']} for shapes-sd", "",
        (f"{TITLES['ip-adapter']} for the embedded shapes-sd model, base frozen: decoupled cross-attention on the "
         "embedding of a reference image, 4 image tokens, diffusers' load_ip_adapter layout (ip-adapter.safetensors). "
         "image_encoder/ is a tiny CLIPVisionModelWithProjection trained jointly from scratch with the adapter: no "
         "pretrained CLIP is reachable here, and the shapes world's colours and arrangement need no web-scale encoder."
         if summary["method"] == "ip-adapter" else
         f"{TITLES[summary['method']]} reads the **{summary['control']}** map (white on black, 128x128; black "
         "everywhere is the null control); trained for the embedded shapes-sd model with the base frozen."), "",
        "Recipe (CPU, this repository; scripts/train_structure_cpu.sh runs the four shipped runs side by side):", "",
        f"    {summary['recipe']}", "",
        *([f"- resumed at step {summary['resumed_from']} from the checkpoint of the same run's first command "
            "(scripts/train_structure_cpu.sh); the learning rate follows the command above from there"]
          if summary.get("resumed_from") else []),
        f"- steps: {summary['steps']} at batch {summary['batch']} x {summary['processes']} process(es) x "
        f"{summary['grad_accum']} accumulation, peak lr {summary['lr']:g} (warm-up, cosine to 10%)",
        f"- time: {summary['seconds'] / 60:.1f} min on {summary['processes']} process(es) of one torch thread, the CPU "
        "shared with the recipe's other runs; loss of the last step's batch "
        f"{summary['final_loss']:.4f} (v-prediction, min-SNR-5; one batch: noisy)",
        f"- per-channel dropout: text {dropout.text:g} (-> empty caption), "
        + (f"image {dropout.image:g} (-> zero image embedding)" if channel == "image" else
           f"control {dropout.control:g} (-> black map)")
        + (f", {channel} rising to {dropout.high_noise:g} at the last timestep" if dropout.high_noise is not None else "")
        + f"; cases: {fractions}. Why: studio/structure/training.py.",
    ]
    if "colour_agreement" in summary:
        agreement = summary["colour_agreement"]
        lines += [
            "", f"Measured on {agreement['scenes']} held-out reference scenes, diffusers' own pipeline (DDIM 25 steps, "
            "CFG 5, lambda 1, zero image embedding on the unconditional branch): the share whose generated background "
            "and largest object's colour are the reference's, judged by pixels:", "",
            "| reference image | caption | agreement |", "|---|---|---|",
            f"| given | the reference's | {agreement['image and text']:.0%} |",
            f"| given | empty | {agreement['image alone']:.0%} |",
            f"| zero embedding | empty | {agreement['neither']:.0%} (chance) |",
        ]
        if agreement["image alone"] <= agreement["neither"] + UNDERTRAINED_MARGIN:
            lines += ["", "**Undertrained**: the image alone does not carry the reference's colours (no better than "
                      "chance); the CPU budget ended first. Train longer (scripts/train_structure_gpu.sh)."]
    if "fidelity" in summary:
        with_control, without = summary["fidelity"], summary["fidelity_without_control"]
        lines += [
            "", f"Measured on {with_control['scenes']} held-out scenes (held-out colour/shape/background triples and "
            "unseen seeds), diffusers' own pipeline, DDIM 25 steps, CFG 5, scale 1:", "",
            "| | IoU mean | IoU median |", "|---|---|---|",
            f"| with this control | {with_control['iou_mean']:.3f} | {with_control['iou_median']:.3f} |",
            f"| same prompts and seeds, no control | {without['iou_mean']:.3f} | {without['iou_median']:.3f} |", "",
            "IoU: the generated objects' mask (pixels far from the generated background colour) vs the scene's object "
            "mask the control map was drawn from.",
        ]
        if with_control["iou_mean"] <= without["iou_mean"] + UNDERTRAINED_MARGIN:
            lines += ["", f"**Undertrained**: the IoU is within {UNDERTRAINED_MARGIN:g} of the one without control, so "
                      "the control barely steers yet (a ControlNet starts from zero convolutions and follows its map "
                      "only after enough steps); the CPU budget ended first. Train longer (scripts/train_structure_gpu.sh)."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
