"""Inversion, measured (issue #5): a table like PnP-Inversion's (arXiv 2310.01506, Table 1) per image.

For each image -- held-out shapes renders (colour/shape/background combinations the model never saw)
and the photographs under assets/examples/ -- every method inverts and reconstructs it at guidance w:

    VAE encode -> decode                   the ceiling: no inversion can beat the autoencoder
    DDIM inversion (w=1 inversion)         sampled at w: why NTI/NPI exist
    DDIM inversion (w inversion)           inverted at w too: why the pivot uses w = 1
    Negative-prompt inversion              zero optimisation
    Null-text inversion, reference recipe  10 inner iterations every step, no early stop
    Null-text inversion (ours)             early stop at the tolerance, best iterate, warm start
    Null-text inversion (ours + stall)     also stop a step when two iterations gain < 5%
    EDICT, BDIA (fp32, fp64 states)        exact up to float rounding

Columns: PSNR and SSIM of the reconstruction vs the image (pixels), latent MSE vs VAE.encode(image), UNet
passes (inversion; backward passes of NTI; reconstruction), inversion seconds, and those seconds as a
ratio to DDIM inversion's on the same image in the same run (so the ratio is about the method, not the
machine). NTI's cost is also given in passes, which a busy shared CPU cannot disturb.

    python bench/inversion.py [--steps 50] [--guidance 7.5] [--renders 2] [--photos 3] [--device cpu]
Writes bench/results/inversion.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import device_description  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.inversion import InversionResult, InversionSpec  # noqa: E402
from studio.shapes.render import HELD_OUT, Scene, make_object, render  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
# The shapes model knows only its own words: each photo gets the nearest caption it can read.
PHOTOS = (("astronaut.jpg", "a big white circle on a black background"),
          ("rocket.jpg", "a big white triangle on a blue background"),
          ("coffee.jpg", "a big white circle on a black background"))
# (label, InversionSpec overrides); the guidance scale comes from --guidance
RECIPES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("DDIM inversion (w=1 inversion)", {"method": "ddim"}),
    ("DDIM inversion (w inversion)", {"method": "ddim", "inversion_guidance": None}),
    ("Negative-prompt inversion", {"method": "negative_prompt"}),
    ("NTI reference (10 iterations, no early stop)", {"method": "null_text", "tolerance": 0.0, "min_improvement": 0.0}),
    ("NTI (ours: early stop, best iterate)", {"method": "null_text"}),
    ("NTI (ours + stop when stalled, 5%)", {"method": "null_text", "min_improvement": 0.05}),
    ("EDICT (fp32)", {"method": "edict"}),
    ("EDICT (fp64 states)", {"method": "edict", "float64": True}),
    ("BDIA (fp32)", {"method": "bdia"}),
    ("BDIA (fp64 states)", {"method": "bdia", "float64": True}),
)
REFERENCE, OURS = RECIPES[3][0], RECIPES[4][0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--renders", type=int, default=2, help="held-out shapes renders")
    parser.add_argument("--photos", type=int, default=3, help="photographs from assets/examples")
    parser.add_argument("--recipes", default="", help="comma-separated recipe numbers (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def images(renders: int, photos: int) -> list[tuple[str, Any, str]]:
    """(name, image, caption): held-out renders first, then photographs."""
    chosen = []
    for colour, shape, background in HELD_OUT[:renders]:
        scene = Scene(background, (make_object(shape, colour, "big", "left", np.random.default_rng(0)),))
        chosen.append((f"render: {colour} {shape} on {background}", render(scene).image,
                       f"a big {colour} {shape} on a {background} background"))
    for file, caption in PHOTOS[:photos]:
        chosen.append((f"photo: {file}", Image.open(EXAMPLES / file), caption))
    return chosen


def run(engine: Engine, spec: InversionSpec, image: Any) -> InversionResult:
    *_, result = engine.invert(spec, image)
    return result


def row(label: str, result: InversionResult, ddim_seconds: float) -> dict[str, Any]:
    s = result.settings
    return {"method": label, "psnr": s["psnr"], "ssim": s["ssim"], "latent_mse": s["latent_mse"],
            "inversion_unet_passes": s["inversion_unet_passes"], "backward_passes": s["backward_passes"],
            "reconstruction_unet_passes": s["reconstruction_unet_passes"], "seconds": s["inversion_seconds"],
            "seconds_vs_ddim": s["inversion_seconds"] / ddim_seconds}


def measure_image(engine: Engine, image: Any, caption: str, args: argparse.Namespace,
                  recipes: list[tuple[str, dict]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    ddim_seconds = None
    ceiling = None
    for label, overrides in recipes:
        options = {"inversion_guidance": 1.0, **overrides}
        if options["inversion_guidance"] is None:
            options["inversion_guidance"] = args.guidance
        spec = InversionSpec(caption, steps=args.steps, guidance_scale=args.guidance, **options)
        if spec.float64 and engine.device.type != "cpu":
            continue
        result = run(engine, spec, image)
        if ddim_seconds is None:  # the first recipe is DDIM inversion: the peer of every ratio
            ddim_seconds = result.settings["inversion_seconds"]
            ceiling = {"psnr": result.settings["vae_psnr"], "ssim": result.settings["vae_ssim"]}
        rows.append(row(label, result, ddim_seconds))
        print(f"  {label}: {rows[-1]['psnr']:.2f} dB, latent MSE {rows[-1]['latent_mse']:.3g}, "
              f"{rows[-1]['seconds']:.1f} s", flush=True)
    return {"caption": caption, "ceiling": ceiling, "rows": rows}


def nti_cost(per_image: dict[str, dict]) -> dict[str, Any]:
    """Ours vs the reference recipe over all images: seconds and passes (a backward pass counted as two
    forward passes, the usual estimate), and the PSNR difference."""
    pairs = [(next(r for r in m["rows"] if r["method"] == OURS), next(r for r in m["rows"] if r["method"] == REFERENCE))
             for m in per_image.values() if {OURS, REFERENCE} <= {r["method"] for r in m["rows"]}]
    if not pairs:
        return {}

    def work(r: dict) -> float:
        return r["inversion_unet_passes"] + 2 * r["backward_passes"]

    return {
        "seconds_ratio": sum(o["seconds"] for o, _ in pairs) / sum(r["seconds"] for _, r in pairs),
        "passes_ratio": sum(work(o) for o, _ in pairs) / sum(work(r) for _, r in pairs),
        "psnr_difference_db": float(np.mean([o["psnr"] - r["psnr"] for o, r in pairs])),
        "images": len(pairs),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Inversion: reconstruction and cost per method",
        "",
        f"Model {report['model']} on {report['device']['device_name'] or report['device']['device']} "
        f"({report['device']['torch_threads']} thread(s)); {report['steps']} DDIM steps (trailing, zero terminal "
        f"SNR), reconstructions sampled at w = {report['guidance']}. `python bench/inversion.py`. Seconds are "
        "inversion only (NTI: pivot + optimisation); × DDIM is the ratio to DDIM inversion's seconds on the same "
        "image in the same run. UNet passes are batched calls (CFG's two branches count once).",
        "",
    ]
    for name, measured in report["images"].items():
        ceiling = measured["ceiling"]
        lines += [f"## {name}", "", f"Caption: \"{measured['caption']}\"", "",
                  "| method | PSNR (dB) | SSIM | latent MSE | UNet passes (inv.) | backward | UNet passes (rec.) "
                  "| seconds | × DDIM |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| VAE encode → decode (ceiling) | {ceiling['psnr']:.2f} | {ceiling['ssim']:.4f} | 0 | 0 | 0 | 0 | "
                  "– | – |"]
        for r in measured["rows"]:
            lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['latent_mse']:.3g} | "
                         f"{r['inversion_unet_passes']} | {r['backward_passes']} | {r['reconstruction_unet_passes']} | "
                         f"{r['seconds']:.2f} | {r['seconds_vs_ddim']:.2f} |")
        lines.append("")
    cost = report["nti_cost"]
    if cost:
        lines += ["## Null-text inversion: ours vs the reference recipe (all images)", "",
                  f"- seconds: {cost['seconds_ratio']:.2f} × the reference's (same run)",
                  f"- work (forward passes + 2 × backward passes): {cost['passes_ratio']:.2f} × the reference's",
                  f"- PSNR difference (ours − reference), mean over {cost['images']} images: "
                  f"{cost['psnr_difference_db']:+.2f} dB", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    engine = Engine(args.model, device=args.device)
    recipes = list(RECIPES)
    if args.recipes:
        recipes = [RECIPES[int(i)] for i in args.recipes.split(",")]
        if recipes[0][1]["method"] != "ddim":
            recipes.insert(0, RECIPES[0])  # DDIM inversion is every ratio's peer
    chosen = images(args.renders, args.photos)
    run(engine, InversionSpec(chosen[0][2], steps=2), chosen[0][1])  # warm-up: first calls allocate and load kernels
    per_image = {}
    for name, image, caption in chosen:
        print(name, flush=True)
        per_image[name] = measure_image(engine, image, caption, args, recipes)
    report = {"model": engine.model_name, "device": device_description(engine.device), "steps": args.steps,
              "guidance": args.guidance, "images": per_image, "nti_cost": nti_cost(per_image)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inversion.json").write_text(json.dumps(report, indent=2))
    (args.out / "inversion.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
