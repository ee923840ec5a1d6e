"""Protects: bench/run_all.py turns every benchmark's committed JSON into one summary of ratios vs targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench_scripts import load

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_summary_has_a_line_per_comparison_of_every_benchmark(tmp_path):
    run_all = load("run_all")
    committed = [f for files, _ in run_all.BENCHMARKS.values() for f in files if (BENCH / "results" / f).is_file()]
    for filename in committed:
        shutil.copy(BENCH / "results" / filename, tmp_path / filename)

    summary = run_all.main(["--summary-only", "--out", str(tmp_path)])

    assert "sd15_costs_cuda.json" in committed  # the GPU row
    assert {line["benchmark"] for line in summary["lines"]} == {Path(f).stem for f in committed}
    for line in summary["lines"]:
        assert line["ratio"] > 0
        if line["benchmark"] != "personalize":
            assert line["meets_target"] is None or line["meets_target"] == (line["ratio"] <= line["target"])
    # a personalization goal is met by a judged concept in time: Textual Inversion is quick and teaches no star
    goals = {line["measure"].split(":")[0]: line for line in summary["lines"] if line["benchmark"] == "personalize"}
    quick_but_no_star = goals["Textual Inversion teaches a star"]
    assert quick_but_no_star["ratio"] < 1 and quick_but_no_star["meets_target"] is False
    assert "not above the untrained model" in quick_but_no_star["detail"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "| plain generation vs StableDiffusionPipeline |" in (tmp_path / "summary.md").read_text()
