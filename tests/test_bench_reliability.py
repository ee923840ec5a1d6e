"""Protects: bench/reliability.py's report (no server started here) -- the probes cover every class on the kinds of
argument the app has, the 12000x12000 PNG is the small file of issue #19 and the bomb is over PIL's hard limit, and
the results table has a row per class, per load level and per fault, with the commit measured."""

from __future__ import annotations

import reliability_probes as probes
from bench_scripts import load


def test_the_probes_cover_every_class_and_the_huge_files_are_small():
    image = probes.Param("image", "image", {})
    editor = probes.Param("canvas", "imageeditor", {})
    settings = probes.Param("file", "file", {"file_types": [".png"]})
    prompt = probes.Param("prompt", "textbox", {})
    steps = probes.Param("steps", "slider", {"minimum": 1, "maximum": 150})
    endpoint = probes.Endpoint("all", 0, None, "public", (image, editor, settings, prompt, steps), True)

    assert {probe.probe_class for probe in probes.probes_for(endpoint)} == set(probes.CLASSES)
    assert {probe.probe_class for probe in probes.sample(endpoint)} == set(probes.CLASSES)
    huge = probes.blank_png(probes.HUGE_SIDE, probes.HUGE_SIDE)
    bomb = probes.blank_png(probes.BOMB_SIDE, probes.BOMB_SIDE, bit_depth=1, colour_type=0)
    assert len(huge) < 600_000 and len(bomb) < 400_000
    assert probes.BOMB_SIDE**2 > 2 * 89_478_485  # PIL's default hard limit: twice MAX_IMAGE_PIXELS


def test_the_report_has_a_row_per_class_load_level_and_fault():
    bench = load("reliability")
    tried = [probes.Tried("generate", "public", "seed", probes.Probe("nan_inf", "nan", 2, float("nan")),
                          probes.Outcome("message", "Seed: nan is not a number")),
             probes.Tried("pick", "private", "(all)", probes.Probe("types", "extra", -1, "too_many"),
                          probes.Outcome("empty"))]
    row = {"clients": 4, "jobs": 8, "success": 7, "message": 1, "empty": 0, "hang": 0, "lost": 0, "mixed": 0,
           "median_s": 1.0, "max_s": 2.0, "peak_rss_mb": 1800.0, "refusals": ["one job at a time"]}
    report = {"commit": "abc1234", "when": "now", "command": "python bench/reliability.py", "server_args": ["--public"],
              "fuzz": {"mode": "sample", "tried": 2, "endpoints": {"public": 1, "undocumented": 0, "private": 1},
                       "classes": probes.tally(tried), "failing": [tried[1].row()], "alive_failed_after": [],
                       "pickle_ran": False},
              "load": {"rows": [row], "fairness": {"burst": 4, "one_job_s": 1.0, "single_while_burst_s": 1.5,
                                                   "single": "success", "burst_outcomes": {}, "within_one_job": True}},
              "faults": [{"fault": "Stop mid-job: generate", "outcome": "success", "seconds": 2.0, "text": "",
                          "next_job": "success", "next_job_s": 1.0}],
              "memory": {"uploads": [{"input": "sdedit huge", "outcome": "message", "text": "too big",
                                      "rss_growth_mb": 1.0, "peak_growth_mb": 2.0}],
                         "soak": {"jobs": 10, "first_mb": 1800, "last_mb": 1801, "slope_mb_per_100_jobs": 0.5,
                                  "failed": 0}}}

    text = bench.markdown(report)

    assert "`abc1234`" in text
    assert "| nan_inf | 1 | 1 | 0 | 0 | 0 | 0 |" in text and "| types | 1 | 0 | 1 | 0 | 0 | 0 |" in text
    assert "| pick | private | (all) | types/extra | empty |" in text
    assert "| 4 | 8 | 7 | 1 |" in text and "| Stop mid-job: generate |" in text and "| sdedit huge |" in text
