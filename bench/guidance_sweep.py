"""Global guidance, measured (issue #4) on the embedded model (whatever `Engine()` loads by default).

(a) weight sweep: prompt "a big red circle" plus the condition "a blue background" at weights
    0..8 -> fraction of images whose judged background is blue (expected to rise monotonically);
(b) negative condition: prompt "a big circle on a white background" (no colour) with the condition
    "red" at weight 0 and below -> fraction of images whose largest object is red (expected to fall);
(c) classifier guidance: prompt "a big circle on a blue background" with target "red object" at
    strengths 0.. -> fraction of red objects, same seeds, and the cost per step of the classifier
    gradient beside the UNet's (CFG) cost.

Each setting generates the same samples (same seeds, batches of up to 8); every image is judged by
the pixel check and, when the model ships a classifier, by the noisy-latent classifier at t = 0 on
its VAE re-encoding. Writes bench/results/guidance_sweep.{json,md,png}.

    python bench/guidance_sweep.py [--samples 32] [--steps 25] [--model DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.engine import Engine  # noqa: E402
from studio.events import Result  # noqa: E402
from studio.plots import line_chart, side_by_side  # noqa: E402
from studio.shapes.judge import Judgement, judge_latents, judge_pixels  # noqa: E402
from studio.specs import BATCH, ClassifierGuidanceSpec, Condition, GenerateSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP_PROMPT, SWEEP_CONDITION, SWEEP_BACKGROUND = "a big red circle", "a blue background", "blue"
NEGATIVE_PROMPT, NEGATIVE_CONDITION, NEGATIVE_COLOUR = "a big circle on a white background", "red", "red"
CLASSIFIER_PROMPT, CLASSIFIER_TARGET, CLASSIFIER_COLOUR = "a big circle on a blue background", "red object", "red"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--samples", type=int, default=32, help="images per setting (same seeds for every setting)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="the prompt's own weight")
    parser.add_argument("--weights", type=_floats, default=_floats("0,1,2,4,6,8"), help="(a) condition weights")
    parser.add_argument("--negative-weights", type=_floats, default=_floats("0,-2,-4,-6"), help="(b) weights of 'red'")
    parser.add_argument("--strengths", type=_floats, default=_floats("0,2,5,10,20"), help="(c) classifier strengths")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for guidance_sweep.{json,md,png}")
    return parser.parse_args(argv)


class Judge:
    """Judges every image twice: pixels, and the model's classifier (when it has one) on the re-encoded latents."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __call__(self, result: Result) -> dict[str, list[Judgement]]:
        images = (result.pixels * 255).round().astype(np.uint8)  # (B, H, W, 3)
        judged = {"pixels": [judge_pixels(image) for image in images]}
        model = self.engine.model
        if model.classifier is not None:
            with torch.no_grad():
                x = torch.from_numpy(result.pixels).permute(0, 3, 1, 2).to(model.device, model.dtype) * 2 - 1
                latents = model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor
            judged["classifier"] = judge_latents(model.classifier.network, latents.float(), t=0)
        return judged


def run_setting(engine: Engine, judge: Judge, samples: int, **spec_fields) -> tuple[dict[str, list[Judgement]], list[dict]]:
    """`samples` images of one setting, sample k with seed k (the same for every setting), in batches of up to 8:
    a batch with seed s draws its items from seeds s, s + 1, ..."""
    judged: dict[str, list[Judgement]] = {}
    settings = []
    batch = int(BATCH.high)
    for start in range(0, samples, batch):
        spec = GenerateSpec(seed=start, batch_size=min(batch, samples - start), **spec_fields)
        result = [event for event in engine.generate(spec) if isinstance(event, Result)][-1]
        for name, judgements in judge(result).items():
            judged.setdefault(name, []).extend(judgements)
        settings.append(result.settings)
    return judged, settings


def background_rate(judgements: list[Judgement], colour: str) -> float:
    return sum(j.background == colour for j in judgements) / len(judgements)


def object_rate(judgements: list[Judgement], colour: str) -> float:
    """Fraction of images whose largest object has `colour` (no object counts as not)."""
    return sum(bool(j.objects) and j.objects[0].colour == colour for j in judgements) / len(judgements)


def _rates(judged: dict[str, list[Judgement]], rate, colour: str) -> dict[str, float]:
    return {name: rate(judgements, colour) for name, judgements in judged.items()}


def monotone(values: list[float], rising: bool) -> bool:
    pairs = list(zip(values, values[1:]))
    return all(b >= a for a, b in pairs) if rising else all(b <= a for a, b in pairs)


def sweep(engine: Engine, args: argparse.Namespace) -> dict:
    judge = Judge(engine)
    # previews only at the last step: sampling time is then (almost) all UNet, guidance and scheduler
    base = dict(steps=args.steps, guidance_scale=args.guidance_scale, preview_every=args.steps)

    # (a) a condition's weight -> fidelity of its attribute
    weight_sweep = []
    for weight in args.weights:
        conditions = (Condition(SWEEP_CONDITION, weight),) if weight else ()
        judged, _ = run_setting(engine, judge, args.samples, prompt=SWEEP_PROMPT, conditions=conditions, **base)
        weight_sweep.append({"weight": weight, "blue_background": _rates(judged, background_rate, SWEEP_BACKGROUND)})

    # (b) a negative condition -> frequency of its attribute
    negative_sweep = []
    for weight in args.negative_weights:
        conditions = (Condition(NEGATIVE_CONDITION, weight),) if weight else ()
        judged, _ = run_setting(engine, judge, args.samples, prompt=NEGATIVE_PROMPT, conditions=conditions, **base)
        negative_sweep.append({"weight": weight, "red_object": _rates(judged, object_rate, NEGATIVE_COLOUR)})

    # (c) classifier guidance -> accuracy of the targeted attribute, and its cost per step
    classifier_sweep = []
    if engine.model.classifier is not None:
        for strength in args.strengths:
            guidance = ClassifierGuidanceSpec(CLASSIFIER_TARGET, strength) if strength else None
            started = time.perf_counter()
            judged, settings = run_setting(
                engine, judge, args.samples, prompt=CLASSIFIER_PROMPT, classifier_guidance=guidance, **base
            )
            elapsed = time.perf_counter() - started
            steps = sum(s["steps"] for s in settings)
            sampling = sum(s["timings"]["sampling"] for s in settings)
            gradient = sum(s["timings"].get("classifier_gradient", 0.0) for s in settings)
            classifier_sweep.append({
                "strength": strength,
                "red_object": _rates(judged, object_rate, CLASSIFIER_COLOUR),
                "sampling_seconds_per_step": sampling / steps,  # UNet (CFG batch) + guidance + scheduler
                "classifier_seconds_per_step": gradient / steps,
                "gradient_evaluations": sum(s.get("classifier_gradient_evaluations", 0) for s in settings),
                "wall_seconds": elapsed,
            })
        cfg_only = classifier_sweep[0]["sampling_seconds_per_step"] if not args.strengths[0] else None
        for row in classifier_sweep:  # the cost beside plain CFG (strength 0, same seeds, same run)
            row["sampling_time_vs_cfg_only"] = row["sampling_seconds_per_step"] / cfg_only if cfg_only else None

    judges = sorted(weight_sweep[0]["blue_background"]) if weight_sweep else ["pixels"]
    return {
        "model": engine.model_name,
        "device": str(engine.device),
        "device_name": torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else (platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "samples_per_setting": args.samples,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "scheduler": GenerateSpec("x").scheduler,
        "judges": judges,
        "weight_sweep": {"prompt": SWEEP_PROMPT, "condition": SWEEP_CONDITION, "rows": weight_sweep,
                         "monotone": {j: monotone([r["blue_background"][j] for r in weight_sweep], rising=True) for j in judges},
                         "rises": {j: weight_sweep[-1]["blue_background"][j] > weight_sweep[0]["blue_background"][j] for j in judges}},
        "negative_condition": {"prompt": NEGATIVE_PROMPT, "condition": NEGATIVE_CONDITION, "rows": negative_sweep,
                               "rarer_than_without": {j: all(r["red_object"][j] < negative_sweep[0]["red_object"][j] for r in negative_sweep[1:]) for j in judges}},
        "classifier_guidance": {"prompt": CLASSIFIER_PROMPT, "target": CLASSIFIER_TARGET, "rows": classifier_sweep,
                                "skipped": None if classifier_sweep else "the model has no classifier/ folder"},
    }


def table(report: dict) -> str:
    judges = report["judges"]
    lines = [
        "# Global guidance sweep",
        "",
        f"Model `{report['model']}` on {report['device']} ({report['device_name']}), {report['samples_per_setting']} "
        f"images per setting (same seeds), {report['scheduler']} {report['steps']} steps, prompt weight "
        f"{report['guidance_scale']:g}. Judged by: {', '.join(judges)}.",
        "",
        f"## (a) Condition weight -> fidelity: '{report['weight_sweep']['prompt']}' + '{report['weight_sweep']['condition']}'",
        "",
        "| weight | " + " | ".join(f"blue background ({j})" for j in judges) + " |",
        "|---:|" + "---:|" * len(judges),
    ]
    for row in report["weight_sweep"]["rows"]:
        lines.append(f"| {row['weight']:g} | " + " | ".join(f"{row['blue_background'][j]:.0%}" for j in judges) + " |")
    sweep_checks = report["weight_sweep"]
    lines += ["", "Monotone (never falls): " + ", ".join(f"{j} {'yes' if ok else 'no'}" for j, ok in sweep_checks["monotone"].items())
              + " · higher at the top weight than at 0: " + ", ".join(f"{j} {'yes' if ok else 'no'}" for j, ok in sweep_checks["rises"].items()), ""]
    negative = report["negative_condition"]
    lines += [
        f"## (b) Negative condition: '{negative['prompt']}' with '{negative['condition']}' at negative weights",
        "",
        "| weight | " + " | ".join(f"red objects ({j})" for j in judges) + " |",
        "|---:|" + "---:|" * len(judges),
    ]
    for row in negative["rows"]:
        lines.append(f"| {row['weight']:g} | " + " | ".join(f"{row['red_object'][j]:.0%}" for j in judges) + " |")
    lines += ["", "Rarer than without at every negative weight: " + ", ".join(f"{j} {'yes' if ok else 'no'}" for j, ok in negative["rarer_than_without"].items()), ""]
    classifier = report["classifier_guidance"]
    lines += [f"## (c) Classifier guidance: '{classifier['prompt']}' + target '{classifier['target']}'", ""]
    if classifier["rows"]:
        lines += [
            "| strength | " + " | ".join(f"red objects ({j})" for j in judges)
            + " | classifier gradient s/step | sampling s/step | sampling time vs CFG only |",
            "|---:|" + "---:|" * len(judges) + "---:|---:|---:|",
        ]
        for row in classifier["rows"]:
            ratio = row["sampling_time_vs_cfg_only"]
            lines.append(
                f"| {row['strength']:g} | " + " | ".join(f"{row['red_object'][j]:.0%}" for j in judges)
                + f" | {row['classifier_seconds_per_step']:.4f} | {row['sampling_seconds_per_step']:.4f} | "
                + (f"{ratio:.2f}x |" if ratio is not None else "– |")
            )
        lines += ["", "Strength 0 is plain CFG on the same seeds; sampling time per step includes the UNet's "
                  "batched CFG call, the classifier gradient and the scheduler step."]
    else:
        lines.append(f"Skipped: {classifier['skipped']}.")
    return "\n".join(lines) + "\n"


def figure(report: dict) -> Image.Image:
    """Three charts side by side: (a) fidelity vs weight, (b) red objects vs negative weight, (c) vs strength."""
    judges = report["judges"]

    def series(rows: list[dict], x: str, y: str) -> dict:
        return {judge: ([r[x] for r in rows], [100 * r[y][judge] for r in rows]) for judge in judges}

    charts = [
        line_chart(series(report["weight_sweep"]["rows"], "weight", "blue_background"), "condition weight",
                   "% blue background", "(a) 'a blue background'", size=(340, 220), markers=True, y_range=(0, 100)),
        line_chart(series(report["negative_condition"]["rows"], "weight", "red_object"), "weight of 'red'",
                   "% red objects", "(b) negative condition", size=(340, 220), markers=True, y_range=(0, 100)),
    ]
    if report["classifier_guidance"]["rows"]:
        charts.append(line_chart(series(report["classifier_guidance"]["rows"], "strength", "red_object"),
                                 "classifier strength", "% red objects", "(c) classifier: red object",
                                 size=(340, 220), markers=True, y_range=(0, 100)))
    return side_by_side(charts)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    engine = Engine(args.model, device=args.device)
    report = sweep(engine, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guidance_sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "guidance_sweep.md").write_text(table(report))
    figure(report).save(args.out / "guidance_sweep.png")
    print(table(report))
    return report


if __name__ == "__main__":
    main()
