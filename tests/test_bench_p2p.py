"""Protects: bench/p2p.py runs end to end (tiny random model, one seed, two steps) and writes its JSON
and table with every part of the issue #7 measurement."""

from __future__ import annotations

import json

from bench_scripts import load


def test_p2p_bench_runs_and_writes_json_and_table(tiny_model_dir, tmp_path):
    bench = load("p2p")

    report = bench.main(["--model", str(tiny_model_dir), "--device", "cpu", "--seeds", "1", "--steps", "2",
                         "--weights", "0,2", "--repeats", "1", "--out", str(tmp_path)])

    assert json.loads((tmp_path / "p2p.json").read_text())["seeds"] == 1
    assert set(report["word_swap"]) >= {"p2p_preserved", "plain_preserved", "rows"}
    assert [row["weight"] for row in report["reweighting"]["rows"]] == [0, 2]
    assert report["cost"]["ratio"] > 0
    table = (tmp_path / "p2p.md").read_text()
    assert "(a) Word swap" in table and "(d) Cost per step" in table
