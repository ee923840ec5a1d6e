"""Protects: bench/diffedit.py runs both DiffEdits end to end and reports IoU, success, PSNR and a time ratio."""

from __future__ import annotations

import json

from bench_scripts import load


def test_bench_compares_with_diffusers_diffedit(tiny_model_dir, tmp_path):
    bench = load("diffedit")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--cases", "1", "--steps", "2",
                         "--repeats", "1", "--out", str(tmp_path)])

    for side in ("ours", "diffusers"):
        row = report["summary"][side]
        assert 0 <= row["iou"] <= 1 and row["median_seconds"] > 0
    # the same edit decoded whole: same mask, its own background figure
    assert report["summary"]["ours_whole_decode"]["iou"] == report["summary"]["ours"]["iou"]
    assert report["time_ratio"] > 0 and len(report["seconds"]["ours"]) == 1
    assert json.loads((tmp_path / "diffedit.json").read_text())["cases"] == 1
    assert "| ours |" in (tmp_path / "diffedit.md").read_text()
    assert "| ours, whole latent decoded |" in (tmp_path / "diffedit.md").read_text()
