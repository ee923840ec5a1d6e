"""Protects: bench/sdedit_vs_img2img.py runs end to end and reports the ratio against img2img."""

from __future__ import annotations

import json

from bench_scripts import load


def test_bench_reports_the_ratio(tiny_model_dir, tmp_path):
    bench = load("sdedit_vs_img2img")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "4", "--repeats", "1",
                         "--sd15-size", "0", "--out", str(tmp_path)])

    row = report["rows"][0]
    assert row["ratio"] > 0 and len(row["seconds"]["img2img"]) == 1
    assert json.loads((tmp_path / "sdedit_vs_img2img.json").read_text())["rows"][0]["strength"] == 0.6
    assert "| tiny-sd | 128 | 4 | 0.6 |" in (tmp_path / "sdedit_vs_img2img.md").read_text()
