"""Protects: bench/guidance_sweep.py runs end to end (tiny model with a classifier, tiny settings) and
writes its table, figure and JSON with every part of the issue #4 measurement."""

from __future__ import annotations

import json

from PIL import Image

from bench_scripts import load


def test_guidance_sweep_runs_and_writes_json_table_and_figure(tiny_classifier_model_dir, tmp_path):
    sweep = load("guidance_sweep")

    report = sweep.main([
        "--model", str(tiny_classifier_model_dir), "--device", "cpu", "--samples", "2", "--steps", "2",
        "--weights", "0,4", "--negative-weights", "0,-4", "--strengths", "0,5", "--out", str(tmp_path),
    ])

    assert json.loads((tmp_path / "guidance_sweep.json").read_text())["samples_per_setting"] == 2
    assert report["judges"] == ["classifier", "pixels"]
    assert [row["weight"] for row in report["weight_sweep"]["rows"]] == [0, 4]
    assert len(report["negative_condition"]["rows"]) == 2
    guided = report["classifier_guidance"]["rows"][1]
    assert guided["gradient_evaluations"] == 1 and guided["classifier_seconds_per_step"] > 0  # step 1 is at zero SNR
    assert "(c) Classifier guidance" in (tmp_path / "guidance_sweep.md").read_text()
    with Image.open(tmp_path / "guidance_sweep.png") as figure:
        assert figure.width == 3 * 340
