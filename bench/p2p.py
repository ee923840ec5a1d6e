"""Prompt-to-Prompt, measured (issue #7) on the embedded model with its judges.

(a) word swap "circle -> square" on "a big red circle on a blue background": the edited image's shape
    flips (pixel judge) while the background colour, the object colour and its position (centroid
    within 8 px of the source object's) are kept -- P2P vs plain regeneration with the target prompt
    from the same seed (no attention control), same seeds;
(b) local blend on the same swap: PSNR of the edited image vs the source outside the blend mask, raw
    and outside the mask grown by one latent cell (the VAE decoder spreads a latent cell's change
    to its neighbours' pixels);
(c) re-weighting "red" in "a big (red:w) circle on a green background": fraction of red pixels per weight;
(d) cost: seconds per sampling step of P2P (maps, local blend) vs plain CFG of the same UNet batch
    (2 images x [uncond, cond] = 4), best of `--repeats`, and peak device memory on CUDA.

    python bench/p2p.py [--seeds 24] [--steps 10] [--model DIR] [--device cuda]
Writes bench/results/p2p.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.editing.p2p import P2PSpec  # noqa: E402
from studio.events import P2PResult  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.events import Result  # noqa: E402
from studio.metrics import psnr  # noqa: E402
from studio.shapes.judge import judge_pixels  # noqa: E402
from studio.shapes.vocabulary import COLOURS  # noqa: E402
from studio.specs import GenerateSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE, TARGET = "a big red circle on a blue background", "a big red square on a blue background"
REWEIGHT_PROMPT = "a big {} circle on a green background"
# shapes-sd's objects are laid out in the first steps: short windows let the shape change (see README)
WINDOWS = {"cross_stop": 0.2, "self_stop": 0.2}
POSITION_TOLERANCE = 8.0  # pixels of a 128 px image between the source's and the edit's object centroids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--weights", default="-1,0,1,2,4", help="(c) re-weights of 'red'")
    parser.add_argument("--repeats", type=int, default=3, help="(d) timing repeats (best kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def last(events) -> Result:
    *_, result = events
    return result


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def swap_outcome(source: np.ndarray, edited: np.ndarray) -> dict:
    """Shape flipped; background, colour and position kept (pixel judge, largest objects)."""
    before, after = judge_pixels(source), judge_pixels(edited)
    if not before.objects or not after.objects:
        return {"flipped": False, "preserved": False}
    a, b = before.objects[0], after.objects[0]
    flipped = a.shape == "circle" and b.shape == "square"
    preserved = (before.background == after.background and a.colour == b.colour
                 and float(np.linalg.norm(centroid(a.mask) - centroid(b.mask))) <= POSITION_TOLERANCE)
    return {"flipped": flipped, "preserved": preserved}


def word_swap(engine: Engine, seeds: list[int], steps: int) -> dict:
    rows = []
    for seed in seeds:
        edit = last(engine.p2p(P2PSpec(SOURCE, TARGET, edit="word swap", seed=seed, steps=steps, **WINDOWS)))
        plain = last(engine.generate(GenerateSpec(TARGET, seed=seed, steps=steps)))
        source = np.asarray(edit.images[0])
        rows.append({"seed": seed, "p2p": swap_outcome(source, np.asarray(edit.images[1])),
                     "plain": swap_outcome(source, np.asarray(plain.images[0]))})

    def rate(method: str, key: str) -> float:
        return float(np.mean([r[method][key] and (key == "flipped" or r[method]["flipped"]) for r in rows]))

    return {"rows": rows, **{f"{m}_{k}": rate(m, k) for m in ("p2p", "plain") for k in ("flipped", "preserved")}}


def local_blend(engine: Engine, seeds: list[int], steps: int) -> dict:
    rows = []
    for seed in seeds:
        result: P2PResult = last(engine.p2p(P2PSpec(SOURCE, TARGET, edit="word swap", seed=seed, steps=steps,
                                                    blend_words=("circle", "square"), **WINDOWS)))
        source, edited, mask = np.asarray(result.images[0]), np.asarray(result.images[1]), result.mask
        cell = engine.size_multiple
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(mask[None].astype(np.float32)), 2 * cell + 1, 1, cell)[0].numpy() > 0
        rows.append({
            "seed": seed, "mask_fraction": float(mask.mean()),
            "psnr_outside": psnr(source, edited, ~mask) if (~mask).any() else None,
            "psnr_outside_grown": psnr(source, edited, ~grown) if (~grown).any() else None,
            "flipped": swap_outcome(source, edited)["flipped"],
        })
    measured = [r for r in rows if r["psnr_outside_grown"] is not None]  # a mask over everything has no outside
    return {"rows": rows, "measured": len(measured),
            "min_psnr_outside_grown": min((r["psnr_outside_grown"] for r in measured), default=float("nan")),
            "mean_psnr_outside": float(np.mean([r["psnr_outside"] for r in measured])) if measured else float("nan"),
            "flipped": float(np.mean([r["flipped"] for r in rows]))}


def red_fraction(image) -> float:
    pixels = np.asarray(image).astype(np.float32)
    return float((np.linalg.norm(pixels - np.array(COLOURS["red"], np.float32), axis=-1) < 80).mean())


def reweighting(engine: Engine, seeds: list[int], steps: int, weights: list[float]) -> dict:
    rows = []
    for weight in weights:
        fractions = [red_fraction(last(engine.p2p(P2PSpec(REWEIGHT_PROMPT.format("red"), REWEIGHT_PROMPT.format(f"(red:{weight:g})"),
                                                          seed=seed, steps=steps))).images[1]) for seed in seeds]
        rows.append({"weight": weight, "red_fraction": float(np.mean(fractions))})
    values = [r["red_fraction"] for r in rows]
    return {"rows": rows, "monotonic": all(a < b for a, b in zip(values, values[1:]))}


def cost(engine: Engine, steps: int, repeats: int, size: int | None = None) -> dict:
    """Seconds per sampling step (the engine's own sampling timing / steps) and peak memory, at `size`
    (default: the model's native size)."""
    device = engine.device

    def measure(run) -> tuple[float, int | None, Result]:
        best, peak = float("inf"), None
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            result = last(run())
            best = min(best, result.timings["sampling"] / steps)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated()
        return best, peak, result

    plain = lambda: engine.generate(GenerateSpec(SOURCE, seed=0, steps=steps, batch_size=2, width=size, height=size,  # noqa: E731
                                                 preview_every=steps + 1))
    edit = lambda: engine.p2p(P2PSpec(SOURCE, TARGET, edit="word swap", seed=0, steps=steps, maps_every=steps + 1,  # noqa: E731
                                      blend_words=("circle", "square"), size=size, **WINDOWS))
    last(plain())  # warm-up
    plain_seconds, plain_peak, _ = measure(plain)
    edit_seconds, edit_peak, edit_result = measure(edit)
    return {
        "cfg_batch4_seconds_per_step": plain_seconds, "p2p_seconds_per_step": edit_seconds,
        "p2p_attention_maps_bytes": edit_result.settings["attention_maps_bytes"],
        "ratio": edit_seconds / plain_seconds,
        "cfg_peak_bytes": plain_peak, "p2p_peak_bytes": edit_peak,
        "peak_ratio": None if plain_peak is None else edit_peak / plain_peak,
    }


def markdown(report: dict) -> str:
    swap, blend, weights, timing = report["word_swap"], report["local_blend"], report["reweighting"], report["cost"]
    lines = [
        f"# Prompt-to-Prompt on {report['model']} ({report['device']}, {report['steps']} DDIM steps, {report['seeds']} seeds)",
        "", "Produced by `python bench/p2p.py` (see its docstring).", "",
        f"## (a) Word swap \"circle -> square\" ({report['windows']})", "",
        "| method | shape flipped | flipped and background, colour, position kept |", "|---|---|---|",
        f"| P2P (attention control) | {swap['p2p_flipped']:.0%} | {swap['p2p_preserved']:.0%} |",
        f"| plain regeneration, same seed | {swap['plain_flipped']:.0%} | {swap['plain_preserved']:.0%} |",
        "", "## (b) Local blend (words circle, square)", "",
        f"PSNR outside the mask grown by one latent cell: min {blend['min_psnr_outside_grown']:.1f} dB; "
        f"raw outside the mask: mean {blend['mean_psnr_outside']:.1f} dB ({blend['measured']} of {len(blend['rows'])} seeds "
        f"with pixels outside the mask); shape flipped {blend['flipped']:.0%}.", "",
        "## (c) Re-weighting \"red\"", "", "| weight | red pixel fraction |", "|---|---|",
        *(f"| {r['weight']:g} | {r['red_fraction']:.4f} |" for r in weights["rows"]),
        f"\nMonotonic: {weights['monotonic']}.", "",
        "## (d) Cost per step", "",
        f"P2P {timing['p2p_seconds_per_step'] * 1000:.1f} ms vs CFG batch 4 {timing['cfg_batch4_seconds_per_step'] * 1000:.1f} ms: "
        f"**{timing['ratio']:.2f}x**"
        + (f"; peak memory {timing['p2p_peak_bytes'] / 2**20:.0f} MiB vs {timing['cfg_peak_bytes'] / 2**20:.0f} MiB "
           f"({timing['peak_ratio']:.2f}x)" if timing["peak_ratio"] is not None else "; peak memory: measured on CUDA only")
        + f". Attention maps held by P2P: {timing['p2p_attention_maps_bytes'] / 1024:.0f} KiB (running means per "
          "resolution for the two images, never a per-step history).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    engine = Engine(args.model, device=args.device)
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    report = {
        "model": engine.model_name, "device": str(engine.device), "steps": args.steps, "seeds": args.seeds,
        "windows": WINDOWS,
        "word_swap": word_swap(engine, seeds, args.steps),
        "local_blend": local_blend(engine, seeds[: max(1, args.seeds // 3)], args.steps),
        "reweighting": reweighting(engine, seeds[: max(1, args.seeds // 6)], args.steps,
                                   [float(w) for w in args.weights.split(",")]),
        "cost": cost(engine, args.steps, args.repeats),
    }
    report["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "p2p.json").write_text(json.dumps(report, indent=2))
    (args.out / "p2p.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    print(markdown(main()))
