"""Every benchmark in one command, then one summary: each line a ratio against the peer doing the same
work, measured in the same run, with its target.

    python bench/run_all.py [--device cuda] [--only generate,attention] [--summary-only]

Runs bench/generate_vs_diffusers.py, attention_overhead.py, sdedit_vs_img2img.py, diffedit.py, p2p.py,
inversion.py, sd15_costs.py, personalize.py and edit_bench.py with their defaults (each writes its own bench/results/<name>.{json,md}), then writes
bench/results/summary.{json,md} from those JSON files. `--summary-only` rebuilds the summary from the
results already there (e.g. after running one benchmark alone).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

Line = dict[str, Any]  # {"measure", "model", "ratio", "target", "detail"}


def _generate(report: dict) -> list[Line]:
    return [{"measure": "plain generation vs StableDiffusionPipeline", "model": f"{r['model']} {r['size']}px",
             "ratio": r["ratio"], "target": report["target_ratio"],
             "detail": f"max pixel difference {r['max_abs_pixel_difference']:.1e}"} for r in report["rows"]]


def _attention(report: dict) -> list[Line]:
    return [{"measure": "generation with attention maps on vs off", "model": f"{r['model']} {r['size']}px",
             "ratio": r["ratio_on_over_off"], "target": report["target_ratio"], "detail": "maps every 5 steps"}
            for r in report["rows"]]


def _sdedit(report: dict) -> list[Line]:
    return [{"measure": "SDEdit vs StableDiffusionImg2ImgPipeline", "model": f"{r['model']} {r['size']}px",
             "ratio": r["ratio"], "target": report["target_ratio"], "detail": f"strength {r['strength']}"}
            for r in report["rows"]]


def _diffedit(report: dict) -> list[Line]:
    ours, theirs = report["summary"]["ours"], report["summary"]["diffusers"]
    return [{"measure": "DiffEdit vs StableDiffusionDiffEditPipeline", "model": report["model"],
             "ratio": report["time_ratio"], "target": report["target_time_ratio"],
             "detail": f"mask IoU {ours['iou']:.3f} vs {theirs['iou']:.3f}, background PSNR "
                       f"{ours['background_psnr']:.2f} vs {theirs['background_psnr']:.2f} dB"}]


def _p2p(report: dict) -> list[Line]:
    cost = report["cost"]
    return [{"measure": "Prompt-to-Prompt step vs batch-4 CFG step", "model": report["model"], "ratio": cost["ratio"],
             "target": 1.3, "detail": f"attention maps held: {cost['p2p_attention_maps_bytes'] / 1024:.0f} KiB"}]


def _sd15_costs(report: dict) -> list[Line]:
    model = f"{report['model']} {report['size']}px {report['dtype']}, {report['steps']} steps"
    s, lines = report["sections"], []
    for key, measure, ratio, target in (("generate", "plain generation vs StableDiffusionPipeline", "ratio", 1.05),
                                        ("attention", "generation with attention maps on vs off", "ratio_on_over_off", 1.25),
                                        ("sdedit", "SDEdit vs StableDiffusionImg2ImgPipeline", "ratio", 1.05),
                                        ("diffedit", "DiffEdit vs StableDiffusionDiffEditPipeline", "ratio", 1.1),
                                        ("p2p", "Prompt-to-Prompt step vs batch-4 CFG step", "ratio", 1.3)):
        if key in s:
            lines.append({"measure": measure, "model": model, "ratio": s[key][ratio], "target": target, "detail": ""})
    for row in s.get("inversion", {}).get("rows", [])[1:]:
        lines.append({"measure": f"{row['method']} inversion seconds vs DDIM inversion", "model": model,
                      "ratio": row["seconds_vs_ddim"], "target": None,
                      "detail": f"UNet passes {row['passes_vs_ddim']:.1f}x DDIM's"})
    if "bf16" in s:
        lines.append({"measure": "plain generation vs StableDiffusionPipeline, both bfloat16", "model": model,
                      "ratio": s["bf16"]["ratio"], "target": 1.05, "detail": ""})
    for key, measure in (("offload", "CPU offload vs resident (seconds)"), ("compile", "torch.compile vs eager (seconds)")):
        if key in s:
            lines.append({"measure": measure, "model": model, "ratio": s[key]["ratio"], "target": None, "detail": ""})
    return lines


def _inversion(report: dict) -> list[Line]:
    by_method: dict[str, list[float]] = {}
    for image in report["images"].values():
        for row in image["rows"]:
            by_method.setdefault(row["method"], []).append(row["seconds_vs_ddim"])
    lines = [{"measure": f"{method} seconds vs DDIM inversion", "model": report["model"],
              "ratio": statistics.median(ratios), "target": None, "detail": f"median over {len(ratios)} images"}
             for method, ratios in by_method.items()
             if not method.startswith(("DDIM inversion (w=1", "NTI reference cut"))]  # the peer; NTI's cost curve
    cost = report["nti_cost"]
    lines.append({"measure": "NTI (ours) vs NTI reference recipe (50 steps x 10 iterations)", "model": report["model"],
                  "ratio": cost["seconds_ratio"], "target": 1 / 3,
                  "detail": f"UNet passes {cost['passes_ratio']:.2f}x, PSNR {cost['psnr_difference_db']:+.2f} dB; "
                            f"{cost['passes_ratio_at_equal_psnr']:.2f}x the passes of the recipe cut to our PSNR"})
    return lines


def _edit_bench(report: dict) -> list[Line]:
    peer = report["peer_row"]
    base, lines = report["summary"][peer]["overall"], []
    for tab, best in report["best"].items():
        if best["overall"] is None:
            continue
        cell = report["summary"][best["overall"]]["overall"]
        lines.append({"measure": f"edit bench, {tab}'s best row ({best['overall']}): seconds per edit vs {peer}",
                      "model": report["model"], "ratio": cell["seconds"] / base["seconds"], "target": None,
                      "detail": f"{len(report['records'])} edits: success {cell['success']:.2f} vs {base['success']:.2f}, "
                                f"background PSNR {cell['background_psnr']:.2f} vs {base['background_psnr']:.2f} dB"})
    return lines


def _personalize(report: dict) -> list[Line]:
    """The goal is a judged concept in time: fast training that teaches nothing misses it (meets_target from the goal)."""
    return [{"measure": f"{goal['measure']}: training seconds vs the {report['goal_seconds'] // 60}-minute goal",
             "model": report["model"], "ratio": goal["seconds"] / report["goal_seconds"], "target": 1.0,
             "meets_target": goal["met"],
             "detail": f"judged a {goal['word']} in {goal['fidelity']:.0%} of pictures (untrained {goal['base_fidelity']:.0%}"
                       f"{'' if goal['met'] else ': not above the untrained model'})"}
            for goal in report["goal"]]


# benchmark script -> (its results files, the summary lines each contributes)
BENCHMARKS: dict[str, tuple[tuple[str, ...], Callable[[dict], list[Line]]]] = {
    "generate_vs_diffusers": (("generate_vs_diffusers.json",), _generate),
    "attention_overhead": (("attention_overhead.json",), _attention),
    "sdedit_vs_img2img": (("sdedit_vs_img2img.json",), _sdedit),
    "diffedit": (("diffedit.json",), _diffedit),
    "p2p": (("p2p.json",), _p2p),
    "inversion": (("inversion.json",), _inversion),
    # SD 1.5's architecture: the CPU row from run_all, the GPU row from a CUDA machine (--device cuda)
    "sd15_costs": (("sd15_costs_cuda.json", "sd15_costs_cpu.json"), _sd15_costs),
    "personalize": (("personalize.json",), _personalize),
    "edit_bench": (("edit_bench.json",), _edit_bench),
}


def run(name: str, argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def summarise(results: Path) -> dict:
    lines: list[Line] = []
    devices = {}
    for filename, extract in ((f, extract) for files, extract in BENCHMARKS.values() for f in files):
        path = results / filename
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        name = path.stem
        device = report.get("device")
        devices[name] = device.get("device_name", device) if isinstance(device, dict) else report.get("device_name", device)
        for line in extract(report):
            if "meets_target" not in line:  # a line may judge itself on more than its ratio
                line["meets_target"] = None if line["target"] is None else line["ratio"] <= line["target"]
            lines.append({"benchmark": name, **line})
    summary = {"devices": devices, "lines": lines}
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = ["# Benchmarks: each line a ratio against its peer, measured in the same run", "",
             "Regenerate with `python bench/run_all.py`; each benchmark's own table (bench/results/<name>.md) has "
             "the method, settings and raw seconds.", "",
             "| measure | model | ratio | target | | detail | benchmark (device) |", "|---|---|---|---|---|---|---|"]
    for line in lines:
        target = "–" if line["target"] is None else f"<= {line['target']:.3g}"
        verdict = {True: "meets", False: "**misses**", None: ""}[line["meets_target"]]
        table.append(f"| {line['measure']} | {line['model']} | {line['ratio']:.3f}x | {target} | {verdict} | "
                     f"{line['detail']} | {line['benchmark']} ({devices[line['benchmark']]}) |")
    (results / "summary.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if not args.summary_only:
        for name in names:
            print(f"== {name}", flush=True)
            run(name, [*(["--device", args.device] if args.device else []), "--out", str(args.out)])
    return summarise(args.out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
