"""A PIE-Bench for the shapes world: every editing tab's edits of rendered images, measured against the renderer's
ground truth.

PIE-Bench (Ju et al. 2024, "PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of Code", ICLR; Table 1)
scores an edit by its structure distance, its background preservation (PSNR, LPIPS, MSE, SSIM outside the
annotated edit mask), its CLIP similarity to the target caption, and the inversion's and edit's cost. Here the
images are rendered shapes-world scenes (studio/shapes/render.py), so every measure is exact instead of estimated:

    the set       EDIT_SET (300) seeded edits, stratified by kind (edit i is of kind KINDS[i % 6]); `--edits N`
                  runs the first N, N / 6 of each kind. Each edit: a source scene, a target scene (one thing
                  changed), their captions in the renderer's grammar, and the true edit region.
    kinds         colour (an object's colour), shape, background (its colour), size (small <-> big, same centre),
                  add (a second object), remove (one of two objects)
    true region   the pixels the edit may change: the pixels where the source and target renderings differ (the
                  anti-aliased seams included), united with the kind's masks: colour, remove: the object's mask;
                  shape, size: the union of the object's source and target masks; add: the new object's mask;
                  background: everything outside the objects' masks (there the objects are what must be kept)
    success       the pixel judge (studio.shapes.judge.judge_pixels) reads the target attribute: colour, shape,
                  size, add: an object of the target's colour and shape whose mask has IoU >= 0.5 with the target
                  object's true mask (a kept small object in a big object's place has IoU ~0.33); background: the
                  judged background is the target's; remove: no judged object covers more than 10% of the removed
                  object's mask. PIE-Bench's CLIP similarity, made a pixel fact.
    background    PSNR outside the true region against the source image (studio.metrics.psnr over those pixels
                  only, capped at PSNR_CAP = 58.9 dB, the PSNR of 8-bit rounding noise: rows that paste the
                  original pixels back match exactly, +inf, and a mean needs finite values), and SSIM as PIE-Bench computes it: studio.metrics.ssim
                  of both images with the true region blacked out
    structure     where the edit keeps the layout: the mean, over the target objects the edit does not move
                  (colour, background: all; shape, size, add: the others; remove: the ones left), of the best IoU
                  of a judged object with the object's true mask; PIE-Bench's DINO structure distance, made exact
    cost          seconds and UNet passes (batched calls, Result.unet_evaluations) of the edit; the inversion it
                  edits is shared by the rows that edit it and reported apart

Rows: every inversion method of studio.inversion.METHODS that Prompt-to-Prompt samples (p2p.EDITABLE_INVERSIONS)
x P2P (Hertz et al. 2023: word swap where the word count is kept, refine for add and remove, which insert or
delete words) and x DiffEdit of that inversion (Couairon et al. 2023, Stage II from its trajectory); DiffEdit of
the image from its own DDIM inversion start and from the noised start; SDEdit (Meng et al. 2022) masked with the
true region and with DiffEdit's found mask (the own-start row's), at each of SDEditSpec's default t0 values and
0.3, 0.5, 0.7 and 0.85 (SDEDIT_T0), one sample; and P2P of the tabs' default inversion (p2p.EDIT_PREFERENCE[0]) made
at other w (GUIDANCE_SWEEP). Every other setting is the spec's default; all run `--steps` steps (25); a row that
edits an inversion names the w it is made (and edited) at, InversionSpec's default unless swept.
Methods P2P does not sample (EDICT, BDIA: their own coupled steps) get no rows; the table says so.

Ranking (the defaults the tabs should take): within a tab and a kind of edit, the rows whose success rate is within
one standard error of the best (sqrt(p (1 - p) / n): on 60 edits 0.67 and 0.72 are 3 edits apart, which that
many edits cannot tell apart), and of those the one with the highest background PSNR, then the fewest seconds
(RANKING, best_row).

Results go to bench/results/edit_bench.{json,md,png} after every edit, so a stopped run is a valid (smaller)
table; `--resume` continues it, running only the (edit, row) pairs it lacks (rows of a method added since), and
`--resume --redo --rows R` runs the rows named R again (a method changed since); the table keeps every row of
the current row set that ran.

    python bench/edit_bench.py [--edits 18] [--steps 25] [--threads 1] [--methods ddim,null_text] [--rows P2P,SDEdit]
                               [--resume]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import device_description  # noqa: E402
from studio import metrics  # noqa: E402
from studio.editing import masks  # noqa: E402
from studio.editing.diffedit import DiffEditSpec  # noqa: E402
from studio.editing.p2p import EDIT_PREFERENCE, EDITABLE_INVERSIONS, P2PSpec  # noqa: E402
from studio.editing.sdedit import SDEditSpec  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.errors import InvalidInputError  # noqa: E402
from studio.events import DiffEditResult, InversionResult, P2PResult, Result, SDEditResult  # noqa: E402
from studio.inversion import METHOD_LABELS, METHODS, Inversion, InversionSpec  # noqa: E402
from studio.plots import line_chart, side_by_side  # noqa: E402
from studio.shapes.judge import Judgement, judge_pixels  # noqa: E402
from studio.shapes.render import (  # noqa: E402
    HALF_EXTENT,
    Rendering,
    Scene,
    boxes_overlap,
    caption,
    is_held_out,
    make_object,
    render,
    sample_scene,
)
from studio.shapes.vocabulary import COLOURS, POSITIONS, SHAPES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("colour", "shape", "background", "size", "add", "remove")
EDIT_SET = 300  # the full set: 50 edits of each kind
DEFAULT_EDITS = 18  # the committed run (3 of each kind): the .md says how long it took at 1 thread
SEED = 2026
MATCH_IOU = 0.5  # a judged object is the target object when their masks overlap this much
REMOVED_SHARE = 0.1  # a removed object is gone when no judged object covers more of its mask than this
PSNR_CAP = 10 * math.log10(255**2 * 12)  # 58.9 dB: the PSNR of 8-bit rounding noise (MSE 1/12)
TABS = ("P2P", "DiffEdit", "SDEdit")
# The w the default inversion (EDIT_PREFERENCE[0]) is made and edited at, InversionSpec's among them (SD's 7.5
# included); the t0 SDEdit runs from (Meng et al. 2022's [0.3, 0.6] and beyond)
GUIDANCE_SWEEP = (2.0, 3.0, 5.0, 7.5)
SDEDIT_T0 = (0.3, 0.5, 0.7, 0.85)
RANKING = ("of the rows within one standard error of the best success rate, the highest background PSNR, then the "
           "fewest seconds per edit")
# How to read the rows (printed under the tables)
READING = (
    "- *SDEdit · true mask* is an oracle: the mask a user would paint perfectly, with the original pixels pasted "
    "back outside it (SDEditSpec's composite), so its background is exact by construction; *DiffEdit's mask* is "
    "the same edit with the mask DiffEdit's Stage I finds (the own-start row's).",
    "- DiffEdit of an inversion starts Stage II from the inversion's trajectory and follows it off the mask; inside "
    "it, DDPM inversion's rows step with its corrections, the others with the masked DDIM step. DiffEdit takes no "
    "source hook, and Direct Inversion's trajectory is DDIM inversion's at w = 1, so those two rows are the same edit.",
    "- A refused edit (DiffEdit's Stage I: every pixel deviates, as on background edits) counts as a failure and "
    "has no background or structure figure.",
)
# Ju et al. 2024, Table 1: Prompt-to-Prompt editing, background PSNR (dB) on PIE-Bench, per inversion
PUBLISHED_P2P_PSNR = {"ddim": 17.87, "null_text": 27.03, "negative_prompt": 26.21, "direct": 27.22}


# --------------------------------------------------------------------------------------------
# The set: seeded edits with their ground truth


class EditCase(NamedTuple):  # NamedTuples: bench scripts load without a sys.modules entry, which dataclasses need
    index: int
    kind: str
    source: Rendering
    target: Rendering
    source_caption: str
    target_caption: str
    region: np.ndarray  # (H, W) bool: the pixels the edit may change (see the module docstring)
    edited: int  # the target object judged (colour, shape, size, add), the source object removed; -1: background
    kept: tuple[int, ...]  # target objects whose masks the edit keeps (the structure measure)


def _scene(rng: np.random.Generator, objects: int | None) -> Scene:
    """A training-distribution scene (sample_scene) with exactly `objects` objects (None: one or two)."""
    while True:
        scene = sample_scene(rng, max_objects=2)
        if objects is None or len(scene.objects) == objects:
            return scene


def _pick(rng: np.random.Generator, options: list[str]) -> str | None:
    return str(options[rng.integers(len(options))]) if options else None


def _swap(scene: Scene, k: int, **change) -> tuple[Scene, int]:
    objects = list(scene.objects)
    objects[k] = replace(objects[k], **change)
    return Scene(scene.background, tuple(objects)), k


def _propose(kind: str, rng: np.random.Generator) -> tuple[Scene, Scene, int] | None:
    """One candidate (source, target, edited) of a kind, or None when the drawn scene does not allow it."""
    source = _scene(rng, {"add": 1, "remove": 2}.get(kind))
    k = int(rng.integers(len(source.objects)))
    obj, others = source.objects[k], [o for i, o in enumerate(source.objects) if i != k]
    if kind == "colour":
        new = _pick(rng, [c for c in COLOURS if c not in {source.background, *(o.colour for o in source.objects)}])
        return None if new is None else (source, *_swap(source, k, colour=new))
    if kind == "shape":
        return (source, *_swap(source, k, shape=_pick(rng, [s for s in SHAPES if s != obj.shape])))
    if kind == "size":
        new = "small" if obj.size == "big" else "big"
        target, _ = _swap(source, k, size=new, half_extent=obj.half_extent * HALF_EXTENT[new] / HALF_EXTENT[obj.size])
        return None if any(boxes_overlap(target.objects[k], o) for o in others) else (source, target, k)
    if kind == "background":
        new = _pick(rng, [c for c in COLOURS if c not in {source.background, *(o.colour for o in source.objects)}])
        return None if new is None else (source, Scene(new, source.objects), -1)
    if kind == "add":
        colour = _pick(rng, [c for c in COLOURS if c not in {source.background, obj.colour}])
        position = _pick(rng, [p for p in POSITIONS if p != obj.position])
        added = make_object(_pick(rng, list(SHAPES)), colour, _pick(rng, ["small", "big"]), position, rng)
        if boxes_overlap(added, obj):
            return None
        return source, Scene(source.background, (obj, added)), 1
    return source, Scene(source.background, tuple(others)), k  # remove


def edit_region(kind: str, source: Rendering, target: Rendering, edited: int) -> np.ndarray:
    """The true edit region (the module docstring): the kind's masks and every pixel the renderings disagree on."""
    differs = (source.image != target.image).any(axis=-1)
    if kind == "background":
        kind_masks = ~source.masks.any(axis=0)
    elif kind in ("colour", "remove"):
        kind_masks = source.masks[edited]
    elif kind == "add":
        kind_masks = target.masks[edited]
    else:  # shape, size
        kind_masks = source.masks[edited] | target.masks[edited]
    return kind_masks | differs


def edit_case(index: int) -> EditCase:
    """Edit `index` of the fixed set: of kind KINDS[index % 6], drawn from its own seed (SEED, index)."""
    kind = KINDS[index % len(KINDS)]
    rng = np.random.default_rng([SEED, index])
    while True:
        proposed = _propose(kind, rng)
        if proposed is not None and not is_held_out(proposed[1]):
            break
    source_scene, target_scene, edited = proposed
    source, target = render(source_scene), render(target_scene)
    moved = {"colour": (), "background": (), "remove": ()}.get(kind, (edited,))
    kept = tuple(j for j in range(len(target_scene.objects)) if j not in moved)
    return EditCase(index, kind, source, target, caption(source_scene), caption(target_scene),
                    edit_region(kind, source, target, edited), edited, kept)


# --------------------------------------------------------------------------------------------
# Measures


def region_psnr(reference: np.ndarray, image: np.ndarray, keep: np.ndarray) -> float:
    """studio.metrics.psnr over the kept pixels, at most PSNR_CAP: a closer match (an exact one is +inf) is kept
    to within 8-bit rounding, and a mean over edits needs finite values."""
    return min(metrics.psnr(reference, image, keep), PSNR_CAP)


def region_ssim(reference: np.ndarray, image: np.ndarray, keep: np.ndarray) -> float:
    """SSIM as PIE-Bench computes it: both images with the edit region blacked out."""
    return metrics.ssim(reference * keep[..., None], image * keep[..., None])


def succeeded(case: EditCase, judged: Judgement) -> bool:
    """Does the pixel judge read the target attribute (the module docstring)?"""
    if case.kind == "background":
        return judged.background == case.target.scene.background
    if case.kind == "remove":
        removed = case.source.masks[case.edited]
        return all((o.mask & removed).sum() <= REMOVED_SHARE * removed.sum() for o in judged.objects)
    wanted, true = case.target.scene.objects[case.edited], case.target.masks[case.edited]
    return any(masks.iou(o.mask, true) >= MATCH_IOU and o.colour == wanted.colour and o.shape == wanted.shape
               for o in judged.objects)


def structure_iou(case: EditCase, judged: Judgement) -> float | None:
    """Mean best IoU of a judged object with each kept target object's mask; None when the edit keeps none."""
    if not case.kept:
        return None
    return float(np.mean([max((masks.iou(o.mask, case.target.masks[j]) for o in judged.objects), default=0.0)
                          for j in case.kept]))


def measure(case: EditCase, edited: np.ndarray) -> dict:
    judged, keep = judge_pixels(edited), ~case.region
    return {"success": succeeded(case, judged), "background_psnr": region_psnr(case.source.image, edited, keep),
            "background_ssim": region_ssim(case.source.image, edited, keep),
            "structure_iou": structure_iou(case, judged)}


# --------------------------------------------------------------------------------------------
# Rows: each edits one case through the engine's public jobs


class Row(NamedTuple):
    name: str
    tab: str  # the editing tab whose defaults it informs
    method: str | None = None  # the inversion it edits
    start: str = "inversion"  # DiffEdit of the image: Stage II's start
    mask: str = ""  # SDEdit: "true" (the true region) or "found" (DiffEdit's own-start mask)
    t0: float = 0.0  # SDEdit's strength
    inversion_guidance: float = 0.0  # the w the inversion is made (and edited) at

    @property
    def uses_found_mask(self) -> bool:
        """SDEdit with DiffEdit's mask, and DiffEdit of an inversion: both take the own-start row's mask."""
        return self.mask == "found" or (self.tab == "DiffEdit" and self.method is not None)

    @property
    def inversion(self) -> str:
        """The key of the inversion it edits: the method and its w."""
        return f"{self.method} · w {self.inversion_guidance:g}"


OWN_START = "DiffEdit · own inversion start"  # its mask is the SDEdit "found" rows' mask


def p2p_row(method: str, guidance: float) -> str:
    """The name of the row that edits `method`'s inversion made at w = `guidance` with Prompt-to-Prompt."""
    return f"P2P · {METHOD_LABELS[method]} · w {guidance:g}"


def rows_for(methods: list[str], names: tuple[str, ...] = ()) -> list[Row]:
    """The rows the bench runs for these inversion methods (the module docstring), in running order; with `names`,
    only the rows whose name contains one of them (and the own-start DiffEdit whose mask SDEdit's "found" rows use)."""
    editable = [m for m in methods if m in EDITABLE_INVERSIONS]
    default = InversionSpec().guidance_scale
    swept = [m for m in editable if m == EDIT_PREFERENCE[0]]  # the tabs' default inversion, at other w
    rows = [
        *(Row(p2p_row(m, default), "P2P", method=m, inversion_guidance=default) for m in editable),
        *(Row(p2p_row(m, w), "P2P", method=m, inversion_guidance=w)
          for m in swept for w in GUIDANCE_SWEEP if w != default),
        Row(OWN_START, "DiffEdit", start="inversion"),
        Row("DiffEdit · noised start", "DiffEdit", start="noise"),
        *(Row(f"DiffEdit · {METHOD_LABELS[m]} · w {default:g}", "DiffEdit", method=m, inversion_guidance=default)
          for m in editable),
        *(Row(f"SDEdit · {label} · t0 {t0:g}", "SDEdit", mask=mask, t0=t0)
          for mask, label in (("true", "true mask"), ("found", "DiffEdit's mask")) for t0 in SDEDIT_T0),
    ]
    if not names:
        return rows
    chosen = [row for row in rows if any(name in row.name for name in names)]
    needs_mask = any(row.uses_found_mask for row in chosen)
    return [row for row in rows if row in chosen or (needs_mask and row.name == OWN_START)]


def last(events) -> Result:
    *_, result = events
    return result


def invert(engine: Engine, case: EditCase, method: str, steps: int, guidance: float) -> tuple[Inversion, dict]:
    started = time.perf_counter()
    spec = InversionSpec(case.source_caption, method, steps=steps, guidance_scale=guidance)
    result = last(engine.invert(spec, case.source.image))
    assert isinstance(result, InversionResult)
    return result.inversion, {"seconds": time.perf_counter() - started, "unet_passes": result.unet_evaluations,
                              "reconstruction_psnr": result.psnr}


def run_row(engine: Engine, row: Row, case: EditCase, inversions: dict[str, Inversion], found: np.ndarray | None,
            steps: int) -> tuple[np.ndarray, Result]:
    """The edited image (H, W, 3) uint8 and the job's result."""
    if row.tab == "P2P":
        edit = "word swap" if len(case.source_caption.split()) == len(case.target_caption.split()) else "refine"
        result = last(engine.p2p(P2PSpec("", case.target_caption, edit=edit), inversions[row.inversion]))
        assert isinstance(result, P2PResult)
        return np.asarray(result.images[1]), result
    if row.tab == "DiffEdit":
        spec = DiffEditSpec(case.source_caption, case.target_caption, steps=steps, start=row.start, seed=case.index)
        if row.method is None:
            result = last(engine.diffedit(spec, case.source.image))
        else:  # Stage I found the same mask on the same image in the own-start row: given, not searched again
            result = last(engine.diffedit(spec, mask=found, inversion=inversions[row.inversion]))
        assert isinstance(result, DiffEditResult)
        return np.asarray(result.images[0]), result
    mask = case.region if row.mask == "true" else found
    spec = SDEditSpec(case.target_caption, strengths=(row.t0,), repeats=1, seed=case.index, steps=steps)
    result = last(engine.sdedit(spec, case.source.image, mask=mask))
    assert isinstance(result, SDEditResult)
    return np.asarray(result.images[0]), result


def run_case(engine: Engine, case: EditCase, rows: list[Row], record: dict, steps: int) -> None:
    """Fill `record` with the rows it lacks: one inversion per method those rows edit, then each row."""
    todo = [row for row in rows if row.name not in record["rows"]]
    if any(row.uses_found_mask for row in todo) and OWN_START not in [row.name for row in todo]:
        todo.insert(0, next(row for row in rows if row.name == OWN_START))  # its mask is not stored: find it again
    inversions = {}
    for row in {row.inversion: row for row in todo if row.method is not None}.values():
        inversions[row.inversion], record["inversions"][row.inversion] = invert(
            engine, case, row.method, steps, row.inversion_guidance)
    found = None
    for row in todo:
        if row.uses_found_mask and found is None:
            record["rows"][row.name] = {"error": "DiffEdit's own-start row found no mask", "success": False}
            continue
        started = time.perf_counter()
        try:
            edited, result = run_row(engine, row, case, inversions, found, steps)
        except InvalidInputError as error:  # e.g. Stage I found no mask: the user's edit fails with this message
            record["rows"][row.name] = {"error": str(error), "success": False}
            continue
        record["rows"][row.name] = {**measure(case, edited), "seconds": time.perf_counter() - started,
                                    "unet_passes": result.unet_evaluations}
        if row.name == OWN_START:
            found = result.mask


# --------------------------------------------------------------------------------------------
# Summary, ranking, the published ordering


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(records: list[dict], rows: list[Row]) -> dict:
    """Per row, per kind and overall: edits, success rate, background PSNR / SSIM, structure IoU, seconds, passes."""
    summary = {}
    for row in rows:
        summary[row.name] = {}
        for kind in (*KINDS, "overall"):
            cells = [r["rows"][row.name] for r in records
                     if row.name in r["rows"] and kind in (r["kind"], "overall")]
            inversion = [r["inversions"][row.inversion]["seconds"] for r in records
                         if row.inversion in r["inversions"] and kind in (r["kind"], "overall")]
            summary[row.name][kind] = {
                "edits": len(cells), "refused": sum("error" in c for c in cells),
                "success": _mean([float(c["success"]) for c in cells]),
                **{key: _mean([c.get(key) for c in cells])
                   for key in ("background_psnr", "background_ssim", "structure_iou", "seconds", "unet_passes")},
                "inversion_seconds": _mean(inversion),
            }
    return summary


def best_row(cells: dict) -> object | None:
    """RANKING: the key of the best of these cells (summary cells of one kind), None when none ran an edit."""
    cells = {key: cell for key, cell in cells.items() if cell["edits"]}
    if not cells:
        return None
    top = max(cells.values(), key=lambda cell: cell["success"] or 0.0)
    p = top["success"] or 0.0
    tied = [key for key, cell in cells.items()
            if (cell["success"] or 0.0) >= p - math.sqrt(p * (1 - p) / top["edits"]) - 1e-9]
    return max(tied, key=lambda key: (cells[key]["background_psnr"] or 0.0, -(cells[key]["seconds"] or math.inf)))


def ranked(cells: dict) -> list:
    """The keys of these cells best first: RANKING's best, then the best of the rest, and so on."""
    order, rest = [], dict(cells)
    while rest and (key := best_row(rest)) is not None:
        order.append(key)
        del rest[key]
    return order


def best_rows(summary: dict, rows: list[Row]) -> dict:
    """Per tab and kind (and overall): the row RANKING puts first."""
    return {tab: {kind: best_row({r.name: summary[r.name][kind] for r in rows if r.tab == tab})
                  for kind in (*KINDS, "overall")}
            for tab in TABS}


def published_ordering(summary: dict) -> dict:
    """Our P2P background PSNR per inversion beside Ju et al.'s, both orderings, and the pairs they agree on."""
    rows = {m: summary.get(p2p_row(m, InversionSpec().guidance_scale), {}).get("overall") for m in PUBLISHED_P2P_PSNR}
    ours = {m: cell["background_psnr"] for m, cell in rows.items() if cell and cell["edits"]}
    shared = list(ours)
    pairs = [(a, b) for i, a in enumerate(shared) for b in shared[i + 1:]]
    agree = [(a, b) for a, b in pairs
             if (ours[a] - ours[b]) * (PUBLISHED_P2P_PSNR[a] - PUBLISHED_P2P_PSNR[b]) > 0]
    return {"ours": ours, "published": {m: PUBLISHED_P2P_PSNR[m] for m in shared},
            "our_order": sorted(shared, key=lambda m: -ours[m]),
            "published_order": sorted(shared, key=lambda m: -PUBLISHED_P2P_PSNR[m]),
            "pairs": len(pairs), "pairs_agreeing": [list(p) for p in agree]}


# --------------------------------------------------------------------------------------------
# Output


def _number(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def markdown(report: dict) -> list[str]:
    summary, rows = report["summary"], report["row_names"]
    counts = {kind: sum(r["kind"] == kind for r in report["records"]) for kind in KINDS}
    lines = [
        f"# Edit bench: a PIE-Bench for the shapes world on {report['model']}",
        "",
        f"**{len(report['records'])} edits ran** of the {EDIT_SET}-edit set ("
        + ", ".join(f"{counts[k]} {k}" for k in KINDS) + f"), {report['steps']} steps everywhere, inversions at the w "
        f"their rows name (InversionSpec's default w = {report['inversion_guidance']:g}), every other setting the "
        "spec's default. Device: "
        f"{report['device']} ({report['device_name']}, {report['torch_threads']} thread(s)); "
        f"{report['wall_seconds'] / 60:.1f} minutes of edits and inversions. Made by: "
        + "; then ".join(f"`{command}`" for command in report["commands"]) + ".",
        "",
        "Metrics (bench/edit_bench.py's docstring has the definitions): success = the pixel judge reads the target "
        "attribute; background PSNR / SSIM outside the true edit region (PSNR capped at "
        f"{PSNR_CAP:.1f} dB, 8-bit rounding noise: pasted-back pixels match exactly; SSIM with the region blacked out, as PIE-Bench); structure = mean IoU of the objects "
        "the edit keeps; seconds and UNet passes of the edit alone; inversion seconds of the inversion it edits "
        "(shared by that method's rows).",
        "",
        "## Overall",
        "",
        "| row | edits | success | background PSNR (dB) | background SSIM | structure IoU | s / edit | UNet passes "
        "/ edit | inversion s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in rows:
        cell = summary[name]["overall"]
        refused = f" ({cell['refused']} refused)" if cell["refused"] else ""
        lines.append(f"| {name} | {cell['edits']}{refused} | {_number(cell['success'], '.2f')} | "
                     f"{_number(cell['background_psnr'], '.2f')} | {_number(cell['background_ssim'], '.3f')} | "
                     f"{_number(cell['structure_iou'], '.3f')} | {_number(cell['seconds'], '.2f')} | "
                     f"{_number(cell['unet_passes'], '.0f')} | {_number(cell['inversion_seconds'], '.2f')} |")
    lines += ["", "## Per kind of edit: success / background PSNR (dB) / structure IoU", "",
              "| row | " + " | ".join(f"{k} ({counts[k]})" for k in KINDS) + " |",
              "|---|" + "---|" * len(KINDS)]
    for name in rows:
        cells = [summary[name][k] for k in KINDS]
        lines.append(f"| {name} | " + " | ".join(
            f"{_number(c['success'], '.2f')} / {_number(c['background_psnr'], '.1f')} / "
            f"{_number(c['structure_iou'], '.2f')}" for c in cells) + " |")
    lines += ["", f"Not rowed: {report['not_editable']}", "", *READING, "",
              "## Best-ranked row per tab and kind of edit", "", f"Ranking rule: {RANKING}.", "",
              "| tab | " + " | ".join((*KINDS, "overall")) + " |", "|---|" + "---|" * (len(KINDS) + 1)]
    for tab, best in report["best"].items():
        lines.append(f"| {tab} | " + " | ".join(best[k] or "–" for k in (*KINDS, "overall")) + " |")
    ordering = report["published_ordering"]
    lines += ["", "## Beside the published PIE-Bench ordering (Ju et al. 2024, Table 1, P2P background PSNR)", "",
              f"Ours at InversionSpec's default w = {report['inversion_guidance']:g}; PIE-Bench's at SD's 7.5.", "",
              "| inversion | ours (dB) | PIE-Bench (dB) |", "|---|---|---|"]
    for method in ordering["published_order"]:
        lines.append(f"| {METHOD_LABELS[method]} | {ordering['ours'][method]:.2f} | {ordering['published'][method]:.2f} |")
    lines += ["", ordering_sentence(ordering), "", "![edit bench](edit_bench.png)"]
    return lines


def ordering_sentence(ordering: dict) -> str:
    label = lambda methods: " > ".join(METHOD_LABELS[m] for m in methods)  # noqa: E731
    agree = ", ".join(f"{METHOD_LABELS[a]} vs {METHOD_LABELS[b]}" for a, b in ordering["pairs_agreeing"]) or "none"
    return (f"Ours: {label(ordering['our_order'])}; published: {label(ordering['published_order'])}. "
            f"{len(ordering['pairs_agreeing'])} of {ordering['pairs']} pairs are ordered alike ({agree}).")


def figure(report: dict):
    """Left: success vs background PSNR, a point per row (overall); right: success per kind, a line per tab's best."""
    summary = report["summary"]
    def percent(cell: dict) -> float:
        return math.nan if cell["success"] is None else 100 * cell["success"]  # nan: no edit of that kind ran

    scatter = {name: ([summary[name]["overall"]["background_psnr"] or math.nan], [percent(summary[name]["overall"])])
               for name in report["row_names"]}
    per_kind = {f"{tab}: {name}": (list(range(1, len(KINDS) + 1)), [percent(summary[name][k]) for k in KINDS])
                for tab, best in report["best"].items() if (name := best["overall"])}
    return side_by_side([
        line_chart(scatter, "background PSNR (dB)", "success %", "every row, overall", size=(520, 300),
                   markers=True, y_range=(0, 100)),
        line_chart(per_kind, "kind: " + ", ".join(f"{i} {k}" for i, k in enumerate(KINDS, start=1)), "success %",
                   "each tab's best row, per kind", size=(520, 300), markers=True, y_range=(0, 100)),
    ])


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "edit_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "edit_bench.md").write_text("\n".join(markdown(report)) + "\n")
    figure(report).save(out / "edit_bench.png")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded shapes model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--edits", type=int, default=DEFAULT_EDITS, help=f"the first N of the {EDIT_SET}-edit set")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--methods", default="", help=f"comma-separated subset of {', '.join(METHODS)} (default all)")
    parser.add_argument("--rows", default="", help="comma-separated parts of row names: run only those rows")
    parser.add_argument("--resume", action="store_true", help="keep the (edit, row) results already in --out")
    parser.add_argument("--redo", action="store_true",
                        help="with --resume and --rows: run those rows again (a method changed since), keeping the rest")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 1 <= args.edits <= EDIT_SET:
        parser.error(f"--edits must be between 1 and {EDIT_SET}")
    methods = [m for m in args.methods.split(",") if m] or list(METHODS)
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s): {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    engine = Engine(args.model, device=args.device)
    rows = rows_for(methods, tuple(n for n in args.rows.split(",") if n))
    if not rows:
        parser.error(f"--rows {args.rows!r} names no row; rows are named like {rows_for(methods)[0].name!r}")
    previous = json.loads((args.out / "edit_bench.json").read_text()) if args.resume and (
        args.out / "edit_bench.json").is_file() else {}
    if previous and previous["steps"] != args.steps:
        parser.error(f"--resume: the results in {args.out} ran {previous['steps']} steps, not {args.steps}")
    if args.redo and not (args.resume and args.rows):
        parser.error("--redo reruns the --rows rows of a --resume'd run: give both")
    done = {r["index"]: r for r in previous.get("records", [])}
    named = [row.name for row in rows if any(name in row.name for name in args.rows.split(",") if name)]
    for record in done.values() if args.redo else ():
        for name in named:  # not the own-start row --rows adds for its mask alone
            record["rows"].pop(name, None)
    # the table: every row of these methods that ran before or runs now (--rows runs some, reports all)
    reported = [row for row in rows_for(methods)
                if row in rows or any(row.name in r["rows"] for r in done.values())]
    not_editable = [METHOD_LABELS[m] for m in methods if m not in EDITABLE_INVERSIONS]
    report = {
        "model": engine.model_name, **device_description(engine.device), "steps": args.steps, "edit_set": EDIT_SET,
        "inversion_guidance": InversionSpec().guidance_scale, "methods": methods,
        # the plain baseline every PIE-Bench table starts from (bench/run_all.py reads it as the peer)
        "peer_row": p2p_row("ddim", InversionSpec().guidance_scale),
        "commands": [*previous.get("commands", []),  # a resumed run: every part's command
                     "python bench/edit_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])],
        "not_editable": (", ".join(not_editable) + ": Prompt-to-Prompt does not sample them (their own coupled "
                         "steps; the engine refuses), so no P2P or DiffEdit-of-the-inversion rows.")
                        if not_editable else "none (every method is edited).",
        "row_names": [row.name for row in reported], "ranking": RANKING,
        "wall_seconds": previous.get("wall_seconds", 0.0), "records": [],
    }
    for index in range(args.edits):
        case = edit_case(index)
        record = done.get(index) or {"index": index, "kind": case.kind, "source": case.source_caption,
                                     "target": case.target_caption, "rows": {}, "inversions": {}}
        started = time.perf_counter()
        run_case(engine, case, rows, record, args.steps)
        report["wall_seconds"] += time.perf_counter() - started
        report["records"].append(record)
        report["summary"] = summarise(report["records"], reported)
        report["best"] = best_rows(report["summary"], reported)
        report["published_ordering"] = published_ordering(report["summary"])
        write(args.out, report)
        print(f"edit {index + 1}/{args.edits} ({case.kind}) done, {report['wall_seconds'] / 60:.1f} min", flush=True)
    print("\n".join(markdown(report)))
    return report


if __name__ == "__main__":
    main()
