"""Protects: bench/generate_vs_diffusers.py runs end to end and reports a ratio and pixel parity."""

from __future__ import annotations

import json

from bench_scripts import load


def test_bench_reports_ratio_and_parity(tiny_model_dir, tmp_path):
    bench = load("generate_vs_diffusers")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2", "--repeats", "1",
                         "--sd15-size", "0", "--out", str(tmp_path)])

    row = report["rows"][0]
    assert row["max_abs_pixel_difference"] <= 1e-4  # the same images as the pipeline
    assert row["ratio"] > 0 and len(row["seconds"]["engine"]) == 1
    assert json.loads((tmp_path / "generate_vs_diffusers.json").read_text())["rows"][0]["steps"] == 2
    assert "| tiny-sd | 128 | 2 |" in (tmp_path / "generate_vs_diffusers.md").read_text()
