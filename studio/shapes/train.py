"""Train the embedded shapes-world model: `python -m studio.shapes.train --out assets/models/shapes-sd`.

Stages (each seeded, checkpointed in --work and resumed when re-run):
  data       render the training set (images, per-cell labels, scenes for captions), in parallel chunks
  vae        AutoencoderKL on random --vae-crop crops (fully convolutional: crops of 64 train it for 128)
  latents    encode every image once; the UNet never runs the VAE again
  unet       text encoder + UNet, v-prediction, zero terminal SNR, min-SNR-style loss weight, EMA (diffusers EMAModel)
  decoder    decoder-only fine-tune on the frozen latents (sharper images; latents do not move)
  classifier noisy-latent classifier (studio.shapes.classifier) for judging and classifier guidance
  export     save a stock StableDiffusionPipeline folder (safetensors) + classifier/
`--stage all` runs them in order; unet, decoder and classifier only need the latents and may run in parallel.
The defaults are the 2-core CPU recipe (about 100 minutes alone on the CPU, plus `--decoder-steps 1500`). Its model
ignored position words (8% on held-out prompts) and its VAE reached 24.9 dB; the shipped model is the GPU recipe,
`scripts/train_shapes_gpu.sh` (about 7.5 minutes on one H200), whose batches of 512 are what taught positions.
`--minutes unet=3 vae=1.5 ...` gives stages a time budget instead of a step count.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from studio import schedule
from studio.shapes import classifier as latent_classifier
from studio.shapes.architecture import ShapesArchitecture, make_pipeline, make_shapes_scheduler, make_text_encoder, make_unet, make_vae
from studio.shapes.render import caption, render, sample_scene
from studio.shapes.vocabulary import MAX_LENGTH, build_tokenizer

STAGES = ("data", "vae", "latents", "unet", "decoder", "classifier", "export")


class Stateful(Protocol):
    """What a checkpoint saves and restores: modules, and the EMA."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> object: ...


def to_unit_range(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], SD's VAE input convention."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Checkpoint:
    """Resumable training state of one stage: modules (and anything with state_dict/load_state_dict, such as
    the EMA), optimiser, step, total steps, RNG.

    Not accelerate's `Accelerator.save_state`: these loops run on one device with plain torch.autocast and
    resume a numpy Generator and the time-calibrated step total, which accelerate does not track; adopting it
    would rewrite the loop for no gain on one device. Everything saved loads with `weights_only=True`.
    """

    def __init__(self, path: Path):
        self.path = path

    def save(self, step: int, total: int, modules: dict[str, Stateful], optimizer: torch.optim.Optimizer,
             rng: np.random.Generator) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(
            {"step": step, "total": total, "modules": {k: m.state_dict() for k, m in modules.items()},
             "optimizer": optimizer.state_dict(), "numpy_rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state()},
            tmp,
        )
        tmp.replace(self.path)

    def resume(self, modules: dict[str, Stateful], optimizer: torch.optim.Optimizer,
               rng: np.random.Generator) -> tuple[int, int | None]:
        """(steps done, the stage's total steps as fixed when it started, or None for a new stage)."""
        if not self.path.exists():
            return 0, None
        state = torch.load(self.path, weights_only=True)  # tensors, numbers and strings: no code runs
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        return state["step"], state.get("total")


class LossLog:
    def __init__(self, path: Path):
        self.path = path

    def write(self, **record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def train_loop(name: str, work: Path, steps: int, modules: dict[str, Stateful], optimizer, peak_lr: float,
               warmup: int, loss_fn, seed: int, minutes: float = 0.0, checkpoint_every: int = 250,
               after_step: Callable[[], None] | None = None) -> None:
    """Shared loop of every stage: resume, step, log, checkpoint. loss_fn(rng) -> (loss, extras dict);
    after_step() runs after every optimiser step (the EMA update), and `modules` holds all that resumes.

    With `minutes`, `steps` is a maximum: the warm-up steps are timed and the total is then fixed to what fits
    in that time (the learning-rate warm-up does not depend on the total, so nothing before the choice changes).
    The chosen total is logged and checkpointed; `--<stage>-steps <total>` reproduces the run."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    checkpoint, log = Checkpoint(work / f"{name}.ckpt"), LossLog(work / f"{name}.log.jsonl")
    start, fixed_total = checkpoint.resume(modules, optimizer, rng)
    total = fixed_total or steps
    calibrate = minutes > 0 and fixed_total is None and warmup < steps
    bar = tqdm(initial=start, total=total, desc=name, mininterval=10)
    # time the second half of the warm-up only: the first steps pay for CUDA start-up and cuDNN autotuning
    # (timing all of it once made a GPU run choose 3x too few steps)
    timed_from, started, step = start + (warmup - start) // 2, time.perf_counter(), start
    while step < total:
        if calibrate and step == timed_from:
            started = time.perf_counter()
        if calibrate and step == warmup:
            seconds_per_step = (time.perf_counter() - started) / (step - timed_from)
            total = min(steps, max(warmup + 1, int(60 * minutes / seconds_per_step)))
            log.write(step=step, calibrated_total=total, seconds_per_step=seconds_per_step, time=time.time())
            bar.total = total
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, peak_lr, warmup)
        loss, extras = loss_fn(rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        step += 1
        bar.update()
        if after_step:
            after_step()
        if (step - 1) % 25 == 0 or step == total:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(step=step - 1, loss=loss.item(), lr=optimizer.param_groups[0]["lr"], time=time.time(), **extras)
        if step % checkpoint_every == 0 or step == total:
            checkpoint.save(step, total, modules, optimizer, rng)
    bar.close()


# ---------------------------------------------------------------------------------------------- stages


RENDER_CHUNK = 512  # images per rendering task; each chunk has its own seed, so workers do not change the data


def render_chunk(task: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict]]:
    """(seed, chunk index, image count) -> the chunk's images, per-cell labels and scenes."""
    seed, chunk, count = task
    rng = np.random.default_rng([seed, chunk])
    images, cells, scenes = [], [], []
    for _ in range(count):
        rendering = render(sample_scene(rng))
        images.append(rendering.image)
        cells.append(latent_classifier.cell_labels(rendering))
        scenes.append(scene_to_json(rendering.scene))
    return np.stack(images), {k: np.stack([c[k] for c in cells]) for k in cells[0]}, scenes


def stage_data(args) -> None:
    path = args.work / "data.npz"
    if path.exists():
        return
    counts = [min(RENDER_CHUNK, args.images - start) for start in range(0, args.images, RENDER_CHUNK)]
    tasks = [(args.seed, chunk, count) for chunk, count in enumerate(counts)]
    with multiprocessing.get_context("spawn").Pool(args.workers or os.cpu_count()) as pool:
        chunks = list(tqdm(pool.imap(render_chunk, tasks), total=len(tasks), desc="data", mininterval=10))  # in order
    cells = {k: np.concatenate([c[1][k] for c in chunks]) for k in chunks[0][1]}
    np.savez(path, images=np.concatenate([c[0] for c in chunks]), **cells)
    (args.work / "scenes.json").write_text(json.dumps([s for c in chunks for s in c[2]]))


def scene_to_json(scene) -> dict:
    return {"background": scene.background, "objects": [vars(o) for o in scene.objects]}


def scene_from_json(d: dict):
    from studio.shapes.render import Scene, ShapeObject

    return Scene(d["background"], tuple(ShapeObject(**{**o, "center": tuple(o["center"])}) for o in d["objects"]))


def load_data(args) -> dict[str, np.ndarray]:
    return dict(np.load(args.work / "data.npz"))


def stage_vae(args) -> None:
    images = load_data(args)["images"]
    vae = make_vae(args.arch).to(args.device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    crop = args.vae_crop

    def loss_fn(rng):
        idx = rng.integers(len(images), size=args.vae_batch)
        y0, x0 = rng.integers(images.shape[1] - crop + 1, size=2)
        x = to_unit_range(images[idx, y0 : y0 + crop, x0 : x0 + crop]).to(args.device)
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):  # CPU AMX: ~1.7x faster VAE steps
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        mse = F.mse_loss(recon, x)
        loss = mse + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        return loss, {"mse": mse.item()}

    train_loop("vae", args.work, args.vae_steps, {"vae": vae}, optimizer, args.vae_lr, 100, loss_fn, args.seed + 1,
               minutes=args.minutes.get("vae", 0))
    save_file({k: v.cpu() for k, v in vae.state_dict().items()}, args.work / "vae.safetensors")


@torch.no_grad()
def stage_latents(args) -> None:
    path = args.work / "latents.safetensors"
    if path.exists():
        return
    images = load_data(args)["images"]
    vae = make_vae(args.arch)
    vae.load_state_dict(load_file(args.work / "vae.safetensors"))
    vae.to(args.device).eval()
    means = [vae.encode(to_unit_range(images[i : i + 256]).to(args.device)).latent_dist.mean.cpu() for i in tqdm(range(0, len(images), 256), desc="latents")]
    latents = torch.cat(means)
    save_file({"latents": latents.contiguous(), "scaling_factor": (1 / latents.std()).reshape(1)}, path)


def load_latents(args) -> tuple[torch.Tensor, float]:
    stored = load_file(args.work / "latents.safetensors")
    return stored["latents"], stored["scaling_factor"].item()


def make_ema(parameters: list[torch.nn.Parameter], decay: float) -> EMAModel:
    """diffusers' EMA with the decay warm-up min(decay, (1 + k) / (10 + k)) at update k = 1, 2, ...:
    update_after_step=-1 because diffusers starts that warm-up one update later (decay 0 at its first)."""
    return EMAModel(parameters, decay=decay, update_after_step=-1)


def v_prediction_loss(prediction: torch.Tensor, target: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The embedded model's loss: min-SNR-5 weighting (Hang et al. 2023) of a v-target MSE,
    min(SNR + 1, 6) / (SNR + 1) per sample; alpha_bar is (B,), each sample's cumulative alpha."""
    snr = alpha_bar / (1 - alpha_bar).clamp(min=1e-8)
    weight = torch.minimum(snr + 1, torch.full_like(snr, 6.0)) / (snr + 1)
    per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def stage_unet(args) -> None:
    latents, scaling = load_latents(args)
    latents = (latents * scaling).to(args.device)
    scenes = [scene_from_json(d) for d in json.loads((args.work / "scenes.json").read_text())]
    tokenizer = build_tokenizer()
    text_encoder, unet = make_text_encoder(args.arch).to(args.device), make_unet(args.arch).to(args.device)
    scheduler = make_shapes_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(args.device)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)
    ema = make_ema(params, args.ema)

    def loss_fn(rng):
        idx = rng.integers(len(latents), size=args.unet_batch)
        texts = ["" if rng.random() < args.empty_caption else caption(scenes[i], rng, keep=args.caption_keep) for i in idx]
        ids = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids.to(args.device)
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = torch.from_numpy(rng.integers(0, scheduler.config.num_train_timesteps, size=len(idx))).to(args.device)
        alpha_bar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = schedule.noise_to(x0, noise, alpha_bar)
        target = schedule.velocity(x0, noise, alpha_bar)
        # bf16 only on CUDA: on the CPU the small UNet ran slower under autocast (attention, group norm)
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16 and args.device_type == "cuda"):
            prediction = unet(x_t, t, text_encoder(ids).last_hidden_state).sample.float()
        return v_prediction_loss(prediction, target, alphas_cumprod[t]), {}

    train_loop("unet", args.work, args.unet_steps, {"text_encoder": text_encoder, "unet": unet, "ema": ema}, optimizer,
               args.unet_lr, 200, loss_fn, args.seed + 2, minutes=args.minutes.get("unet", 0),
               after_step=lambda: ema.step(params))
    ema.copy_to(params)  # the averaged weights are the ones exported
    save_file({k: v.cpu() for k, v in text_encoder.state_dict().items()}, args.work / "text_encoder.safetensors")
    save_file({k: v.cpu() for k, v in unet.state_dict().items()}, args.work / "unet.safetensors")


def stage_decoder(args) -> None:
    """Fine-tune the decoder alone on the frozen latents (as SD's ft-MSE VAE did): sharper images,
    and the latents the UNet learns from do not change. Optional: --decoder-steps 0 skips it."""
    if args.decoder_steps == 0:
        return
    images = load_data(args)["images"]
    latents, _ = load_latents(args)
    vae = make_vae(args.arch)
    vae.load_state_dict(load_file(args.work / "vae.safetensors"))
    vae.to(args.device)
    decoder_params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    optimizer = torch.optim.AdamW(decoder_params, lr=args.decoder_lr, weight_decay=0.0)
    crop = args.vae_crop // 8  # latent cells

    def loss_fn(rng):
        idx = rng.integers(len(images), size=args.decoder_batch)
        y0, x0 = rng.integers(latents.shape[-1] - crop + 1, size=2)
        z = latents[idx, :, y0 : y0 + crop, x0 : x0 + crop].to(args.device)
        target = to_unit_range(images[idx, 8 * y0 : 8 * (y0 + crop), 8 * x0 : 8 * (x0 + crop)]).to(args.device)
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
            recon = vae.decode(z).sample.float()
        mse = F.mse_loss(recon, target)
        return mse + 0.5 * F.l1_loss(recon, target), {"mse": mse.item()}

    train_loop("decoder", args.work, args.decoder_steps, {"vae": vae}, optimizer, args.decoder_lr, 50, loss_fn, args.seed + 3,
               minutes=args.minutes.get("decoder", 0))
    save_file({k: v.cpu() for k, v in vae.state_dict().items()}, args.work / "vae_finetuned.safetensors")


def stage_classifier(args) -> None:
    data = load_data(args)
    latents, scaling = load_latents(args)
    latents = latents * scaling
    model = latent_classifier.LatentClassifier().to(args.device)
    alphas_cumprod = make_shapes_scheduler().alphas_cumprod.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.classifier_lr, weight_decay=1e-2)
    labels = {k: torch.from_numpy(data[k]).long().to(args.device) for k in latent_classifier.LABEL_KEYS}
    latents = latents.to(args.device)

    def loss_fn(rng):
        idx = rng.integers(len(latents), size=args.classifier_batch)
        t = torch.from_numpy(rng.integers(0, 1000, size=len(idx))).to(args.device)
        x0 = latents[idx]
        x_t = schedule.noise_to(x0, torch.randn_like(x0), alphas_cumprod[t].view(-1, 1, 1, 1))
        loss, accuracy = latent_classifier.loss(model(x_t, t), {k: v[idx] for k, v in labels.items()})
        return loss, accuracy

    train_loop("classifier", args.work, args.classifier_steps, {"classifier": model}, optimizer,
               args.classifier_lr, 100, loss_fn, args.seed + 4, minutes=args.minutes.get("classifier", 0))
    save_file({k: v.cpu() for k, v in model.state_dict().items()}, args.work / "classifier.safetensors")


def stage_export(args) -> None:
    _, scaling = load_latents(args)
    vae, text_encoder, unet = make_vae(args.arch), make_text_encoder(args.arch), make_unet(args.arch)
    vae_file = args.work / "vae_finetuned.safetensors"
    vae.load_state_dict(load_file(vae_file if vae_file.exists() else args.work / "vae.safetensors"))
    vae.register_to_config(scaling_factor=scaling)
    text_encoder.load_state_dict(load_file(args.work / "text_encoder.safetensors"))
    unet.load_state_dict(load_file(args.work / "unet.safetensors"))
    make_pipeline(args.arch, vae=vae, text_encoder=text_encoder, unet=unet).save_pretrained(args.out, safe_serialization=True)
    latent_classifier.save(latent_classifier.load_weights(args.work / "classifier.safetensors"), args.out / "classifier")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("all", *STAGES), default="all")
    p.add_argument("--work", type=Path, default=Path("runs/shapes"), help="checkpoints and caches")
    p.add_argument("--out", type=Path, default=Path("assets/models/shapes-sd"))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", nargs="*", default=[], metavar="STAGE=M",
                   help="time budgets, e.g. unet=4 vae=1.5: that stage's --<stage>-steps becomes a maximum, and its "
                        "total is fixed after timing the warm-up (logged and checkpointed, so the run can be repeated "
                        "with --<stage>-steps <total>)")
    p.add_argument("--images", type=int, default=25_600)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="disable bf16 autocast for VAE stages")
    p.add_argument("--workers", type=int, default=0, help="processes rendering the data (0: one per CPU)")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-crop", type=int, default=64, help="square crop (pixels, multiple of 8) the VAE stages train on")
    p.add_argument("--vae-batch", type=int, default=24)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--decoder-steps", type=int, default=0, help="0 skips the stage")
    p.add_argument("--decoder-batch", type=int, default=24)
    p.add_argument("--decoder-lr", type=float, default=5e-4)
    p.add_argument("--unet-steps", type=int, default=5_000)
    p.add_argument("--unet-batch", type=int, default=48)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-keep", type=float, default=0.8, help="probability of keeping each attribute phrase")
    p.add_argument("--empty-caption", type=float, default=0.1, help="probability of the empty (null) caption")
    p.add_argument("--classifier-steps", type=int, default=1_500)
    p.add_argument("--classifier-batch", type=int, default=128)
    p.add_argument("--classifier-lr", type=float, default=2e-3)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.arch = ShapesArchitecture()
    args.device_type = torch.device(args.device).type
    args.minutes = {stage: float(m) for stage, m in (item.split("=") for item in args.minutes)}
    if args.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes every step
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    stages = STAGES if args.stage == "all" else (args.stage,)
    for stage in stages:
        globals()[f"stage_{stage}"](args)


if __name__ == "__main__":
    main()
