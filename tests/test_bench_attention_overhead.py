"""Protects: bench/attention_overhead.py runs end to end and reports the on/off ratio per model."""

from __future__ import annotations

import json

from bench_scripts import load


def test_bench_reports_the_capture_ratio(tiny_model_dir, tmp_path):
    bench = load("attention_overhead")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2", "--repeats", "1",
                         "--sd15-size", "0", "--out", str(tmp_path)])

    row = report["rows"][0]
    assert row["ratio_on_over_off"] > 0 and len(row["seconds"]["on"]) == 1
    assert json.loads((tmp_path / "attention_overhead.json").read_text())["rows"][0]["steps"] == 2
    assert "| tiny-sd | 128 | 2 |" in (tmp_path / "attention_overhead.md").read_text()
