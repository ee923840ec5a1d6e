"""Inversion, measured (issue #5): a table like PnP-Inversion's (arXiv 2310.01506, Table 1) per image.

For each image -- held-out shapes renders (colour/shape/background combinations the model never saw)
and the photographs under assets/examples/ -- every method inverts and reconstructs it at guidance w:

    VAE encode -> decode                   the ceiling: no inversion can beat the autoencoder
    DDIM inversion (w=1 inversion)         sampled at w: why NTI/NPI exist
    DDIM inversion (w inversion)           inverted at w too: why the pivot uses w = 1
    Negative-prompt inversion              zero optimisation
    Null-text inversion, reference recipe  Mokady et al.: from the empty prompt, 10 iterations every step
    Null-text inversion (ours)             the defaults: from the caption's embedding (NPI), early stop
    Null-text inversion (ours, empty)      the same from the empty prompt: what the start contributes
    Reference cut to 1, 2, 3, 5 iterations the reference's PSNR-vs-iterations curve: its cost at our PSNR
    EDICT, BDIA (fp32, fp64 states)        exact up to float rounding
    Fixed-point inversion                  each inverse step iterated to its fixed point at w (AIDI, ReNoise)
    Direct Inversion                       w = 1 DDIM, the source put back on it every step: exact by construction
    Edit-friendly DDPM inversion           independent noisy states, per-step corrections: exact up to rounding
and an under-described caption ("", "a circle") on the first render at 10 and 50 steps: DDIM vs fixed-point.

Columns: PSNR and SSIM of the reconstruction vs the image (pixels), latent MSE vs VAE.encode(image), UNet
passes (inversion; backward passes of NTI; reconstruction), inversion seconds, and those seconds as a
ratio to DDIM inversion's on the same image in the same run (so the ratio is about the method, not the
machine). NTI's cost is also given in passes, which a busy shared CPU cannot disturb.

    python bench/inversion.py [--steps 50] [--guidance 7.5] [--renders 2] [--photos 3] [--device cpu]
                              [--recipes 3,4,6]   (recipe numbers; DDIM inversion is always added)
                              [--keep]            (keep the earlier run's rows not rerun) [--underdescribed 0]
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
from studio.events import InversionResult  # noqa: E402
from studio.inversion import InversionSpec  # noqa: E402
from studio.shapes.render import HELD_OUT, Scene, make_object, render  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
# The shapes model knows only its own words: each photo gets the nearest caption it can read.
PHOTOS = (("astronaut.jpg", "a big white circle on a black background"),
          ("rocket.jpg", "a big white triangle on a blue background"),
          ("coffee.jpg", "a big white circle on a black background"))
REFERENCE_RECIPE = {"method": "null_text", "null_start": "empty", "inner_steps": 10, "tolerance": 0.0,
                    "min_improvement": 0.0}  # Mokady et al.'s 50 x 10, started from the empty prompt, no early stop
TRUNCATED = (1, 2, 3, 5)  # the reference recipe cut to k iterations per step: its PSNR-vs-iterations curve


def cut(iterations: int) -> str:
    return f"NTI reference cut to {iterations} iteration{'s' if iterations > 1 else ''}"


# (label, InversionSpec overrides); the guidance scale comes from --guidance
RECIPES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("DDIM inversion (w=1 inversion)", {"method": "ddim"}),
    ("DDIM inversion (w inversion)", {"method": "ddim", "inversion_guidance": None}),
    ("Negative-prompt inversion", {"method": "negative_prompt"}),
    ("NTI reference (10 iterations, no early stop)", REFERENCE_RECIPE),
    ("NTI (ours: started from NPI, early stop)", {"method": "null_text"}),
    ("NTI (ours, started from the empty prompt)", {"method": "null_text", "null_start": "empty"}),
    *((cut(k), {**REFERENCE_RECIPE, "inner_steps": k}) for k in TRUNCATED),
    ("EDICT (fp32)", {"method": "edict"}),
    ("EDICT (fp64 states)", {"method": "edict", "float64": True}),
    ("BDIA (fp32)", {"method": "bdia"}),
    ("BDIA (fp64 states)", {"method": "bdia", "float64": True}),
    ("Fixed-point inversion (3 iterations, at w)", {"method": "fixed_point"}),
    ("Direct Inversion (exact by construction)", {"method": "direct"}),
    ("Edit-friendly DDPM inversion (seed 0)", {"method": "ddpm"}),
)
# An image the caption under-describes: the embedded model settles colours and layout near t ~ 800, where DDIM
# inversion's out(x_prev) ~ out(x_t) fails with few steps (issue #20: 4 dB at 10 steps)
UNDER_CAPTIONS = ("", "a circle")
UNDER_STEPS = (10, 50)
UNDER_METHODS = (("DDIM inversion (w=1 inversion)", {"method": "ddim"}),
                 ("Fixed-point inversion (3 iterations, at w)", {"method": "fixed_point"}))
REFERENCE, OURS = RECIPES[3][0], RECIPES[4][0]
CURVE = (*(cut(k) for k in TRUNCATED), REFERENCE)  # the reference's PSNR-vs-iterations curve, cheapest first
SAME_RECONSTRUCTION_DB = 0.1  # "at the same reconstruction": ours at most this far below the reference's PSNR


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
    parser.add_argument("--keep", action="store_true",
                        help="keep the rows of the existing results not rerun (same steps and guidance): a partial rerun")
    parser.add_argument("--underdescribed", type=int, default=1, help="1: measure the under-described caption case")
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


def underdescribed(engine: Engine, image: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """DDIM vs fixed-point inversion of `image` under captions that do not describe it, at UNDER_STEPS steps."""
    rows = []
    for caption in UNDER_CAPTIONS:
        for steps in UNDER_STEPS:
            ddim_seconds = None
            for label, overrides in UNDER_METHODS:
                result = run(engine, InversionSpec(caption, steps=steps, guidance_scale=args.guidance, **overrides), image)
                ddim_seconds = ddim_seconds or result.settings["inversion_seconds"]
                rows.append({"caption": caption, "steps": steps, "ceiling": result.settings["vae_psnr"],
                             **row(label, result, ddim_seconds)})
                print(f"  under-described {caption!r}, {steps} steps, {label}: {rows[-1]['psnr']:.2f} dB", flush=True)
    return rows


def underdescribed_markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## An under-described caption: DDIM vs fixed-point inversion", "",
             "The first render inverted under a caption that does not describe it, sampled back at w (on \"\" CFG is "
             "neutral). DDIM inversion evaluates the network at the state it has (out(x_prev) ~ out(x_t)), which fails "
             "where the model settles colours and layout (t ~ 800) with few steps; fixed-point inversion iterates each "
             "step to the state the sampler really maps onto x_prev.", "",
             "| caption | steps | method | PSNR (dB) | ceiling (dB) | SSIM | UNet passes (inv.) | seconds | × DDIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| \"{r['caption']}\" | {r['steps']} | {r['method']} | {r['psnr']:.2f} | {r['ceiling']:.2f} | "
                     f"{r['ssim']:.4f} | {r['inversion_unet_passes']} | {r['seconds']:.2f} | {r['seconds_vs_ddim']:.2f} |")
    return [*lines, ""]


def merged(previous: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """`report` with the rows of `previous` (an earlier run at the same steps and guidance) it did not rerun."""
    if (previous.get("steps"), previous.get("guidance")) != (report["steps"], report["guidance"]):
        return report
    for name, measured in previous.get("images", {}).items():
        if name not in report["images"]:
            report["images"][name] = measured
            continue
        rerun = {r["method"] for r in report["images"][name]["rows"]}
        kept = [r for r in measured["rows"] if r["method"] not in rerun]
        # rows in the order of RECIPES; each row's × DDIM is against the DDIM row of its own run
        order = {label: index for index, (label, _) in enumerate(RECIPES)}
        rows = [*kept, *report["images"][name]["rows"]]
        report["images"][name]["rows"] = sorted(rows, key=lambda r: order.get(r["method"], len(order)))
    if not report.get("underdescribed"):
        report["underdescribed"] = previous.get("underdescribed", [])
    report["nti_cost"] = nti_cost(report["images"])
    return report


def work(r: dict) -> float:
    """UNet work of an inversion: forward passes + 2 x backward passes (a backward pass costs about two
    forward ones, the usual estimate)."""
    return r["inversion_unet_passes"] + 2 * r["backward_passes"]


def equal_reconstruction_peer(rows: dict[str, dict], ours: dict) -> tuple[str, bool]:
    """The reference recipe at our reconstruction: the fewest iterations per step (its curve, CURVE) whose
    PSNR reaches ours (within SAME_RECONSTRUCTION_DB, the allowance ours gets against the reference), and
    whether any did; where none does, the full recipe (which then costs more for less)."""
    for label in CURVE:
        if label in rows and rows[label]["psnr"] >= ours["psnr"] - SAME_RECONSTRUCTION_DB:
            return label, True
    return REFERENCE, False


def nti_cost(per_image: dict[str, dict]) -> dict[str, Any]:
    """Ours vs the reference recipe (50 x 10), per image and over all images: seconds, work (forward +
    2 x backward passes) and the PSNR difference; and ours vs the reference recipe cut to the fewest
    iterations per step that reach our PSNR (cost at equal reconstruction)."""
    compared = {}
    for name, measured in per_image.items():
        rows = {r["method"]: r for r in measured["rows"]}
        if not {OURS, REFERENCE} <= rows.keys():
            continue
        ours, reference = rows[OURS], rows[REFERENCE]
        peer, reached = equal_reconstruction_peer(rows, ours)
        compared[name] = {
            "ours": ours, "reference": reference, "peer": rows[peer],
            "work_ratio": work(ours) / work(reference), "seconds_ratio": ours["seconds"] / reference["seconds"],
            "psnr_difference_db": ours["psnr"] - reference["psnr"], "ours_psnr": ours["psnr"],
            "reference_psnr": reference["psnr"],
            "same_reconstruction": ours["psnr"] >= reference["psnr"] - SAME_RECONSTRUCTION_DB,
            "equal_psnr_peer": peer, "equal_psnr_peer_reached": reached,
            "work_ratio_at_equal_psnr": work(ours) / work(rows[peer]),
        }
    if not compared:
        return {}
    pairs = list(compared.values())

    def total(side: str, measure: Any) -> float:
        return sum(measure(c[side]) for c in pairs)

    def seconds(r: dict) -> float:
        return r["seconds"]

    return {
        "seconds_ratio": total("ours", seconds) / total("reference", seconds),
        "passes_ratio": total("ours", work) / total("reference", work),
        "psnr_difference_db": float(np.mean([c["psnr_difference_db"] for c in pairs])),
        "images": len(pairs),
        "same_reconstruction_images": sum(c["same_reconstruction"] for c in pairs),
        "passes_ratio_at_equal_psnr": total("ours", work) / total("peer", work),
        "seconds_ratio_at_equal_psnr": total("ours", seconds) / total("peer", seconds),
        "per_image": {name: {k: v for k, v in c.items() if k not in ("ours", "reference", "peer")}
                      for name, c in compared.items()},
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
    lines += (targets_markdown(report["images"]) + nti_cost_markdown(report["nti_cost"])
              + underdescribed_markdown(report.get("underdescribed", [])) + [NEW_METHODS_NOTE, ""])
    return "\n".join(lines)


DDIM, NPI = RECIPES[0][0], RECIPES[2][0]
NEW_METHODS_NOTE = (
    "Fixed-point, Direct and DDPM inversion (issue #20): fixed-point inversion is reconstructed by the plain DDIM "
    "sampler at w, so its PSNR measures the inversion; Direct Inversion's reconstruction is exact by construction (the "
    "source is put back on its w = 1 trajectory after every step: latent MSE 0, PSNR = the ceiling), so its row "
    "measures nothing but its cost, and what it is worth shows in edits (bench/edit_bench.py); edit-friendly DDPM "
    "inversion's corrections make its reconstruction exact up to float rounding on the renders (latent MSE ~1e-12), "
    "but on the photographs at w = 7.5 the rounding grows along the sampler (latent MSE 0.4-1.9, 1-4 dB under the "
    "ceiling). At w = 7.5 fixed-point inversion's 3 iterations leave \"a circle\" at 10 steps at 16 dB (DDIM 7 dB); "
    "at 50 steps it reaches the ceiling where DDIM gives 11 dB.")


def targets_markdown(per_image: dict[str, dict]) -> list[str]:
    """Per image: NTI against the VAE ceiling (target: within 0.5 dB) and where NPI lands between DDIM
    inversion sampled at w and NTI (target: between them at DDIM's cost)."""
    lines = ["## Targets per image: NTI vs the VAE ceiling, NPI between DDIM and NTI", "",
             "| image | ceiling (dB) | DDIM, sampled at w | NPI | NTI (ours) | NTI − ceiling | NTI within 0.5 dB "
             "| NPI between DDIM and NTI | NPI seconds × DDIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, measured in per_image.items():
        rows = {r["method"]: r for r in measured["rows"]}
        if not {DDIM, NPI, OURS} <= rows.keys():
            continue
        ceiling, ddim, npi, nti = measured["ceiling"]["psnr"], rows[DDIM]["psnr"], rows[NPI]["psnr"], rows[OURS]["psnr"]
        place = "yes" if ddim <= npi <= nti else ("above NTI" if npi > nti else "below DDIM")
        lines.append(f"| {name} | {ceiling:.2f} | {ddim:.2f} | {npi:.2f} | {nti:.2f} | {nti - ceiling:+.2f} | "
                     f"{'yes' if nti >= ceiling - 0.5 else 'no'} | {place} | {rows[NPI]['seconds_vs_ddim']:.2f} |")
    return [*lines, ""] if len(lines) > 4 else []


HOW = ("How ours gets there (studio/inversion/null_text.py): the null embedding starts from the caption's "
       "embedding, where negative-prompt inversion already lands (with O = c the guided step is the w = 1 step that "
       "made the pivot, whatever w), so the optimisation only corrects DDIM inversion's own error, and each step "
       "starts from the previous step's embedding; a step stops as "
       f"soon as L_rec is under the tolerance ({InversionSpec().tolerance:g}), and the forward pass that measured it "
       "is the step's prediction; the caption's half of CFG is computed once per step (no gradient) and reused by "
       "every iteration instead of being batched with the null half in each of them, where autograd would carry "
       "it through every backward pass too; the best iterate is kept. The reference recipe starts from the empty "
       "prompt's embedding and runs all 10 iterations at every step. \"Ours, started from the empty prompt\" shows "
       "what the start contributes.")


def nti_cost_markdown(cost: dict[str, Any]) -> list[str]:
    if not cost:
        return []
    allowance = SAME_RECONSTRUCTION_DB
    lines = ["## Null-text inversion: ours vs the reference recipe (50 steps × 10 iterations)", "",
             f"Work = forward + 2 × backward UNet passes. \"Same reconstruction\": ours at most {allowance} dB "
             "below the reference. \"Reference at our PSNR\": the reference recipe cut to the fewest iterations "
             f"per step (1, 2, 3, 5, 10) whose PSNR reaches ours within {allowance} dB — where none does, the full "
             "recipe (marked *not reached*).", "",
             "| image | ours (dB) | reference (dB) | ours − ref. | same reconstruction | work × ref. "
             "| seconds × ref. | reference at our PSNR | work × that |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in cost["per_image"].items():
        peer = c["equal_psnr_peer"] + ("" if c["equal_psnr_peer_reached"] else " (not reached)")
        lines.append(f"| {name} | {c['ours_psnr']:.2f} | {c['reference_psnr']:.2f} | {c['psnr_difference_db']:+.2f} "
                     f"| {'yes' if c['same_reconstruction'] else 'no'} | {c['work_ratio']:.2f} "
                     f"| {c['seconds_ratio']:.2f} | {peer} | {c['work_ratio_at_equal_psnr']:.2f} |")
    same = cost["same_reconstruction_images"] == cost["images"]
    met = cost["passes_ratio"] <= 1 / 3 and same
    lines += ["",
              f"- All {cost['images']} images: work {cost['passes_ratio']:.2f} ×, seconds "
              f"{cost['seconds_ratio']:.2f} × the reference's (same run); PSNR {cost['psnr_difference_db']:+.2f} dB "
              f"on average; same reconstruction on {cost['same_reconstruction_images']} of {cost['images']}.",
              f"- Against the reference cut to our PSNR: work {cost['passes_ratio_at_equal_psnr']:.2f} ×, "
              f"seconds {cost['seconds_ratio_at_equal_psnr']:.2f} ×.",
              f"- Target (≤ 1/3 of the reference's cost at the same reconstruction): {'met' if met else 'missed'} "
              f"(work {cost['passes_ratio']:.2f} ×{'' if same else ', reconstruction not the same on every image'}).",
              "", HOW, ""]
    return lines


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
              "guidance": args.guidance, "images": per_image, "nti_cost": nti_cost(per_image),
              "underdescribed": underdescribed(engine, chosen[0][1], args) if args.underdescribed else []}
    if args.keep and (args.out / "inversion.json").exists():
        report = merged(json.loads((args.out / "inversion.json").read_text()), report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inversion.json").write_text(json.dumps(report, indent=2))
    (args.out / "inversion.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
