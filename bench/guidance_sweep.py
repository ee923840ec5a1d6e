"""Global guidance, measured (issue #4) on the embedded model (whatever `Engine()` loads by default).

(a) weight sweep: prompt "a big red circle" plus the condition "a blue background" at weights
    0..8 -> fraction of images whose judged background is blue (expected to rise monotonically);
(b) negative condition: prompt "a big circle on a white background" (no colour) with the condition
    "red" at weight 0 and below -> fraction of images whose largest object is red (expected to fall);
(c) classifier guidance, every target the model's classifier offers (issue #20): each colour, shape and background
    target on prompts that leave that attribute open, from two disjoint sets of prompt attributes -- "tuning" (the
    shapes, positions, backgrounds and object colours a default may be chosen on) and "held-out" (the others) -- at
    each classifier setting (off is plain CFG on the same seeds); per target: the fraction of images showing it (pixel judge and
    classifier judge) and the fraction that keep the rest of the prompt (pixel judge: its stated colour, shape and
    background, and one object); and the cost per step of the classifier gradient beside plain CFG's.

Each setting generates the same samples (same seeds, batches of up to 8); every image is judged by
the pixel check and, when the model ships a classifier, by the noisy-latent classifier at t = 0 on
its VAE re-encoding. Writes bench/results/guidance_sweep.{json,md,png}.

    python bench/guidance_sweep.py [--samples 32] [--steps 25] [--model DIR] [--device cuda]
        [--only a,b,c] [--target-samples 8] [--settings "strength=0; strength=3,stop=0.5"] [--resume]

--resume keeps the rows of (c) already in the results JSON (same model, steps and images per prompt): a long run
stopped part-way continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.engine import Engine  # noqa: E402
from studio.events import Result  # noqa: E402
from studio.guidance import NORMALISED_STEP  # noqa: E402
from studio.plots import line_chart, side_by_side  # noqa: E402
from studio.shapes.judge import Judgement, judge_latents, judge_pixels  # noqa: E402
from studio.shapes.vocabulary import SHAPES  # noqa: E402
from studio.specs import BATCH, ClassifierGuidanceSpec, Condition, GenerateSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP_PROMPT, SWEEP_CONDITION, SWEEP_BACKGROUND = "a big red circle", "a blue background", "blue"
NEGATIVE_PROMPT, NEGATIVE_CONDITION, NEGATIVE_COLOUR = "a big circle on a white background", "red", "red"
# (c) The prompt attributes of each split: a target is measured on prompts built from one split only, so "held-out"
# prompts share no shape, position, background or object colour with the "tuning" ones (the targets are all 8 colours,
# 3 shapes and 8 backgrounds in both).
SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "tuning": {"shapes": ("circle", "square"), "positions": ("center", "left"),
               "backgrounds": ("blue", "white", "black", "green"), "colours": ("red", "yellow", "blue", "white")},
    "held-out": {"shapes": ("triangle",), "positions": ("right", "top left"),
                 "backgrounds": ("purple", "orange", "yellow", "red"), "colours": ("orange", "green", "purple", "black")},
}
PROMPTS_PER_TARGET = 2  # one big and one small object
DEFAULT = ClassifierGuidanceSpec("x")
RAW_BASELINE = 2.0  # the default strength of eq. 14 before normalisation (issue #20 measured it on every target)
DEFAULT_SETTINGS = f"strength=0; strength={DEFAULT.strength:g}; strength={RAW_BASELINE:g},normalise=false"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


Setting = dict[str, Any] | None  # (c) a ClassifierGuidanceSpec's fields but its target; None: plain CFG


def parse_setting(text: str) -> Setting:
    """"strength=3,stop=0.5" -> the spec's defaults with those fields (None for strength 0: plain CFG)."""
    values = {name: value for name, value in asdict(DEFAULT).items() if name != "target"}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in values or not value:
            raise argparse.ArgumentTypeError(f"{part!r}: give name=value with a name of {', '.join(values)}")
        kind = type(values[name])
        values[name] = value.lower() in ("1", "true", "yes", "on") if kind is bool else kind(value)
    return values if values["strength"] else None


def _settings(text: str) -> list[Setting]:
    return distinct(parse_setting(part) for part in text.split(";") if part.strip())


def distinct(settings: Iterable[Setting]) -> list[Setting]:
    """Each setting once, in the order first seen."""
    return list({key(setting): setting for setting in settings}.values())


def key(setting: Setting) -> tuple:
    return tuple(sorted(setting.items())) if setting else ()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--samples", type=int, default=32, help="images per setting (same seeds for every setting)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="the prompt's own weight")
    parser.add_argument("--weights", type=_floats, default=_floats("0,1,2,4,6,8"), help="(a) condition weights")
    parser.add_argument("--negative-weights", type=_floats, default=_floats("0,-2,-4,-6"), help="(b) weights of 'red'")
    parser.add_argument("--settings", type=_settings, default=_settings(DEFAULT_SETTINGS),
                        help="(c) classifier settings separated by ';', each the spec's defaults but for the fields it "
                             "names (strength=3,stop=0.5; strength=0 is plain CFG); default: off, the spec's default "
                             f"and eq. 14 as published at {RAW_BASELINE:g}, the default before normalisation")
    parser.add_argument("--target-steps", type=int, default=20, help="(c) sampling steps")
    parser.add_argument("--target-samples", type=int, default=8, help="(c) images per prompt (2 prompts per target and split)")
    parser.add_argument("--targets", default=None, help="(c) comma-separated targets (default: every target)")
    parser.add_argument("--only", default="a,b,c", help="parts to run: a, b, c (the others are kept from --out's JSON)")
    parser.add_argument("--resume", action="store_true", help="(c) keep the rows already in --out's JSON")
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


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _place(position: str) -> str:
    return "in the center" if position == "center" else f"on the {position}"


def target_prompts(target: str, split: str) -> list[dict]:
    """PROMPTS_PER_TARGET prompts for `target` from `split`'s attributes, each leaving the target's attribute open
    (the model was trained with colour, size, position and background phrases dropped; a shape target's prompt
    drops the shape word, which training never did); `stated` is what the prompt asks for besides."""
    attributes = SPLITS[split]
    value, kind = target.rsplit(" ", 1)
    kind = "background" if kind == "background" else ("shape" if value in SHAPES else "colour")
    prompts = []
    for k, size in enumerate(("big", "small")[:PROMPTS_PER_TARGET]):
        shape = attributes["shapes"][k % len(attributes["shapes"])]
        place = _place(attributes["positions"][k % len(attributes["positions"])])
        background = [c for c in attributes["backgrounds"] if c != value][k]
        colour = [c for c in attributes["colours"] if c not in (value, background)][k]
        if kind == "colour":
            prompt, stated = f"a {size} {shape} {place} on {_a(background)} background", {"shape": shape, "background": background}
        elif kind == "shape":
            prompt, stated = f"a {size} {colour} {place} on {_a(background)} background", {"colour": colour, "background": background}
        else:
            prompt, stated = f"a {size} {colour} {shape} {place}", {"colour": colour, "shape": shape}
        prompts.append({"prompt": prompt, "kind": kind, "value": value, "stated": stated})
    return prompts


def shows(judgement: Judgement, kind: str, value: str) -> bool:
    """The image shows the target: its background, or its largest object's colour or shape."""
    if kind == "background":
        return judgement.background == value
    first = judgement.objects[0] if judgement.objects else None
    return first is not None and getattr(first, kind) == value


def keeps(judgement: Judgement, stated: dict[str, str]) -> bool:
    """The rest of the prompt is kept: one object, with the stated colour / shape, on the stated background."""
    return len(judgement.objects) == 1 and all(shows(judgement, kind, value) for kind, value in stated.items())


def label(setting: Setting) -> str:
    """"off", "strength 3", "strength 2, eq. 14", "strength 3, stop 0.5": what differs from the spec's default."""
    if not setting:
        return "off"
    named = [f"strength {setting['strength']:g}"]
    for name, value in setting.items():
        if name != "strength" and value != getattr(DEFAULT, name):
            named.append("eq. 14" if name == "normalise" and not value else f"{name} {value:g}" if isinstance(value, float)
                         else f"{name} {value}")
    return ", ".join(named)


def varies_by_strength_only(setting: Setting) -> bool:
    return setting is None or all(value == getattr(DEFAULT, name) for name, value in setting.items() if name != "strength")


def classifier_sweep(engine: Engine, judge: Judge, args: argparse.Namespace, base: dict, previous: dict) -> list[dict]:
    """One row per setting, split, target and prompt; rows of `previous` with the same settings are kept (--resume)."""
    same_run = (args.resume and previous.get("target_steps") == args.target_steps
                and previous.get("target_samples") == args.target_samples)
    base = {**base, "steps": args.target_steps, "preview_every": args.target_steps}
    done = {(key(r["guidance"]), r["split"], r["target"], r["prompt"]): r
            for r in (previous.get("classifier_guidance", {}).get("rows", []) if same_run else [])}
    targets = args.targets.split(",") if args.targets else list(engine.classifier_targets)
    rows = []
    for setting in args.settings:
        for split in SPLITS:
            for target in targets:
                for case in target_prompts(target, split):
                    row_key = (key(setting), split, target, case["prompt"])
                    if row_key in done:
                        rows.append(done[row_key])
                        continue
                    guidance = ClassifierGuidanceSpec(target, **setting) if setting else None
                    judged, settings = run_setting(engine, judge, args.target_samples, prompt=case["prompt"],
                                                   classifier_guidance=guidance, **base)
                    steps = sum(s["steps"] for s in settings)
                    rows.append({
                        "guidance": setting, "split": split, "target": target, "prompt": case["prompt"],
                        "kind": case["kind"], "images": len(judged["pixels"]),
                        "shows": {name: sum(shows(j, case["kind"], case["value"]) for j in js) / len(js) for name, js in judged.items()},
                        "keeps": sum(keeps(j, case["stated"]) for j in judged["pixels"]) / len(judged["pixels"]),
                        "sampling_seconds_per_step": sum(s["timings"]["sampling"] for s in settings) / steps,
                        "classifier_seconds_per_step": sum(s["timings"].get("classifier_gradient", 0.0) for s in settings) / steps,
                    })
                    if args.resume:  # a partial run is never lost
                        _write_json(args.out, {**previous, "target_steps": args.target_steps, "target_samples": args.target_samples,
                                               "classifier_guidance": {"rows": rows + [r for k, r in done.items() if r not in rows]}})
    return rows


def _write_json(folder: Path, report: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "guidance_sweep.json").write_text(json.dumps(report, indent=2) + "\n")


def summarise(rows: list[dict]) -> list[dict]:
    """Per setting, split and target: mean of its prompts' rates (each prompt has the same number of images)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((key(row["guidance"]), row["split"], row["target"]), []).append(row)
    summary = []
    for (_, split, target), group in groups.items():
        judges = group[0]["shows"]
        summary.append({
            "guidance": group[0]["guidance"], "split": split, "target": target, "kind": group[0]["kind"],
            "images": sum(r["images"] for r in group),
            "shows": {j: float(np.mean([r["shows"][j] for r in group])) for j in judges},
            "keeps": float(np.mean([r["keeps"] for r in group])),
        })
    return summary


SHOWS_MET, KEEPS_LOST = 0.9, 0.25  # a target is met when >= 90% of images show it and keeps falls <= 25 points


def ranking(summary: list[dict], split: str = "tuning") -> list[dict]:
    """The guided settings on `split`'s prompts, best first: most targets met (shows >= SHOWS_MET and keeps within
    KEEPS_LOST of plain CFG's on the same prompts), then the most images showing their target (the aim; keeps is the
    constraint "met" holds), then the highest mean keeps. The spec's default is the first (tests/test_defaults.py);
    the held-out prompts then say whether it generalises."""
    rows = [r for r in summary if r["split"] == split]
    plain = {r["target"]: r["keeps"] for r in rows if r["guidance"] is None}
    ranked = []
    for setting in distinct(r["guidance"] for r in rows if r["guidance"]):
        own = [r for r in rows if r["guidance"] == setting]
        met = [r["target"] for r in own
               if r["shows"]["pixels"] >= SHOWS_MET and r["keeps"] >= plain.get(r["target"], 1.0) - KEEPS_LOST]
        ranked.append({"guidance": setting, "split": split, "targets": len(own),
                       "met": len(met), "mean_shows": float(np.mean([r["shows"]["pixels"] for r in own])),
                       "mean_keeps": float(np.mean([r["keeps"] for r in own]))})
    return sorted(ranked, key=lambda r: (-r["met"], -r["mean_shows"], -r["mean_keeps"]))


def cost(rows: list[dict]) -> list[dict]:
    """Seconds per step per setting (mean over its runs) and the ratio to plain CFG (off) of the same run."""
    by_setting: dict[tuple, list[dict]] = {}
    for row in rows:
        by_setting.setdefault(key(row["guidance"]), []).append(row)
    off = by_setting.get(key(None))
    cfg_only = np.mean([r["sampling_seconds_per_step"] for r in off]) if off else None
    return [{
        "guidance": group[0]["guidance"],
        "sampling_seconds_per_step": float(np.mean([r["sampling_seconds_per_step"] for r in group])),
        "classifier_seconds_per_step": float(np.mean([r["classifier_seconds_per_step"] for r in group])),
        "sampling_time_vs_cfg_only": float(np.mean([r["sampling_seconds_per_step"] for r in group]) / cfg_only) if cfg_only else None,
    } for group in by_setting.values()]


def sweep(engine: Engine, args: argparse.Namespace, previous: dict) -> dict:
    judge = Judge(engine)
    parts = set(args.only.split(","))
    # previews only at the last step: sampling time is then (almost) all UNet, guidance and scheduler
    base = dict(steps=args.steps, guidance_scale=args.guidance_scale, preview_every=args.steps)

    # (a) a condition's weight -> fidelity of its attribute
    weight_sweep = [] if "a" in parts else previous.get("weight_sweep", {}).get("rows", [])
    for weight in args.weights if "a" in parts else ():
        conditions = (Condition(SWEEP_CONDITION, weight),) if weight else ()
        judged, _ = run_setting(engine, judge, args.samples, prompt=SWEEP_PROMPT, conditions=conditions, **base)
        weight_sweep.append({"weight": weight, "blue_background": _rates(judged, background_rate, SWEEP_BACKGROUND)})

    # (b) a negative condition -> frequency of its attribute
    negative_sweep = [] if "b" in parts else previous.get("negative_condition", {}).get("rows", [])
    for weight in args.negative_weights if "b" in parts else ():
        conditions = (Condition(NEGATIVE_CONDITION, weight),) if weight else ()
        judged, _ = run_setting(engine, judge, args.samples, prompt=NEGATIVE_PROMPT, conditions=conditions, **base)
        negative_sweep.append({"weight": weight, "red_object": _rates(judged, object_rate, NEGATIVE_COLOUR)})

    # (c) classifier guidance -> every target, on tuning and held-out prompts, and its cost per step
    classifier_rows = []
    if "c" in parts and engine.model.classifier is not None:
        classifier_rows = classifier_sweep(engine, judge, args, base, previous)
    judges = ["classifier", "pixels"] if engine.model.classifier is not None else ["pixels"]
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
        "target_samples": args.target_samples,
        "target_steps": args.target_steps,
        "weight_sweep": {"prompt": SWEEP_PROMPT, "condition": SWEEP_CONDITION, "rows": weight_sweep,
                         "monotone": {j: monotone([r["blue_background"][j] for r in weight_sweep], rising=True) for j in judges},
                         "rises": {j: weight_sweep[-1]["blue_background"][j] > weight_sweep[0]["blue_background"][j] for j in judges}},
        "negative_condition": {"prompt": NEGATIVE_PROMPT, "condition": NEGATIVE_CONDITION, "rows": negative_sweep,
                               "rarer_than_without": {j: all(r["red_object"][j] < negative_sweep[0]["red_object"][j] for r in negative_sweep[1:]) for j in judges}},
        "classifier_guidance": {
            "splits": SPLITS, "images_per_prompt": args.target_samples, "rows": classifier_rows,
            "summary": summarise(classifier_rows), "ranking": ranking(summarise(classifier_rows)),
            "ranking_held_out": ranking(summarise(classifier_rows), "held-out"), "cost": cost(classifier_rows),
            "skipped": None if classifier_rows else "the model has no classifier/ folder",
        },
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
    lines += [f"## (c) Classifier guidance, every target: {report['scheduler']} {report['target_steps']} steps, "
              f"{report['target_samples']} images per prompt, "
              f"{PROMPTS_PER_TARGET} prompts per target and split", ""]
    if classifier["rows"]:
        for split, attributes in classifier["splits"].items():
            lines.append(f"- {split} prompts: " + "; ".join(f"{k} {', '.join(v)}" for k, v in attributes.items()))
        settings = distinct(r["guidance"] for r in classifier["summary"])  # as run
        cell = {(key(r["guidance"]), r["split"], r["target"]): r for r in classifier["summary"]}
        for split in classifier["splits"]:
            lines += ["", f"### {split} prompts: images showing the target (pixels / classifier), and keeping the rest of "
                      "the prompt (pixels: its colour, shape, background, one object)", "",
                      "| target | " + " | ".join(f"{label(s)}: shows | keeps" for s in settings) + " |",
                      "|---|" + "---:|---:|" * len(settings)]
            targets = list(dict.fromkeys(r["target"] for r in classifier["summary"] if r["split"] == split))
            for target in targets:
                row = [cell.get((key(s), split, target)) for s in settings]
                lines.append(f"| {target} | " + " | ".join(
                    f"{r['shows']['pixels']:.0%} / {r['shows'].get('classifier', float('nan')):.0%} | {r['keeps']:.0%}" if r else "– | –"
                    for r in row) + " |")
            lines.append("")
            for s in settings:
                lines.append(f"- {label(s)}: {reached_line(classifier['summary'], s, split)}")
        lines += ["", f"Ranked on the tuning prompts (a target is met when >= {SHOWS_MET:.0%} of images show it and keeps "
                  f"falls at most {KEEPS_LOST * 100:g} points below plain CFG's; ties go to the most images showing their target; "
                  "the spec's default is the first):", ""]
        lines += [f"{place}. {label(r['guidance'])}: {r['met']} of {r['targets']} targets met, mean shows "
                  f"{r['mean_shows']:.0%}, mean keeps {r['mean_keeps']:.0%}"
                  for place, r in enumerate(classifier["ranking"], 1)]
        lines += ["", "The same rule on the held-out prompts (whether the choice generalises): " + "; ".join(
            f"{label(r['guidance'])} {r['met']} met" for r in classifier["ranking_held_out"]) + "."]
        lines += ["", "| setting | classifier gradient s/step | sampling s/step | sampling time vs CFG only |",
                  "|---|---:|---:|---:|"]
        for row in classifier["cost"]:
            ratio = row["sampling_time_vs_cfg_only"]
            lines.append(f"| {label(row['guidance'])} | {row['classifier_seconds_per_step']:.4f} | {row['sampling_seconds_per_step']:.4f} | "
                         + (f"{ratio:.2f}x |" if ratio is not None else "– |"))
        lines += ["", "Off is plain CFG on the same seeds; sampling time per step includes the UNet's "
                  "batched CFG call, the classifier gradient and the scheduler step. Eq. 14 is Dhariwal & Nichol's "
                  "shift sqrt(1 - ab) s grad log p; normalised (studio.guidance.normalised_classifier_eps) keeps its "
                  f"direction and moves eps by s x {NORMALISED_STEP:g} of its own norm, so a strength gives every target the same push; there a background target's gradient reaches each latent cell as "
                  "much as the classifier holds it background (studio.shapes.classifier.target_region_fn), so it "
                  "repaints the object less."]
    else:
        lines.append(f"Skipped: {classifier['skipped']}.")
    return "\n".join(lines) + "\n"


def reached_line(summary: list[dict], setting: Setting, split: str) -> str:
    rows = [r for r in summary if r["split"] == split and r["guidance"] == setting]
    weakest = min(rows, key=lambda r: r["shows"]["pixels"])
    reached = sum(r["shows"]["pixels"] >= 0.9 for r in rows)
    return (f"{reached} of {len(rows)} targets at >= 90% (pixels); weakest '{weakest['target']}' "
            f"{weakest['shows']['pixels']:.0%}; mean keeps {np.mean([r['keeps'] for r in rows]):.0%}")


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
    summary = report["classifier_guidance"]["summary"]
    if summary:  # held-out prompts at the default's normalisation: the mean over each kind of target, and the weakest
        held_out = [{**r, "strength": (r["guidance"] or {"strength": 0.0})["strength"]} for r in summary
                    if r["split"] == "held-out" and varies_by_strength_only(r["guidance"])]
        strengths = sorted({r["strength"] for r in held_out})
        kinds = {kind: [[r["shows"]["pixels"] for r in held_out if r["kind"] == kind and r["strength"] == s] for s in strengths]
                 for kind in dict.fromkeys(r["kind"] for r in held_out)}
        lines = {f"{kind} targets": (strengths, [100 * float(np.mean(v)) for v in values]) for kind, values in kinds.items()}
        lines["weakest target"] = (strengths, [100 * min(r["shows"]["pixels"] for r in held_out if r["strength"] == s) for s in strengths])
        charts.append(line_chart(lines, "classifier strength", "% showing the target", "(c) held-out prompts",
                                 size=(340, 220), markers=True, y_range=(0, 100)))
    return side_by_side(charts)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    saved = args.out / "guidance_sweep.json"
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    kept = {"a": "weight_sweep", "b": "negative_condition"}
    missing = [part for part, key in kept.items()
               if part not in args.only.split(",") and not previous.get(key, {}).get("rows")]
    if missing:
        raise SystemExit(f"--only {args.only}: part(s) {', '.join(missing)} are kept from {saved}, which has none; "
                         "run them too, or give an --out whose JSON has them")
    engine = Engine(args.model, device=args.device)
    report = sweep(engine, args, previous)
    _write_json(args.out, report)
    (args.out / "guidance_sweep.md").write_text(table(report))
    figure(report).save(args.out / "guidance_sweep.png")
    print(table(report))
    return report


if __name__ == "__main__":
    main()
