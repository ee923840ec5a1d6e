"""Protects: bench/guidance_sweep.py runs end to end (tiny model with a classifier, tiny settings) and
writes its table, figure and JSON with every part of the issue #4 measurement and the per-target classifier table of
issue #20 (tuning and held-out prompts, both judges, the prompt kept), resuming a stopped run from its JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from PIL import Image

from bench_scripts import load

TARGETS = "red object,circle object,blue background"


def test_guidance_sweep_runs_and_writes_json_table_and_figure(tiny_classifier_model_dir, tmp_path):
    sweep = load("guidance_sweep")
    argv = ["--model", str(tiny_classifier_model_dir), "--device", "cpu", "--samples", "2", "--steps", "2",
            "--weights", "0,4", "--negative-weights", "0,-4", "--settings", "strength=0; strength=5; strength=3,normalise=false,stop=0.5", "--target-samples", "1", "--target-steps", "2",
            "--targets", TARGETS, "--out", str(tmp_path)]

    report = sweep.main(argv)

    assert json.loads((tmp_path / "guidance_sweep.json").read_text())["samples_per_setting"] == 2
    assert report["judges"] == ["classifier", "pixels"]
    assert [row["weight"] for row in report["weight_sweep"]["rows"]] == [0, 4]
    assert len(report["negative_condition"]["rows"]) == 2
    classifier = report["classifier_guidance"]
    # 3 settings (off, the default at 5, eq. 14 at 3 stopping half-way) x 2 splits x 3 targets x 2 prompts;
    # every target on both splits, judged twice
    assert len(classifier["rows"]) == 36 and len(classifier["summary"]) == 18
    default = {name: value for name, value in asdict(sweep.DEFAULT).items() if name != "target"}
    assert [r["guidance"] for r in classifier["rows"][::12]] == [
        None, {**default, "strength": 5.0}, {**default, "strength": 3.0, "normalise": False, "stop": 0.5}]
    assert [r["guidance"] for r in classifier["ranking"]] == [r["guidance"] for r in classifier["rows"][12::12]]  # both guided
    assert {r["split"] for r in classifier["summary"]} == {"tuning", "held-out"}
    assert set(classifier["summary"][0]["shows"]) == {"classifier", "pixels"}
    guided = [row for row in classifier["cost"] if row["guidance"] and row["guidance"]["strength"] == 5][0]
    assert guided["classifier_seconds_per_step"] > 0 and guided["sampling_time_vs_cfg_only"] > 0
    table = (tmp_path / "guidance_sweep.md").read_text()
    assert "### held-out prompts" in table and "| blue background |" in table
    assert "| off: shows | keeps | strength 5: shows | keeps | strength 3, stop 0.5, eq. 14: shows | keeps |" in table
    with Image.open(tmp_path / "guidance_sweep.png") as figure:
        assert figure.width == 3 * 340

    resumed = sweep.main([*argv, "--only", "c", "--resume"])  # every row kept: nothing is generated again
    assert resumed["classifier_guidance"]["rows"] == classifier["rows"]
    assert resumed["weight_sweep"]["rows"] == report["weight_sweep"]["rows"]


def test_held_out_prompts_share_no_attribute_with_the_tuning_prompts():
    sweep = load("guidance_sweep")
    tuning, held_out = sweep.SPLITS["tuning"], sweep.SPLITS["held-out"]
    assert all(not set(tuning[k]) & set(held_out[k]) for k in tuning)
    for target in ("red object", "triangle object", "purple background"):
        for case in sweep.target_prompts(target, "held-out"):
            assert target.split()[0] not in case["prompt"].split()  # the target's attribute is left open


def test_a_part_left_out_of_only_must_be_in_the_results_it_is_kept_from(tmp_path):
    sweep = load("guidance_sweep")
    with pytest.raises(SystemExit, match="part\\(s\\) a, b are kept from .*which has none"):
        sweep.main(["--only", "c", "--out", str(tmp_path)])
    assert not (tmp_path / "guidance_sweep.md").exists()  # refused before any sampling, nothing half-written


def test_a_setting_names_spec_fields_and_a_misspelt_one_is_refused():
    sweep = load("guidance_sweep")
    assert sweep.parse_setting("strength=0") is None  # plain CFG
    assert sweep.parse_setting("strength=4, normalise=off, schedule=snr")["normalise"] is False
    with pytest.raises(Exception, match="'strenght=4': give name=value with a name of strength"):
        sweep.parse_setting("strenght=4")
