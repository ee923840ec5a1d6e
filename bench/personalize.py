"""Personalization, measured (issue #18): what each method teaches, what it keeps, and what it costs.

The embedded model has two reserved shapes, star and heart, in its vocabulary and never in its training. Each method
trains once per shape with its recipe (studio.personalize.spec.RECIPES) on `--images` pictures from
studio.personalize.data.render_concept_images; then the engine generates with the trained concept loaded
(engine.concepts.load, GenerateSpec.concepts) and the shapes world's pixel judge (studio.shapes.judge.judge_pixels with
concept shapes) scores, on fixed seeds:

(a) fidelity: "a red star on a blue background" judged a star by its outline (its fifth harmonic, five points however
    rounded; a heart by its solidity and notches: judge_concept_shape), and the heart likewise: DreamBench's subject
    fidelity (DINO / CLIP-I, Ruiz et al. 2023, section 4.1) as an exact pixel check;
(b) compositionality: the shape in colours and on backgrounds none of its training pictures had (the renderer's
    training palette, data.TRAINING_COLOURS / TRAINING_BACKGROUNDS, is held out) at sizes and positions none of them
    showed; the shape and every named attribute judged (DreamBench's prompt fidelity, CLIP-T, as pixels);
(c) prior preservation: circle / square / triangle prompts (the class word among them) judged for shape, colour and
    position, beside the base model's score on the same prompts and seeds: the language drift DreamBooth's
    class-prior loss is there to prevent (Ruiz et al. 2023, eq. 2), measured with and without it;
(d) cost: training seconds (the job alone: model loading excluded, no preview samples), peak memory as the training
    process's ru_maxrss (os.wait4 on the child) less its ru_maxrss once the model was loaded, and the size of the
    files that load (the diffusers layout; the folder's total, alternative layouts included, is in the JSON).

Rows: the base model (no training: the baseline, measured in the same run), Textual Inversion (Gal et al. 2022, eq.
2), LoRA (Hu et al. 2021, eq. 3; the recipe's layers, the attention projections alone, and both), DreamBooth (Ruiz et
al. 2023, eq. 2) with and without the prior loss, and Custom Diffusion (Kumari et al. 2023, section 3.1), which trains
star and heart jointly once and appears in both tables. Each training runs in a child process (so its memory is its
own) through Engine.personalize, the Personalize tab's job. The results are rewritten after every row, so a run cut
short keeps what ran and says "not run" for the rest. Writes bench/results/personalize.{json,md}.

    python bench/personalize.py [--threads 2] [--steps 20] [--seeds 8] [--images 8] [--concepts star,heart]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description

from studio.engine import Engine
from studio.events import Result
from studio.personalize.data import TRAINING_BACKGROUNDS, TRAINING_COLOURS, render_concept_images
from studio.shapes.judge import judge_pixels
from studio.shapes.render import HALF_EXTENT, describe_object, make_object
from studio.shapes.vocabulary import COLOURS, POSITIONS, RESERVED_SHAPES, SIZES
from studio.specs import ConceptUse, GenerateSpec

RESULTS = Path(__file__).resolve().parent / "results"
CLASS_WORD = "circle"  # what both reserved shapes are taught as a kind of (DreamBooth's class prompts use it)
GOAL_SECONDS = 180  # the goal: Textual Inversion and LoRA teach a star in under 3 minutes on 2 CPU cores
GOAL_METHODS = ("textual-inversion", "lora")


class MethodRow(NamedTuple):  # NamedTuples: bench scripts load without a sys.modules entry, which dataclasses need
    key: str
    label: str
    method: str | None  # studio.personalize.spec.METHODS; None: the base model, untrained
    overrides: dict[str, Any]  # on the method's recipe


METHOD_ROWS = (
    MethodRow("base", "base model (no training)", None, {}),
    MethodRow("textual-inversion", "Textual Inversion", "textual-inversion", {}),
    MethodRow("lora", "LoRA, ResNet convolutions (the recipe)", "lora", {}),
    MethodRow("lora-attention", "LoRA, attention projections", "lora", {"lora_layers": "attention"}),
    MethodRow("lora-both", "LoRA, attention + convolutions", "lora", {"lora_layers": "attention+convolutions"}),
    MethodRow("dreambooth", "DreamBooth, prior loss", "dreambooth", {"prior_preservation": True}),
    MethodRow("dreambooth-no-prior", "DreamBooth, no prior loss", "dreambooth", {"prior_preservation": False}),
    MethodRow("custom-diffusion", "Custom Diffusion (star + heart jointly)", "custom-diffusion", {}),
)
ROWS = {row.key: row for row in METHOD_ROWS}
JOINT = "custom-diffusion"  # trained once on both shapes, measured in both tables

# the files a user loads, per method (the folder also holds the alternative layouts: kohya, A1111)
LOADED_FILES = {
    "textual-inversion": ("learned_embeds.safetensors",),
    "lora": ("pytorch_lora_weights.safetensors",),
    "dreambooth": ("unet",),
    "custom-diffusion": ("pytorch_custom_diffusion_weights.safetensors", "learned_embeds.safetensors"),
}


class Ask(NamedTuple):
    """One prompt and what the pixel judge should find in its picture (None: the prompt does not say)."""

    prompt: str
    shape: str
    colour: str
    background: str
    position: str | None = None
    size: str | None = None


# (c): one object each, attributes the base model draws well (no (colour, shape, background) of render.HELD_OUT)
PRESERVATION = (("circle", "green", "white", "left"), ("square", "yellow", "purple", "top right"),
                ("triangle", "orange", "black", "bottom"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded shapes model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of every judged picture")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, default=8, help="(a) seeds of the fidelity prompt")
    parser.add_argument("--compose-prompts", type=int, default=4, help="(b) prompts of held-out attributes")
    parser.add_argument("--compose-seeds", type=int, default=4, help="(b) seeds per prompt")
    parser.add_argument("--preserve-seeds", type=int, default=4, help="(c) seeds per circle/square/triangle prompt")
    parser.add_argument("--batch", type=int, default=4, help="pictures generated at once")
    parser.add_argument("--images", type=int, default=8, help="rendered training pictures per concept")
    parser.add_argument("--concepts", default=",".join(RESERVED_SHAPES), help="comma-separated reserved shapes")
    parser.add_argument("--methods", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--recipe", default="{}", help="JSON overrides of every recipe (e.g. '{\"steps\": 20}' for a "
                        "smoke run; the committed results use the recipes as they are)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the trained concepts (default: temporary)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for personalize.{json,md}")
    parser.add_argument("--resume", action="store_true", help="keep the rows of the personalize.json in --out (measured "
                        "with the same settings) and run only the others")
    parser.add_argument("--train", default=None, help=argparse.SUPPRESS)  # child process: train one row
    parser.add_argument("--concept", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- prompts


def ask(shape: str, colour: str, background: str, position: str | None = None, size: str | None = None) -> Ask:
    """The prompt in the renderer's caption grammar, naming only what is given."""
    obj = make_object(shape, colour, size or SIZES[-1], position or "center")
    phrase = describe_object(obj, size=size is not None, position=position is not None)
    return Ask(f"{phrase} on {'an' if background[0] in 'aeiou' else 'a'} {background} background", shape, colour,
               background, position, size)


def fidelity_ask(word: str) -> Ask:
    return ask(word, "red", "blue")


CAPTION = re.compile(r"^an? (?P<size>\w+) (?P<colour>\w+) \S+ (?:in the (?P<center>center)|on the (?P<position>.+?)) "
                     r"on an? (?P<background>\w+) background$")


def seen_in_training(captions: Sequence[str]) -> dict[str, set]:
    """The colours, backgrounds and (size, position) pairs the training captions show (render.caption's grammar)."""
    seen: dict[str, set] = {"colours": set(), "backgrounds": set(), "placements": set()}
    for text in captions:
        match = CAPTION.match(text)
        if match is None:
            raise ValueError(f"Not a rendered caption: {text!r}")
        seen["colours"].add(match["colour"])
        seen["backgrounds"].add(match["background"])
        seen["placements"].add((match["size"], match["center"] or match["position"]))
    return seen


def composition_asks(word: str, captions: Sequence[str], count: int) -> list[Ask]:
    """`count` prompts of the concept in a colour, on a background and at a (size, position) its training pictures
    never had; positions no picture showed at all come first. The fidelity prompt's pair is left to (a)."""
    seen = seen_in_training(captions)
    colours = [c for c in COLOURS if c not in seen["colours"]]
    backgrounds = [b for b in COLOURS if b not in seen["backgrounds"]]
    fidelity = fidelity_ask(word)
    pairs = [(c, b) for c, b in itertools.product(colours, backgrounds)
             if c != b and (c, b) != (fidelity.colour, fidelity.background)]
    if not pairs:
        raise ValueError(f"The training pictures of {word!r} show every colour and background: nothing is held out.")
    seen_positions = {position for _, position in seen["placements"]}
    positions = sorted(POSITIONS, key=lambda p: p in seen_positions)  # stable: unseen ones first, in POSITIONS' order
    # one size per position in a first round (alternating), the other size in a second
    placements = [(size, position) for rank in range(len(SIZES)) for i, position in enumerate(positions)
                  if (size := SIZES[(i + rank) % len(SIZES)], position) not in seen["placements"]]
    step = max(1, len(pairs) // count)
    return [ask(word, *pairs[(i * step) % len(pairs)], position=placements[i % len(placements)][1],
                size=placements[i % len(placements)][0]) for i in range(count)]


def preservation_asks() -> list[Ask]:
    return [ask(shape, colour, background, position=position) for shape, colour, background, position in PRESERVATION]


# ---------------------------------------------------------------------------------------------- judging


def judged_size(mask: np.ndarray) -> str:
    """small or big: the blob's half extent against the midpoint of the renderer's two (HALF_EXTENT)."""
    rows, cols = np.nonzero(mask)
    half = max(np.ptp(rows), np.ptp(cols)) / 2 / mask.shape[0]
    return "big" if half > (HALF_EXTENT["small"] + HALF_EXTENT["big"]) / 2 else "small"


def check(picture: np.ndarray, wanted: Ask) -> dict[str, bool]:
    """What the picture got right of what the prompt asked: the largest judged object's shape, colour, and (when
    asked) position and size, and the background."""
    judgement = judge_pixels(picture, concept_shapes=True)
    found = judgement.objects[0] if judgement.objects else None
    checks = {"shape": found is not None and found.shape == wanted.shape,
              "colour": found is not None and found.colour == wanted.colour,
              "background": judgement.background == wanted.background}
    if wanted.position is not None:
        checks["position"] = found is not None and found.position == wanted.position
    if wanted.size is not None:
        checks["size"] = found is not None and judged_size(found.mask) == wanted.size
    return checks


def rates(checks: Sequence[dict[str, bool]]) -> dict[str, float]:
    """Each attribute's rate over the pictures that were asked it, and `all`: every asked attribute right."""
    attributes = sorted({name for c in checks for name in c})
    out = {name: float(np.mean([c[name] for c in checks if name in c])) for name in attributes}
    return {**out, "all": float(np.mean([all(c.values()) for c in checks])), "pictures": len(checks)}


def pictures(engine: Engine, prompt: str, seeds: int, args: argparse.Namespace,
             concepts: tuple[ConceptUse, ...]) -> list[np.ndarray]:
    """Seeds 0..seeds-1 of `prompt` as (H, W, 3) uint8, `args.batch` at a time (a batch from seed s draws s, s+1, ...)."""
    out = []
    for start in range(0, seeds, args.batch):
        spec = GenerateSpec(prompt, seed=start, steps=args.steps, guidance_scale=args.guidance,
                            batch_size=min(args.batch, seeds - start), preview_every=args.steps + 1, concepts=concepts)
        result = [event for event in engine.generate(spec) if isinstance(event, Result)][-1]
        out += [(p * 255).round().astype(np.uint8) for p in result.pixels]
    return out


def score(engine: Engine, asks: Sequence[Ask], seeds: int, args: argparse.Namespace,
          concepts: tuple[ConceptUse, ...]) -> dict:
    return rates([check(picture, wanted) for wanted in asks for picture in pictures(engine, wanted.prompt, seeds, args, concepts)])


def judge_concept(engine: Engine, word: str, captions: Sequence[str], args: argparse.Namespace,
                  concepts: tuple[ConceptUse, ...], strip: Path) -> dict:
    """(a) and (b) for one concept word; the fidelity pictures side by side in `strip` (a PNG), to be looked at."""
    wanted = fidelity_ask(word)
    drawn = pictures(engine, wanted.prompt, args.seeds, args, concepts)
    strip.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(drawn, axis=1)).save(strip)
    return {"fidelity": rates([check(picture, wanted) for picture in drawn]),
            "composition": score(engine, composition_asks(word, captions, args.compose_prompts), args.compose_seeds,
                                 args, concepts)}


def strip_name(word: str, key: str) -> str:
    """Where a row's fidelity pictures of `word` are kept, relative to personalize.md (kept by --resume with its row)."""
    return f"personalize/{word}-{key}.png"


def judge_preservation(engine: Engine, args: argparse.Namespace, concepts: tuple[ConceptUse, ...]) -> dict:
    """(c): each base shape's prompt, and all of them pooled."""
    per_shape = {wanted.shape: score(engine, [wanted], args.preserve_seeds, args, concepts) for wanted in preservation_asks()}
    pooled = {name: float(np.mean([r[name] for r in per_shape.values()])) for name in ("shape", "colour", "position", "all")}
    return {**pooled, "pictures": sum(r["pictures"] for r in per_shape.values()), "shapes": per_shape}


# ---------------------------------------------------------------------------------------------- training


def folder_megabytes(folder: Path, names: Sequence[str] | None = None) -> float:
    """Size of `names` inside `folder` (files, or folders counted whole), or of the whole folder."""
    paths = [folder / name for name in names] if names is not None else [folder]
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def concept_images(word: str, args: argparse.Namespace) -> list[tuple[Any, str]]:
    """The run's training pictures of `word` with their captions: the same in the child that trains and in the
    parent that holds their attributes out."""
    return render_concept_images(word, args.images, seed=0)


def training_spec(row: MethodRow, concept: str, concepts: Sequence[str], args: argparse.Namespace):
    """The recipe of `row`'s method for `concept` (Custom Diffusion: every measured concept at once), without preview
    samples (they would count as training time), with --recipe's overrides."""
    from studio.personalize.spec import PersonalizeSpec

    joint = {"second_concept": next(c for c in concepts if c != concept)} if row.key == JOINT else {}
    return PersonalizeSpec.recipe(row.method, concept=concept, class_word=CLASS_WORD, sample_every=0,
                                  **{**row.overrides, **joint, **json.loads(args.recipe)})


def train_child(args: argparse.Namespace) -> None:
    """The child process: train one row on one concept into --train-out and write its record beside it."""
    from studio.events import PersonalizeResult
    from studio.personalize.job import personalize

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(args.model, device=args.device)
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row, concepts = ROWS[args.train], args.concepts.split(",")
    spec = training_spec(row, args.concept, concepts, args)
    first, *second = (concept_images(word, args) for word in spec.words)
    started = time.perf_counter()
    # the job Engine.personalize runs, called directly for Custom Diffusion's second concept's pictures
    job = personalize(engine, spec, first, args.train_out, second_images=second[0] if second else ())
    result = [event for event in job if isinstance(event, PersonalizeResult)][-1]
    record = {"seconds": time.perf_counter() - started, "job_seconds": result.seconds, "steps": result.steps,
              "words": list(result.words), "final_loss": result.final_loss, "rss_after_load_kib": loaded_kib,
              "job_peak_memory_bytes": result.peak_memory_bytes, "spec": {k: v for k, v in vars(spec).items()}}
    args.train_out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


def train(row: MethodRow, concept: str, args: argparse.Namespace, work: Path) -> dict:
    """Train `row` on `concept` in a child process; its record, with the child's peak resident memory (ru_maxrss from
    os.wait4) less what it held once the model was loaded, and the sizes of the files written."""
    folder = work / f"{row.key}-{concept}"
    command = [sys.executable, str(Path(__file__).resolve()), "--train", row.key, "--concept", concept,
               "--train-out", str(folder), "--concepts", args.concepts, "--images", str(args.images),
               "--threads", str(args.threads), "--recipe", args.recipe,
               *(["--model", args.model] if args.model else []), *(["--device", args.device] if args.device else [])]
    log = folder.with_suffix(".log")
    with log.open("w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        errors = [line for line in log.read_text().splitlines() if "Error" in line]  # the log is mostly progress bars
        return {"error": f"training exited with {child.returncode}" + (f": {errors[-1]}" if errors else "")}
    record = json.loads(folder.with_suffix(".json").read_text())
    return {**record, "folder": str(folder), "peak_rss_mib": usage.ru_maxrss / 1024,
            "peak_rss_delta_mib": (usage.ru_maxrss - record["rss_after_load_kib"]) / 1024,
            "megabytes": folder_megabytes(folder, LOADED_FILES[row.method]), "folder_megabytes": folder_megabytes(folder)}


# ---------------------------------------------------------------------------------------------- the run

# the settings every number of a report depends on: a resumed run must share them with the rows it keeps
RESUME_SETTINGS = ("model", "steps", "guidance", "seeds", "compose_prompts", "compose_seeds", "preserve_seeds", "batch",
                   "images", "concepts", "recipe")


def previous_report(args: argparse.Namespace) -> dict:
    """--resume: the report in --out that this run continues ({} without one); refused when measured otherwise."""
    path = args.out / "personalize.json"
    if not args.resume or not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    differing = [name for name in RESUME_SETTINGS if previous["arguments"].get(name) != vars(args)[name]]
    if differing:
        theirs = ", ".join(f"{name}={previous['arguments'].get(name)!r}" for name in differing)
        raise SystemExit(f"--resume: {path} was measured with other settings ({theirs}); give the same ones, or run "
                         "without --resume to measure every row again.")
    return previous


def measure(args: argparse.Namespace, save) -> dict:
    """Every row of every concept; `save(report)` after each, so a run cut short keeps what ran."""
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    concepts = [c for c in args.concepts.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [c for c in concepts if c not in RESERVED_SHAPES] + [m for m in methods if m not in ROWS]
    if unknown:
        raise SystemExit(f"unknown concept(s) or method(s): {', '.join(unknown)}; concepts: "
                         f"{', '.join(RESERVED_SHAPES)}, methods: {', '.join(ROWS)}")
    engine = Engine(args.model, device=args.device)
    captions = {word: [text for _, text in concept_images(word, args)] for word in concepts}
    report = {**device_description(engine.device), "model": engine.model_name, "steps": args.steps,
              "guidance_scale": args.guidance, "class_word": CLASS_WORD, "goal_seconds": GOAL_SECONDS,
              "renderer_training_palette": {"colours": list(TRAINING_COLOURS), "backgrounds": list(TRAINING_BACKGROUNDS)},
              "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                            if k not in ("train", "concept", "train_out")},
              "concepts": {word: {"training_captions": captions[word],
                                  "seen_in_training": {k: sorted(v) for k, v in seen_in_training(captions[word]).items()},
                                  "prompts": {"fidelity": fidelity_ask(word).prompt,
                                              "composition": [a.prompt for a in composition_asks(word, captions[word], args.compose_prompts)]},
                                  "rows": {}} for word in concepts},
              "preservation_prompts": [a.prompt for a in preservation_asks()], "seconds": {}}
    previous = previous_report(args)
    if previous:
        report["resumed"] = previous.get("resumed", []) + [previous["command"]]
        report["seconds"] = {name: value for name, value in previous["seconds"].items() if name != "total"}
        for word in concepts:
            report["concepts"][word]["rows"] = {key: row for key, row in previous["concepts"][word]["rows"].items()
                                                if "error" not in row.get("cost", {})}

    def done(key: str, words: Sequence[str]) -> bool:
        return all(key in report["concepts"][word]["rows"] for word in words)

    if "base" in methods and not done("base", concepts):
        preservation = judge_preservation(engine, args, ())
        for word in concepts:
            report["concepts"][word]["rows"]["base"] = {**judge_concept(engine, word, captions[word], args, (),
                                                                       args.out / strip_name(word, "base")),
                                                        "preservation": preservation}
        report["seconds"]["base"] = time.perf_counter() - started
        save(report)
    with tempfile.TemporaryDirectory(prefix="bench-personalize-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        # the first concept's whole table first (Custom Diffusion, joint, with it), so a run cut short has one
        plan = [(row, concept) for concept in concepts for row in METHOD_ROWS[1:]
                if row.key in methods and (row.key != JOINT or concept == concepts[0])]
        for row, concept in plan:
            taught = concepts if row.key == JOINT else [concept]
            if done(row.key, taught):
                continue
            lap = time.perf_counter()
            cost = train(row, concept, args, work)
            if "error" in cost:
                for word in taught:
                    report["concepts"][word]["rows"][row.key] = {"cost": cost}
                save(report)
                continue
            info = engine.concepts.load(cost["folder"], name=f"{row.key}-{concept}")
            uses = (ConceptUse(info.name),)
            preservation = judge_preservation(engine, args, uses)
            for word in taught:
                report["concepts"][word]["rows"][row.key] = {**judge_concept(engine, word, captions[word], args, uses,
                                                                             args.out / strip_name(word, row.key)),
                                                             "preservation": preservation, "cost": cost}
            engine.concepts.unload(info.name)
            report["seconds"][f"{row.key}-{concept}"] = time.perf_counter() - lap
            save(report)
    return report


# ---------------------------------------------------------------------------------------------- report


def _pct(value: float) -> str:
    return f"{value:.0%}"


def row_line(row: MethodRow, measured: dict | None, base: dict | None) -> str:
    """One table line: the judged rates, the change of preservation against the base model, the cost."""
    if measured is None:
        return f"| {row.label} | not run |||||||||"
    cost = measured.get("cost")
    if cost is not None and "error" in cost:
        return f"| {row.label} | {cost['error']} |||||||||"
    fidelity, composition, kept = measured["fidelity"], measured["composition"], measured["preservation"]
    change = "–" if base is None or row.method is None else f"{100 * (kept['all'] - base['preservation']['all']):+.0f} pt"
    spent = ("–", "–", "–") if cost is None else (f"{cost['seconds']:.0f} ({cost['steps']} steps)",
                                                   f"{cost['peak_rss_delta_mib']:.0f}",
                                                   f"{cost['megabytes']:.3g}")
    return (f"| {row.label} | **{_pct(fidelity['shape'])}** | {_pct(composition['shape'])} | {_pct(composition['all'])} | "
            f"**{_pct(kept['all'])}** | {change} | {_pct(kept['shape'])} / {_pct(kept['colour'])} / "
            f"{_pct(kept['position'])} | {spent[0]} | {spent[1]} | {spent[2]} |")


def table(report: dict) -> str:
    arguments, palette = report["arguments"], report["renderer_training_palette"]
    lines = [
        "# Personalization: fidelity, compositionality, prior preservation and cost per method",
        "",
        (f"Model `{report['model']}` on {report['device']} ({report['device_name']}, {report['torch_threads']} torch "
         f"threads); judged pictures: DDIM {report['steps']} steps, prompt weight {report['guidance_scale']:g}, fixed "
         f"seeds (0..n-1), the concept loaded at scale 1. Each method trains once per concept with its recipe "
         f"(studio.personalize.spec.RECIPES{'' if arguments['recipe'] == '{}' else ', overridden by ' + arguments['recipe']}) "
         f"on {arguments['images']} rendered pictures (class word '{report['class_word']}', no preview samples), in a "
         f"child process through the Personalize job (studio.personalize.job, what Engine.personalize runs); Custom "
         f"Diffusion trains both shapes jointly once and appears in both tables. Measuring time: "
         f"{sum(v for k, v in report['seconds'].items() if k != 'total') / 60:.1f} min: "
         + " then ".join(f"`{command}`" for command in [*report.get("resumed", []), report["command"]]) + "."),
        "",
        ("Fidelity: the fidelity prompt's pictures judged the concept's shape by pixels (studio.shapes.judge."
         "judge_concept_shape: a star is an outline whose strongest harmonic is the fifth, a heart a nearly convex "
         "outline with one or two notches). Composition: prompts in colours and on "
         "backgrounds no training picture had, at sizes and positions none showed (the renderer's training palette "
         f"never draws the colours {', '.join(c for c in COLOURS if c not in palette['colours'])} nor the backgrounds "
         f"{', '.join(c for c in COLOURS if c not in palette['backgrounds'])}); 'shape' = the concept drawn, 'all "
         "named' = shape, colour, background, size and position all right. Preservation: circle / square / triangle "
         "prompts, 'all' = shape, colour, position and background right, the change against the base model in "
         "percentage points. Seconds: the training job alone (model loading excluded). Peak RSS: the training "
         "process's ru_maxrss (os.wait4) less its ru_maxrss once the model was loaded, MiB. MB: the files that load "
         "(diffusers layout)."),
    ]
    for word, concept in report["concepts"].items():
        measured = concept["rows"]
        base = measured.get("base")
        prompts, seen = concept["prompts"], concept["seen_in_training"]
        lines += [
            "", f"## {word}", "",
            (f"Training pictures: colours {', '.join(seen['colours'])}; backgrounds {', '.join(seen['backgrounds'])}; "
             f"size and position " + ", ".join(" ".join(pair) for pair in seen["placements"]) + "."),
            "",
            (f"Fidelity: '{prompts['fidelity']}' x {arguments['seeds']} seeds. Composition ({arguments['compose_seeds']} "
             f"seeds each): " + "; ".join(f"'{p}'" for p in prompts["composition"]) + "."),
            "",
            ("| method | fidelity | composition: shape | composition: all named | preservation: all | vs base | "
             "preservation shape / colour / position | seconds | peak RSS MiB | MB |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [row_line(row, measured.get(row.key), base) for row in METHOD_ROWS]
        shown = [row for row in METHOD_ROWS if "fidelity" in measured.get(row.key, {})]
        if shown:
            lines += ["", f"The fidelity pictures, seeds 0..{arguments['seeds'] - 1} from the left:", ""]
            for row in shown:
                lines += [f"{row.label}  \n![{row.label}: '{prompts['fidelity']}']"
                          f"({strip_name(word, row.key)})", ""]
    lines += ["", (f"Preservation prompts ({arguments['preserve_seeds']} seeds each): "
                   + "; ".join(f"'{p}'" for p in report["preservation_prompts"]) + ".")]
    goals = report["goal"]
    if goals:
        lines += ["", f"Goal: Textual Inversion and LoRA teach a star in under {GOAL_SECONDS // 60} minutes on 2 CPU "
                      "cores (the star's fidelity above the base model's):", ""]
        lines += [f"- {line['measure']}: {line['seconds']:.0f} s, fidelity {_pct(line['fidelity'])} vs "
                  f"{_pct(line['base_fidelity'])} untrained: {'yes' if line['met'] else '**no**'}" for line in goals]
    return "\n".join(lines) + "\n"


def goal_lines(report: dict) -> list[dict]:
    """The 3-minute goal per concept for Textual Inversion and LoRA, where they ran (also run_all's summary lines)."""
    lines = []
    for word, concept in report["concepts"].items():
        base = concept["rows"].get("base")
        for key in GOAL_METHODS:
            measured = concept["rows"].get(key)
            if base is None or measured is None or "fidelity" not in measured:
                continue
            seconds, fidelity = measured["cost"]["seconds"], measured["fidelity"]["shape"]
            lines.append({"measure": f"{ROWS[key].label} teaches a {word}", "word": word, "method": key,
                          "seconds": seconds, "fidelity": fidelity,
                          "base_fidelity": base["fidelity"]["shape"],
                          "met": seconds < GOAL_SECONDS and fidelity > base["fidelity"]["shape"]})
    return lines


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.train:
        train_child(args)
        return None
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python bench/personalize.py", *argv])

    def save(measured: dict) -> dict:
        report = {"command": command, **measured, "goal": goal_lines(measured)}
        (args.out / "personalize.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "personalize.md").write_text(table(report))
        return report

    report = save(measure(args, save))
    print(table(report))
    return report


if __name__ == "__main__":
    main()
