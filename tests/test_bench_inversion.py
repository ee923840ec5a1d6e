"""Protects: bench/inversion.py runs end to end (tiny random model, one render and one photograph, three
steps, DDIM + NPI + NTI reference + ours + the reference cut to 1 iteration + EDICT) and writes its JSON and
table with the ceiling row, the ratio to DDIM inversion, the per-image targets and NTI's cost against the
reference recipe, at its full length and cut to our PSNR."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_inversion_bench_runs_and_writes_json_and_table(tiny_model_dir, tmp_path):
    bench = load("inversion")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "3", "--renders", "1",
                         "--photos", "1", "--recipes", "2,3,4,6,10", "--out", str(tmp_path)])

    assert len(json.loads((tmp_path / "inversion.json").read_text())["images"]) == 2
    for measured in report["images"].values():
        methods = [row["method"] for row in measured["rows"]]
        assert methods[0].startswith("DDIM") and "EDICT (fp32)" in methods
        assert measured["rows"][0]["seconds_vs_ddim"] == 1.0
        assert measured["ceiling"]["psnr"] > 0
    cost = report["nti_cost"]
    assert cost["images"] == 2 and cost["passes_ratio"] <= 1.0
    for name, compared in cost["per_image"].items():
        # the reference at our PSNR: the cheapest point of its curve reaching ours, else the full recipe
        rows = {row["method"]: row for row in report["images"][name]["rows"]}
        curve = [rows[label]["psnr"] for label in (bench.cut(1), bench.REFERENCE)]
        reached = [psnr >= rows[bench.OURS]["psnr"] - bench.SAME_RECONSTRUCTION_DB for psnr in curve]
        assert compared["equal_psnr_peer_reached"] == any(reached)
        assert compared["equal_psnr_peer"] == (bench.cut(1) if reached[0] else bench.REFERENCE)
    table = (tmp_path / "inversion.md").read_text()
    for heading in ("VAE encode → decode (ceiling)", "NPI between DDIM and NTI", "ours vs the reference recipe",
                    "reference at our PSNR"):
        assert heading in table
