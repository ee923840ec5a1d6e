"""SDEdit (unmasked, VP/DDIM) vs diffusers' StableDiffusionImg2ImgPipeline at the same strength.

Same components (the pipeline is built from the engine's loaded modules), DDIM, steps, strength,
guidance, prompt and guide image; one repeat and one t0 on our side, previews off. Runs alternate
after a warm-up; medians are compared. Target: SDEdit / img2img <= 1.05.
Models: the embedded one at 128 px and SD 1.5's architecture at random init (--sd15-size, 0 skips).
Writes bench/results/sdedit_vs_img2img.{json,md}.

    python bench/sdedit_vs_img2img.py [--device cpu] [--steps 25] [--strength 0.6] [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

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

from studio.editing.sdedit import SDEditSpec  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.events import Result  # noqa: E402

TARGET_RATIO = 1.05
GUIDANCE = 7.5


def guide_image(size: int) -> Image.Image:
    """A rough red blob on blue: the stroke drawing SDEdit is for."""
    yy, xx = np.mgrid[:size, :size] / size
    blob = (xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.06
    pixels = np.where(blob[..., None], [210, 40, 40], [40, 70, 210]).astype(np.uint8)
    return Image.fromarray(pixels)


def compare(engine: Engine, prompt: str, size: int, steps: int, strength: float, repeats: int) -> dict:
    pipeline = peer_pipeline(engine, StableDiffusionImg2ImgPipeline)
    guide = guide_image(size)
    spec = SDEditSpec(prompt=prompt, strengths=(strength,), repeats=1, seed=0, steps=steps, guidance_scale=GUIDANCE,
                      preview_every=steps + 1, keep_size=True)  # the guide's own size, as img2img works
    timing = interleaved(engine.device, {
        "sdedit": lambda: next(e for e in engine.sdedit(spec, guide) if isinstance(e, Result)),
        "img2img": lambda: pipeline(prompt, image=guide, strength=strength, num_inference_steps=steps,
                                    guidance_scale=GUIDANCE, generator=torch.Generator("cpu").manual_seed(0),
                                    output_type="np"),
    }, repeats)
    median = timing["median"]
    return {"model": engine.model_name, "size": size, "steps": steps, "strength": strength, "seconds": timing["seconds"],
            "median_sdedit_s": median["sdedit"], "median_img2img_s": median["img2img"],
            "ratio": median["sdedit"] / median["img2img"], "peak_memory_mib": timing["peak_memory_mib"]}


def main(argv: list[str] | None = None) -> dict:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--strength", type=float, default=0.6)
    args = parser.parse_args(argv)
    engine = Engine(args.model, device=args.device)
    rows = [compare(engine, "a big red circle on a blue background", engine.native_size, args.steps, args.strength,
                    args.repeats)]
    if args.sd15_size:
        rows.append(compare(sd15_engine(args.device), "a red ball on a blue table", args.sd15_size, args.sd15_steps,
                            args.strength, args.repeats))
    report = {**device_description(engine.device), "repeats": args.repeats, "target_ratio": TARGET_RATIO,
              "rows": rows, "meets_target": all(r["ratio"] <= TARGET_RATIO for r in rows)}
    write_results(args.out, "sdedit_vs_img2img", report, [
        "# SDEdit vs StableDiffusionImg2ImgPipeline",
        "",
        f"Device: {report['device_name']} ({report['device']}), {report['torch_threads']} torch threads; DDIM, guidance "
        f"{GUIDANCE}, seed 0, one repeat, previews off, median of {args.repeats} interleaved runs after a warm-up. "
        f"Target <= {TARGET_RATIO}x. SDEdit's time includes its report (L2 to the guide, classifier realism where the "
        "model has a classifier) and the result strip.",
        "",
        "| model | size | steps | strength | SDEdit s | img2img s | ratio | peak MiB SDEdit / img2img |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r['model']} | {r['size']} | {r['steps']} | {r['strength']} | {r['median_sdedit_s']:.3f} | "
          f"{r['median_img2img_s']:.3f} | **{r['ratio']:.3f}x** | {peak_column(r['peak_memory_mib'], 'sdedit', 'img2img')} |"
          for r in rows),
    ])
    return report


if __name__ == "__main__":
    main()
