"""Protects: bench/first_edits.py inverts a scene, runs each first edit with the defaults before and after
issue #16, and reports background PSNR, success, object IoU, seconds and the hints shown, per edit x defaults."""

from __future__ import annotations

import json

from bench_scripts import load


def test_bench_tables_each_first_edit_before_and_after_the_new_defaults(tiny_model_dir, tmp_path):
    bench = load("first_edits")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--cases", "1", "--steps", "2",
                         "--edit-steps", "2", "--out", str(tmp_path)])

    assert [(row["edit"], row["defaults"]) for row in report["summary"]] == [
        (edit, defaults) for edit in bench.EDITS for defaults in bench.DEFAULTS]
    for row in report["rows"]:
        assert row["seconds"] > 0 and 0 <= row["iou"] <= 1 and isinstance(row["hints"], list)
    assert report["before"]["inversion"]["guidance_scale"] == 7.5
    assert len(json.loads((tmp_path / "first_edits.json").read_text())["rows"]) == 2 * len(bench.EDITS)
    assert "| P2P of the null-text inversion | before |" in (tmp_path / "first_edits.md").read_text()
