"""Plain generation: our engine vs diffusers' StableDiffusionPipeline doing the same work.

Same components (the pipeline is built from the engine's loaded modules, so weights and device are
shared), scheduler (DDIM), steps, guidance, seed and size; the engine with previews and attention
maps off, as the pipeline has none. Runs alternate after a warm-up; medians are compared.
Also checks that both produce the same pixels (parity). Target: engine / pipeline <= 1.05.

Models: the embedded shapes model at its native 128x128, and SD 1.5's architecture at random init
at a small size (--sd15-size; 512 with fp16 on a GPU). Writes bench/results/generate_vs_diffusers.{json,md}.

    python bench/generate_vs_diffusers.py [--device cpu] [--steps 25] [--repeats 5] [--sd15-size 256 --sd15-steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, sd15_engine, timed  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.events import Result  # noqa: E402
from studio.specs import GenerateSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.05
GUIDANCE = 7.5


def peer_pipeline(engine: Engine) -> StableDiffusionPipeline:
    model = engine.model
    return StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def run_engine(engine: Engine, spec: GenerateSpec) -> tuple[float, np.ndarray]:
    seconds, result = timed(engine.device, lambda: next(e for e in engine.generate(spec) if isinstance(e, Result)))
    return seconds, result.pixels


def run_pipeline(pipeline: StableDiffusionPipeline, spec: GenerateSpec, size: int) -> tuple[float, np.ndarray]:
    return timed(pipeline.device, lambda: pipeline(
        spec.prompt, num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale, width=size, height=size,
        generator=torch.Generator("cpu").manual_seed(spec.seed), output_type="np").images)


def peak_memory(device: torch.device, run) -> float | None:
    """Peak device memory (MiB) allocated during `run`; None on CPU (no per-call allocator statistics)."""
    if device.type != "cuda":
        run()
        return None
    torch.cuda.reset_peak_memory_stats(device)
    run()
    return torch.cuda.max_memory_allocated(device) / 2**20


def compare(engine: Engine, prompt: str, size: int, steps: int, repeats: int) -> dict:
    spec = GenerateSpec(prompt, seed=0, steps=steps, guidance_scale=GUIDANCE, width=size, height=size,
                        preview_every=steps + 1)  # no previews: the pipeline makes none
    pipeline = peer_pipeline(engine)
    pipeline.set_progress_bar_config(disable=True)
    run_engine(engine, spec), run_pipeline(pipeline, spec, size)  # warm-up
    seconds: dict[str, list[float]] = {"engine": [], "diffusers": []}
    for _ in range(repeats):  # interleaved so drift (other load, clocks) hits both alike
        ours, ours_pixels = run_engine(engine, spec)
        theirs, their_pixels = run_pipeline(pipeline, spec, size)
        seconds["engine"].append(ours)
        seconds["diffusers"].append(theirs)
    memory = {
        "engine": peak_memory(engine.device, lambda: run_engine(engine, spec)),
        "diffusers": peak_memory(engine.device, lambda: run_pipeline(pipeline, spec, size)),
    }
    ours, theirs = statistics.median(seconds["engine"]), statistics.median(seconds["diffusers"])
    return {
        "model": engine.model_name, "size": size, "steps": steps, "guidance_scale": GUIDANCE,
        "dtype": str(engine.model.dtype).replace("torch.", ""), "seconds": seconds,
        "median_engine_s": ours, "median_diffusers_s": theirs, "ratio": ours / theirs,
        "peak_memory_mib": memory,
        "max_abs_pixel_difference": float(np.abs(ours_pixels - their_pixels).max()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="first model (default: the embedded one)")
    parser.add_argument("--sd15-size", type=int, default=256, help="0 skips SD 1.5")
    parser.add_argument("--sd15-steps", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    engine = Engine(args.model, device=args.device)
    rows = [compare(engine, "a big red circle on a blue background", engine.native_size, args.steps, args.repeats)]
    if args.sd15_size:
        rows.append(compare(sd15_engine(args.device), "a photograph of an astronaut riding a horse", args.sd15_size,
                            args.sd15_steps, args.repeats))
    report = {
        **device_description(engine.device), "repeats": args.repeats, "target_ratio": TARGET_RATIO,
        "rows": rows, "meets_target": all(r["ratio"] <= TARGET_RATIO for r in rows),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate_vs_diffusers.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Plain generation: engine vs StableDiffusionPipeline",
        "",
        f"Device: {report['device_name']} ({report['device']}), {report['torch_threads']} torch threads; DDIM, "
        f"guidance {GUIDANCE}, seed 0, median of {args.repeats} interleaved runs after a warm-up. Target <= {TARGET_RATIO}x.",
        "",
        "| model | size | steps | dtype | engine s | diffusers s | ratio | peak MiB engine / diffusers | max pixel diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = r["peak_memory_mib"]
        peak = "n/a on CPU" if memory["engine"] is None else f"{memory['engine']:.0f} / {memory['diffusers']:.0f}"
        lines.append(f"| {r['model']} | {r['size']} | {r['steps']} | {r['dtype']} | {r['median_engine_s']:.3f} | "
                     f"{r['median_diffusers_s']:.3f} | **{r['ratio']:.3f}x** | {peak} | {r['max_abs_pixel_difference']:.1e} |")
    (out / "generate_vs_diffusers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
