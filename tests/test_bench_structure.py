"""Protects: bench/structure.py runs end to end (tiny model, random-init stand-in controls, tiny settings) and reports
every part of the issue #17 measurement: fidelity per control, text under control, the channel sweep with its checks
and plot, the image prompt, and cost with pixel parity against diffusers' ControlNet, Adapter and IP-Adapter paths."""

from __future__ import annotations

import json

from bench_scripts import load
from PIL import Image


def test_structure_bench_reports_fidelity_sweep_image_prompt_and_parity(tiny_model_dir, tmp_path):
    bench = load("structure")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--random-controls", "--steps", "2",
                         "--scenes", "2", "--sweep-scenes", "1", "--image-scenes", "1", "--cost-steps", "2",
                         "--repeats", "1", "--sd15-size", "0", "--out", str(tmp_path)])

    assert report["trained_controls"] == [] and set(report["random_stand_ins"]) == {
        "layout", "outline", "t2i-outline", "image prompt"}
    fidelity = {row["label"]: row for row in report["fidelity"]}
    assert set(fidelity) == {"no control (same prompts and seeds)", *(row.label for row in bench.CONTROL_ROWS)}
    for row in fidelity.values():
        assert row["scenes"] == 2 and 0 <= row["iou_mean"] <= 1 and 0 <= row["text_obeyed"] <= 1
    sweep = report["sweep"]
    layout_free = ("control scale", "window", "channel schedule")  # also run with the layout left to the control
    assert {row["family"] for row in sweep["rows"]} == {"control scale", "window", "channel weight", "text weight",
                                                       "channel schedule",
                                                       *(family + ", layout from the control only" for family in layout_free)}
    assert sweep["distinct_settings"] < len(sweep["rows"])  # a setting two families share runs once
    assert len(sweep["checks"]) == 8 and all(isinstance(ok, bool) for ok in sweep["checks"].values())
    assert [row["scenes"] for row in report["image_prompt"]["rows"]] == [1, 1, 1]
    [cost] = report["cost"]["models"]
    assert [row["control"] for row in cost["rows"]] == ["controlnet", "t2i_adapter", "ip_adapter"]
    for row in cost["rows"]:
        assert row["max_abs_pixel_difference"] <= 1e-4  # diffusers' own pipelines, pixel for pixel
        assert row["differs_from_plain"] > 1e-3  # the stand-ins change the image: parity can fail
        assert row["ratio"] > 0 and row["vs_plain"] > 0
    assert report["cost"]["parity"]
    assert json.loads((tmp_path / "structure.json").read_text())["steps"] == 2
    table = (tmp_path / "structure.md").read_text()
    assert "## (c) Channel independence" in table and "| layout ControlNet | 2 |" in table
    with Image.open(tmp_path / "structure.png") as figure:
        assert figure.width == 4 * 340


def test_structure_bench_reruns_one_part_and_keeps_the_others(tiny_model_dir, tmp_path):
    bench = load("structure")
    common = ["--model", str(tiny_model_dir), "--device", "cpu", "--random-controls", "--steps", "1", "--scenes", "1",
              "--sweep-scenes", "1", "--image-scenes", "1", "--cost-steps", "1", "--repeats", "1", "--sd15-size", "0",
              "--out", str(tmp_path)]
    first = bench.main(common)

    rerun = bench.main([*common, "--sweep-scenes", "2", "--only", "sweep"])

    assert rerun["cost"] == first["cost"] and rerun["fidelity"] == first["fidelity"]  # kept, not remeasured
    assert rerun["sweep"]["scenes"] == 2 and first["sweep"]["scenes"] == 1
    assert rerun["part_commands"]["sweep"].endswith("--only sweep") and rerun["part_commands"]["cost"] == first["command"]
    assert "sweep rerun since: `python bench/structure.py" in (tmp_path / "structure.md").read_text()
