"""Measure the embedded model: `python -m studio.shapes.evaluate [--model DIR] [--out FILE.json]`.

Generates the held-out prompts (attribute triples never rendered in training, one big object each)
through stock diffusers `StableDiffusionPipeline` (DDIM, 25 steps, guidance 5), judges every image
twice (pixel check and noisy-latent classifier), and measures VAE reconstruction PSNR on fresh
renders and the time to generate 4 images. Writes a JSON report and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from studio.models import EMBEDDED_MODEL_DIR, decode_latents, open_folder
from studio.shapes import classifier as latent_classifier
from studio.shapes.judge import Judgement, judge_latents, judge_pixels
from studio.shapes.render import HELD_OUT, describe_object, make_object, render, sample_scene
from studio.shapes.train import to_unit_range

DEFAULT_MODEL = EMBEDDED_MODEL_DIR
EVAL_POSITIONS = ("left", "right", "top", "bottom", "center", "top left")
ATTRIBUTES = ("background", "object colour", "shape", "position", "count")


@dataclass(frozen=True)
class Case:
    prompt: str
    background: str
    colour: str
    shape: str
    position: str
    seed: int


def held_out_cases() -> list[Case]:
    cases = []
    for colour, shape, background in HELD_OUT:
        for position in EVAL_POSITIONS:
            obj = make_object(shape, colour, "big", position)
            prompt = f"{describe_object(obj)} on a {background} background"
            cases.append(Case(prompt, background, colour, shape, position, seed=len(cases)))
    return cases


def score(judgement: Judgement, case: Case) -> dict[str, bool]:
    first = judgement.objects[0] if judgement.objects else None
    return {
        "background": judgement.background == case.background,
        "object colour": first is not None and first.colour == case.colour,
        "shape": first is not None and first.shape == case.shape,
        "position": first is not None and first.position == case.position,
        "count": len(judgement.objects) == 1,
    }


def load_shapes_pipeline(model: Path) -> StableDiffusionPipeline:
    pipe = open_folder(model)  # the stock diffusers pipeline, loaded offline
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) from the stock pipeline, one generator per seed."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="latent").images


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    return (decode_latents(pipe.vae, latents) * 255).round().astype(np.uint8)


@torch.no_grad()
def vae_psnr(pipe, n: int = 256, seed: int = 12345) -> float:
    rng = np.random.default_rng(seed)
    images = np.stack([render(sample_scene(rng, allow_held_out=True)).image for _ in range(n)])
    psnrs = []
    for i in range(0, n, 64):
        x = to_unit_range(images[i : i + 64])
        recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mse = ((recon - x) / 2).pow(2).mean(dim=(1, 2, 3))
        psnrs.append(10 * torch.log10(1 / mse))
    return torch.cat(psnrs).mean().item()


def evaluate(model: Path, steps: int = 25, guidance: float = 5.0, batch: int = 12) -> dict:
    pipe = load_shapes_pipeline(model)
    classifier = latent_classifier.load(model / "classifier")
    cases = held_out_cases()
    tallies = {judge: {a: 0 for a in ATTRIBUTES} for judge in ("pixels", "classifier")}
    rows = []
    for i in range(0, len(cases), batch):
        chunk = cases[i : i + batch]
        latents = generate(pipe, [c.prompt for c in chunk], [c.seed for c in chunk], steps, guidance)
        images = decode(pipe, latents)
        for case, image, by_classifier in zip(chunk, images, judge_latents(classifier, latents)):
            results = {"pixels": score(judge_pixels(image), case), "classifier": score(by_classifier, case)}
            for judge, result in results.items():
                for attribute, ok in result.items():
                    tallies[judge][attribute] += ok
            rows.append({"prompt": case.prompt, "seed": case.seed, **{j: r for j, r in results.items()}})
    start = time.perf_counter()
    generate(pipe, [cases[0].prompt] * 4, [0, 1, 2, 3], steps, guidance)
    seconds_for_4 = time.perf_counter() - start
    return {
        "model": str(model),
        "settings": {"scheduler": "DDIM", "steps": steps, "guidance": guidance, "prompts": len(cases)},
        "accuracy": {j: {a: n / len(cases) for a, n in t.items()} for j, t in tallies.items()},
        "vae_psnr_db": vae_psnr(pipe),
        "seconds_for_4_images": seconds_for_4,
        "torch_threads": torch.get_num_threads(),
        "cases": rows,
    }


def table(report: dict) -> str:
    lines = ["| judge | " + " | ".join(ATTRIBUTES) + " |", "|---" * (len(ATTRIBUTES) + 1) + "|"]
    for judge, accuracy in report["accuracy"].items():
        lines.append(f"| {judge} | " + " | ".join(f"{accuracy[a]:.0%}" for a in ATTRIBUTES) + " |")
    lines.append("")
    lines.append(f"VAE reconstruction PSNR on fresh renders: {report['vae_psnr_db']:.1f} dB; "
                 f"4 images at {report['settings']['steps']} steps: {report['seconds_for_4_images']:.2f} s "
                 f"({report['torch_threads']} thread{'s' if report['torch_threads'] != 1 else ''})")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    args = p.parse_args(argv)
    report = evaluate(args.model, args.steps, args.guidance)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(table(report))


if __name__ == "__main__":
    main()
