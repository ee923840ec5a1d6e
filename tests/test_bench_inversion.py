"""Protects: bench/inversion.py runs end to end (tiny random model, one render and one photograph, three
steps, DDIM + NTI reference + ours + EDICT) and writes its JSON and table with the ceiling row, the
ratio to DDIM inversion and NTI's cost against the reference recipe."""

from __future__ import annotations

import json

from bench_scripts import load


def test_inversion_bench_runs_and_writes_json_and_table(tiny_model_dir, tmp_path):
    bench = load("inversion")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "3", "--renders", "1",
                         "--photos", "1", "--recipes", "3,4,6", "--out", str(tmp_path)])

    assert len(json.loads((tmp_path / "inversion.json").read_text())["images"]) == 2
    for measured in report["images"].values():
        methods = [row["method"] for row in measured["rows"]]
        assert methods[0].startswith("DDIM") and "EDICT (fp32)" in methods
        assert measured["rows"][0]["seconds_vs_ddim"] == 1.0
        assert measured["ceiling"]["psnr"] > 0
    assert report["nti_cost"]["images"] == 2 and report["nti_cost"]["passes_ratio"] <= 1.0
    table = (tmp_path / "inversion.md").read_text()
    assert "VAE encode → decode (ceiling)" in table and "ours vs the reference recipe" in table
