"""DiffEdit: our engine vs diffusers' StableDiffusionDiffEditPipeline on the same model, images, prompts, seeds.

Each case is a rendered shapes-world scene (the renderer knows every object's true mask) and a colour edit of
one object ("a big red circle ..." -> "a big green circle ..."). Both sides run the whole edit: mask discovery,
the start state (diffusers: its DDIM inversion; ours: --start, see below), and the masked edit, with the same
steps, guidance, strengths (mask 0.5, edit 0.8: diffusers' defaults) and seed. Measured per case:

    mask IoU        discovered mask vs the true mask of the edited object, at image resolution
                    (diffusers' mask is at latent resolution: upsampled nearest, as its pipeline applies it)
    success         the pixel judge finds an object of the target colour
    background PSNR PSNR to the original outside the true object mask (no compositing on either side)
    seconds         wall time of the whole edit, alternating runs after a warm-up; medians compared

Ours decodes only the masked change (DiffEditSpec.decode_masked_change: pixels of latent cells off the mask are the
decoding of the image's own latents); the row "ours, whole latent decoded" decodes the same edit's final latents
whole, as diffusers does: the difference between the two rows is what that decoding changes.

Writes bench/results/diffedit.{json,md}.

    python bench/diffedit.py [--device cpu] [--cases 8] [--steps 25] [--repeats 3] [--start noise|inversion] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, timed  # noqa: E402

from studio.editing import masks  # noqa: E402
from studio.editing.diffedit import DiffEditSpec  # noqa: E402
from studio.events import DiffEditResult  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.metrics import psnr  # noqa: E402
from studio.models import decode_latents  # noqa: E402
from studio.shapes.judge import judge_pixels  # noqa: E402
from studio.shapes.render import Scene, make_object, render  # noqa: E402
from studio.shapes.vocabulary import COLOURS, SHAPES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_TIME_RATIO = 1.1
GUIDANCE = 5.0
EDIT_STRENGTH = DiffEditSpec("", "").edit_strength  # t_edit / T on both sides (diffusers' inpaint_strength)
MASK_STRENGTH_PEER = 0.5  # diffusers' mask_encode_strength default; ours is DiffEditSpec's
SIDES = ("ours", "ours_whole_decode", "diffusers")
LABELS = {"ours": "ours", "ours_whole_decode": "ours, whole latent decoded", "diffusers": "diffusers"}


def cases(count: int) -> list[dict]:
    """Scenes with one big object (and, every other case, a small second one), and a colour edit of the big one."""
    rng = np.random.default_rng(2026)
    colours = list(COLOURS)
    out = []
    for index in range(count):
        background, colour, new_colour, other = rng.choice(colours, 4, replace=False)
        shape = SHAPES[index % len(SHAPES)]
        objects = [make_object(shape, colour, "big", "left", rng)]
        extra = ""
        if index % 2:
            other_shape = SHAPES[(index + 1) % len(SHAPES)]
            objects.append(make_object(other_shape, other, "small", "right", rng))
            extra = f" and a small {other} {other_shape}"
        rendering = render(Scene(str(background), tuple(objects)))
        source = f"a big {colour} {shape}{extra} on a {background} background"
        target = f"a big {new_colour} {shape}{extra} on a {background} background"
        out.append({"rendering": rendering, "image": rendering.image, "source": source, "target": target,
                    "target_colour": str(new_colour), "seed": index})
    return out


def peer_pipeline(engine: Engine) -> StableDiffusionDiffEditPipeline:
    model = engine.model
    pipeline = StableDiffusionDiffEditPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler_config),
        inverse_scheduler=DDIMInverseScheduler.from_config(model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run_ours(engine: Engine, case: dict, steps: int, start: str) -> DiffEditResult:
    spec = DiffEditSpec(case["source"], case["target"], steps=steps, guidance_scale=GUIDANCE, start=start,
                        seed=case["seed"], keep_size=True,  # the image's own size, as the peer works
                        composite=False)  # neither side composites
    return next(e for e in engine.diffedit(spec, case["image"]) if isinstance(e, DiffEditResult))


def whole_decoded(engine: Engine, result: DiffEditResult) -> np.ndarray:
    """The same edit's final latents decoded whole (as diffusers decodes), (H, W, 3) uint8."""
    return (decode_latents(engine.model.vae, result.latents)[0] * 255).round().astype(np.uint8)


def run_peer(pipeline: StableDiffusionDiffEditPipeline, case: dict, steps: int) -> tuple[np.ndarray, np.ndarray]:
    image = Image.fromarray(case["image"])
    generator = torch.Generator("cpu").manual_seed(case["seed"])
    latent_mask = pipeline.generate_mask(image=image, source_prompt=case["source"], target_prompt=case["target"],
                                         mask_encode_strength=MASK_STRENGTH_PEER, num_inference_steps=steps,
                                         guidance_scale=GUIDANCE, generator=generator)
    # plain DDIM inversion (w = 1), as ours; the same t_edit
    inverted = pipeline.invert(prompt=case["source"], image=image, num_inference_steps=steps, guidance_scale=1.0,
                               inpaint_strength=EDIT_STRENGTH, generator=generator).latents
    edited = pipeline(prompt=case["target"], mask_image=latent_mask, image_latents=inverted,
                      inpaint_strength=EDIT_STRENGTH, num_inference_steps=steps, guidance_scale=GUIDANCE,
                      generator=generator, output_type="np").images[0]
    pixel_mask = masks.resize_mask(latent_mask[0] > 0.5, image.size[::-1])  # as the pipeline applies it
    return (np.clip(edited, 0, 1) * 255).round().astype(np.uint8), pixel_mask


def measure(case: dict, edited: np.ndarray, mask: np.ndarray) -> dict:
    true = case["rendering"].masks[0]
    return {
        "iou": masks.iou(mask, true),
        "success": case["target_colour"] in [o.colour for o in judge_pixels(edited).objects],
        "background_psnr": psnr(case["rendering"].image, edited, ~true),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded shapes model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (after one warm-up)")
    parser.add_argument("--start", default="inversion", choices=["inversion", "noise"], help="our Stage II start")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    engine = Engine(args.model, device=args.device)
    pipeline = peer_pipeline(engine)
    pipeline.set_progress_bar_config(disable=True)
    all_cases = cases(args.cases)

    # 1. quality on every case
    rows = []
    for case in all_cases:
        result = run_ours(engine, case, args.steps, args.start)
        ours = measure(case, np.asarray(result.images[0]), result.mask)
        whole = measure(case, whole_decoded(engine, result), result.mask)
        peer = measure(case, *run_peer(pipeline, case, args.steps))
        rows.append({"source": case["source"], "target": case["target"], "ours": ours, "ours_whole_decode": whole,
                     "diffusers": peer})

    # 2. time of one whole edit, alternating after a warm-up
    timed_case = all_cases[0]
    run_ours(engine, timed_case, args.steps, args.start)
    run_peer(pipeline, timed_case, args.steps)
    seconds: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(args.repeats):
        seconds["ours"].append(timed(engine.device, lambda: run_ours(engine, timed_case, args.steps, args.start))[0])
        seconds["diffusers"].append(timed(engine.device, lambda: run_peer(pipeline, timed_case, args.steps))[0])

    def mean(side: str, key: str) -> float:
        return float(np.mean([row[side][key] for row in rows]))

    summary = {
        side: {"iou": mean(side, "iou"), "success": mean(side, "success"), "background_psnr": mean(side, "background_psnr"),
               "median_seconds": statistics.median(seconds[side]) if side in seconds else None}
        for side in SIDES
    }
    ratio = summary["ours"]["median_seconds"] / summary["diffusers"]["median_seconds"]
    report = {
        "model": engine.model_name, **device_description(engine.device), "steps": args.steps, "cases": args.cases,
        "guidance_scale": GUIDANCE, "edit_strength": EDIT_STRENGTH, "our_mask_strength": DiffEditSpec("", "").mask_strength,
        "peer_mask_strength": MASK_STRENGTH_PEER, "our_start": args.start,
        "peer_start": "DDIM inversion (pipeline.invert, w = 1)",
        "summary": summary, "time_ratio": ratio, "target_time_ratio": TARGET_TIME_RATIO, "seconds": seconds,
        "rows": rows,
        "verdict": {
            "iou_at_least_as_good": summary["ours"]["iou"] >= summary["diffusers"]["iou"],
            "background_psnr_at_least_as_good": summary["ours"]["background_psnr"] >= summary["diffusers"]["background_psnr"],
            "time_within_target": ratio <= TARGET_TIME_RATIO,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diffedit.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "diffedit.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"# DiffEdit vs diffusers' StableDiffusionDiffEditPipeline on {report['model']}",
        "",
        f"{report['cases']} rendered scenes, a colour edit of the big object each; {report['steps']} steps, guidance "
        f"{report['guidance_scale']}, edit strength {report['edit_strength']}, mask strength ours "
        f"{report['our_mask_strength']} / diffusers {report['peer_mask_strength']} (its default), same seeds, no "
        f"compositing (no original pixels pasted back); ours decodes only the masked change (latent cells off its mask "
        f"show the decoding of the image's own latents), the row below it decodes the same latents whole, as "
        f"diffusers does. Device: {report['device']} "
        f"({report['device_name']}, {report['torch_threads']} threads). Our Stage II starts from "
        f"{report['our_start']}; diffusers' from {report['peer_start']}.",
        "",
        "| | mask IoU (true object) | edit success | background PSNR (dB) | median s / edit |",
        "|---|---|---|---|---|",
    ]
    for side in SIDES:
        row = s[side]
        seconds = "-" if row["median_seconds"] is None else f"{row['median_seconds']:.3f}"
        lines.append(f"| {LABELS[side]} | {row['iou']:.3f} | {row['success']:.2f} | {row['background_psnr']:.2f} | "
                     f"{seconds} |")
    lines += ["", f"Time ratio ours / diffusers: **{report['time_ratio']:.3f}** (target <= {report['target_time_ratio']}). "
              f"Background PSNR ours / diffusers: {s['ours']['background_psnr'] - s['diffusers']['background_psnr']:+.2f} dB; "
              f"decoding only the masked change instead of the whole latent: "
              f"{s['ours']['background_psnr'] - s['ours_whole_decode']['background_psnr']:+.2f} dB.",
              "", "| source -> target | IoU ours | IoU diffusers | PSNR ours | PSNR ours, whole decoded | PSNR diffusers | "
              "success ours / whole decoded / diffusers |",
              "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        o, w, d = row["ours"], row["ours_whole_decode"], row["diffusers"]
        lines.append(f"| {row['source']} -> {row['target'].split()[2]} | {o['iou']:.3f} | {d['iou']:.3f} | "
                     f"{o['background_psnr']:.2f} | {w['background_psnr']:.2f} | {d['background_psnr']:.2f} | "
                     f"{o['success']} / {w['success']} / {d['success']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
