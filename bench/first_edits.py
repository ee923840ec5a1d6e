"""The first edits a user tries on the embedded model, with the defaults before and after issue #16.

Each case is a rendered shapes-world scene (the renderer knows the object's true mask) and a colour edit of its
object ("a big red circle on a blue background" -> "... yellow circle ..."; the first case is the issue's). The
scene is inverted as the Inversion tab does on a first run (its default methods, DDIM and null-text inversion,
at the spec's steps and guidance w), then edited as the editing tabs do on a first try, every other setting
left at its default:

    P2P of the null-text inversion      Prompt-to-Prompt (Hertz et al. 2023) of the tab's default pick for
                                        editing, source prompt = the inversion's caption
    DiffEdit of the null-text inversion DiffEdit (Couairon et al. 2023): Stage I's mask, then Stage II from
    DiffEdit of the DDIM inversion      the inversion's trajectory (sampled at the inversion's w)
    DiffEdit of the image               the image itself (Stage II from its own DDIM inversion, w = 1)

Rows: edit x defaults, "before" (the defaults before #16: inversion at w = 7.5, DiffEdit without pasting the
original pixels outside the mask) and "after" (the specs' defaults now). Columns, means over the cases:

    background PSNR   outside the object's true mask, against the rendered image (dB)
    background kept   the pixel judge reads the scene's background colour (a purple tint fails it)
    success           at least half of the true object's pixels are nearest the target colour
    object IoU        the judged object's mask against the true one: the object kept (0: erased)
    seconds           the edit alone (the inversions' seconds are in the JSON)
    hints             what studio.editing.hints tells the user beside the result

Writes bench/results/first_edits.{json,md}.

    python bench/first_edits.py [--device cpu] [--cases 4] [--steps 50] [--edit-steps 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import device_description, write_results  # noqa: E402
from studio.editing import hints, masks  # noqa: E402
from studio.editing.diffedit import DiffEditSpec  # noqa: E402
from studio.editing.p2p import P2PSpec  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.errors import InvalidInputError  # noqa: E402
from studio.events import DiffEditResult, InversionResult, P2PResult  # noqa: E402
from studio.inversion import Inversion, InversionSpec  # noqa: E402
from studio.metrics import psnr  # noqa: E402
from studio.shapes.judge import PALETTE, PALETTE_NAMES, judge_pixels  # noqa: E402
from studio.shapes.render import Rendering, Scene, make_object, render  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (background, shape, colour, size, position, target colour); the first is the edit
CASES = (
    ("blue", "circle", "red", "big", "left", "yellow"),
    ("green", "square", "red", "big", "right", "yellow"),
    ("white", "triangle", "blue", "big", "center", "red"),
    ("blue", "circle", "red", "small", "center", "yellow"),
    ("black", "square", "green", "big", "left", "purple"),
)
# What changed in #16 (the "before" row keeps the old values; "after" is whatever the specs say now)
BEFORE = {"inversion": {"guidance_scale": 7.5}, "diffedit": {"composite": False}}
EDITS = ("P2P of the null-text inversion", "DiffEdit of the null-text inversion", "DiffEdit of the DDIM inversion",
         "DiffEdit of the image")
DEFAULTS = ("before", "after")
SUCCESS_SHARE = 0.5


def case_of(row: tuple[str, ...]) -> dict:
    background, shape, colour, size, position, target = row
    rendering = render(Scene(background, (make_object(shape, colour, size, position),)))
    return {"rendering": rendering, "background": background, "target_colour": target,
            "source": f"a {size} {colour} {shape} on a {background} background",
            "target": f"a {size} {target} {shape} on a {background} background"}


def measure(rendering: Rendering, background: str, target_colour: str, edited: np.ndarray) -> dict:
    """The edit against the renderer's ground truth (see the module docstring)."""
    true = rendering.masks[0]
    nearest = np.linalg.norm(edited[..., None, :].astype(np.float32) - PALETTE[None, None], axis=-1).argmin(-1)
    share = float((nearest[true] == PALETTE_NAMES.index(target_colour)).mean())
    judged = judge_pixels(edited)
    return {
        "background_psnr": psnr(rendering.image, edited, ~true),
        "background_kept": judged.background == background,
        "success": share >= SUCCESS_SHARE,
        "target_share": share,
        "iou": max((masks.iou(o.mask, true) for o in judged.objects), default=0.0),
    }


def last(events):
    *_, result = events
    return result


def invert(engine: Engine, case: dict, method: str, defaults: str, steps: int | None) -> tuple[Inversion, float]:
    spec = InversionSpec(case["source"], method, **BEFORE["inversion"] if defaults == "before" else {})
    if steps is not None:
        spec = replace(spec, steps=steps)
    started = time.perf_counter()
    result = last(engine.invert(spec, case["rendering"].image))
    assert isinstance(result, InversionResult)
    return result.inversion, time.perf_counter() - started


def edit(engine: Engine, case: dict, name: str, defaults: str, inversions: dict[str, Inversion],
         edit_steps: int | None) -> dict:
    """One edit as the tab runs it on a first try: its measures, seconds and the hints it shows."""
    started = time.perf_counter()
    try:
        if name.startswith("P2P"):
            spec = P2PSpec(source_prompt="", target_prompt=case["target"])
            inversion = inversions["null_text"]
            result = last(engine.p2p(spec, inversion))
            assert isinstance(result, P2PResult)
            edited, shown = result.images[1], hints.p2p_hints(spec, result, inversion)
        else:
            spec = DiffEditSpec(case["source"], case["target"], seed=0,
                                **BEFORE["diffedit"] if defaults == "before" else {})
            if edit_steps is not None:
                spec = replace(spec, steps=edit_steps)
            inversion = None if name.endswith("image") else inversions["ddim" if "DDIM" in name else "null_text"]
            image = case["rendering"].image if inversion is None else None
            result = last(engine.diffedit(spec, image, inversion=inversion))
            assert isinstance(result, DiffEditResult)
            edited = result.images[0]
            shown = hints.diffedit_hints(spec, result, inversion, original=case["rendering"].image)
    except InvalidInputError as error:  # e.g. Stage I found no mask: the user's edit fails with this message
        return {"error": str(error), "background_psnr": None, "background_kept": False, "success": False,
                "target_share": 0.0, "iou": 0.0, "seconds": time.perf_counter() - started, "hints": []}
    seconds = time.perf_counter() - started
    measured = measure(case["rendering"], case["background"], case["target_colour"], np.asarray(edited))
    return {**measured, "seconds": seconds, "hints": [hint.symptom for hint in shown]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded shapes model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cases", type=int, default=len(CASES))
    parser.add_argument("--steps", type=int, default=None, help="inversion steps (default: InversionSpec's)")
    parser.add_argument("--edit-steps", type=int, default=None, help="DiffEdit steps of the image (default: the spec's)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    engine = Engine(args.model, device=args.device)
    rows, inversion_seconds = [], {}
    for index, row in enumerate(CASES[:args.cases]):
        case = case_of(row)
        for defaults in DEFAULTS:
            inversions = {}
            for method in ("ddim", "null_text"):
                inversions[method], inversion_seconds[f"{index}/{defaults}/{method}"] = invert(
                    engine, case, method, defaults, args.steps)
            for name in EDITS:
                measured = edit(engine, case, name, defaults, inversions, args.edit_steps)
                rows.append({"case": index, "source": case["source"], "target": case["target"], "edit": name,
                             "defaults": defaults, **measured})

    summary = []
    for name in EDITS:
        for defaults in DEFAULTS:
            chosen = [r for r in rows if r["edit"] == name and r["defaults"] == defaults]
            measured_psnr = [r["background_psnr"] for r in chosen if r["background_psnr"] is not None]
            summary.append({
                "edit": name, "defaults": defaults,
                "background_psnr": float(np.mean(measured_psnr)) if measured_psnr else None,
                **{key: float(np.mean([r[key] for r in chosen])) for key in ("background_kept", "success", "iou", "seconds")},
                "errors": sum("error" in r for r in chosen),
                "hints": sorted({h for r in chosen for h in r["hints"]}),
            })
    after_inversion = InversionSpec()
    report = {
        "model": engine.model_name, **device_description(engine.device), "cases": args.cases,
        "inversion_steps": args.steps or after_inversion.steps, "before": BEFORE,
        "after": {"inversion": {"guidance_scale": after_inversion.guidance_scale},
                  "diffedit": {"composite": DiffEditSpec("", "").composite}},
        "summary": summary, "rows": rows, "inversion_seconds": inversion_seconds,
    }
    write_results(args.out, "first_edits", report, markdown(report))
    return report


def markdown(report: dict) -> list[str]:
    before, after = report["before"], report["after"]
    lines = [
        f"# The first edits on {report['model']}, defaults before and after issue #16",
        "",
        f"{report['cases']} rendered scenes, a colour edit of the object each (the first: red -> yellow circle on "
        f"blue). Inverted as the Inversion tab does (DDIM and null-text inversion, {report['inversion_steps']} steps), "
        "then edited with every other setting at its default. Before: inversion at w = "
        f"{before['inversion']['guidance_scale']:g}, DiffEdit composite {before['diffedit']['composite']}; after: w = "
        f"{after['inversion']['guidance_scale']:g}, composite {after['diffedit']['composite']}. Device: "
        f"{report['device']} ({report['device_name']}, {report['torch_threads']} threads).",
        "",
        "| edit | defaults | background PSNR (dB) | background kept | success | object IoU | s / edit | hints shown |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["summary"]:
        background = "n/a" if row["background_psnr"] is None else f"{row['background_psnr']:.2f}"
        errors = f" ({row['errors']} refused)" if row["errors"] else ""
        lines.append(f"| {row['edit']} | {row['defaults']} | {background} | {row['background_kept']:.2f} | "
                     f"{row['success']:.2f}{errors} | {row['iou']:.3f} | {row['seconds']:.2f} | "
                     f"{'; '.join(row['hints']) or '-'} |")
    lines += ["", "| case | edit | defaults | background PSNR | background kept | success | IoU |", "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        background = "n/a" if row["background_psnr"] is None else f"{row['background_psnr']:.2f}"
        lines.append(f"| {row['source']} -> {row['target'].split()[2]} | {row['edit']} | {row['defaults']} | "
                     f"{background} | {row['background_kept']} | {row['success']} | {row['iou']:.3f} |")
    return lines


if __name__ == "__main__":
    main()
