"""Protects: bench/sd15_costs.py measures its cost ratios on SD 1.5's full-size architecture and writes
them after each section (slow: it builds the 1-billion-parameter architecture at random init)."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load


@pytest.mark.slow
def test_cost_ratios_on_sd15_architecture_are_written(tmp_path):
    report = load("sd15_costs").main(["--device", "cpu", "--size", "64", "--steps", "2", "--repeats", "1",
                                      "--only", "generate,sdedit,inversion", "--out", str(tmp_path)])
    assert report["errors"] == {}
    assert report["sections"]["generate"]["max_abs_pixel_difference"] < 1e-5  # same work as the pipeline
    assert report["sections"]["sdedit"]["ratio"] > 0
    methods = {r["method"]: r for r in report["sections"]["inversion"]["rows"]}
    assert methods["ddim"]["seconds_vs_ddim"] == 1 and methods["edict"]["inversion_unet_passes"] == 4
    assert json.loads((tmp_path / "sd15_costs_cpu.json").read_text())["sections"].keys() == report["sections"].keys()
    assert "| generation vs StableDiffusionPipeline" in (tmp_path / "sd15_costs_cpu.md").read_text()
