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

import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    arguments,
    device_description,
    interleaved,
    peak_column,
    peer_pipeline,
    sd15_engine,
    write_results,
)

from studio.engine import Engine  # noqa: E402
from studio.events import Result  # noqa: E402
from studio.specs import GenerateSpec  # noqa: E402

TARGET_RATIO = 1.05
GUIDANCE = 7.5


def compare(engine: Engine, prompt: str, size: int, steps: int, repeats: int) -> dict:
    spec = GenerateSpec(prompt, seed=0, steps=steps, guidance_scale=GUIDANCE, width=size, height=size,
                        preview_every=steps + 1)  # no previews: the pipeline makes none
    pipeline = peer_pipeline(engine, StableDiffusionPipeline)
    timing = interleaved(engine.device, {
        "engine": lambda: next(e for e in engine.generate(spec) if isinstance(e, Result)).pixels,
        "diffusers": lambda: pipeline(prompt, num_inference_steps=steps, guidance_scale=GUIDANCE, width=size,
                                      height=size, generator=torch.Generator("cpu").manual_seed(0),
                                      output_type="np").images,
    }, repeats)
    median, pixels = timing["median"], timing["values"]
    return {
        "model": engine.model_name, "size": size, "steps": steps, "guidance_scale": GUIDANCE,
        "dtype": str(engine.model.dtype).replace("torch.", ""), "seconds": timing["seconds"],
        "median_engine_s": median["engine"], "median_diffusers_s": median["diffusers"],
        "ratio": median["engine"] / median["diffusers"], "peak_memory_mib": timing["peak_memory_mib"],
        "max_abs_pixel_difference": float(np.abs(pixels["engine"] - pixels["diffusers"]).max()),
    }


def main(argv: list[str] | None = None) -> dict:
    args = arguments(__doc__.splitlines()[0]).parse_args(argv)
    engine = Engine(args.model, device=args.device)
    rows = [compare(engine, "a big red circle on a blue background", engine.native_size, args.steps, args.repeats)]
    if args.sd15_size:
        rows.append(compare(sd15_engine(args.device), "a photograph of an astronaut riding a horse", args.sd15_size,
                            args.sd15_steps, args.repeats))
    report = {**device_description(engine.device), "repeats": args.repeats, "target_ratio": TARGET_RATIO,
              "rows": rows, "meets_target": all(r["ratio"] <= TARGET_RATIO for r in rows)}
    write_results(args.out, "generate_vs_diffusers", report, [
        "# Plain generation: engine vs StableDiffusionPipeline",
        "",
        f"Device: {report['device_name']} ({report['device']}), {report['torch_threads']} torch threads; DDIM, "
        f"guidance {GUIDANCE}, seed 0, median of {args.repeats} interleaved runs after a warm-up. Target <= {TARGET_RATIO}x.",
        "",
        "| model | size | steps | dtype | engine s | diffusers s | ratio | peak MiB engine / diffusers | max pixel diff |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['model']} | {r['size']} | {r['steps']} | {r['dtype']} | {r['median_engine_s']:.3f} | "
          f"{r['median_diffusers_s']:.3f} | **{r['ratio']:.3f}x** | {peak_column(r['peak_memory_mib'], 'engine', 'diffusers')} | "
          f"{r['max_abs_pixel_difference']:.1e} |" for r in rows),
    ])
    return report


if __name__ == "__main__":
    main()
