"""Protects: bench/edit_bench.py's fixed edit set carries its ground truth (the target rendering passes the judge,
the source fails it), and the bench runs every row of an edit on the embedded model, tables the PIE-Bench metrics,
ranks the rows per tab, and resumes a partial run without redoing its edits."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load

bench = load("edit_bench")
W = bench.InversionSpec().guidance_scale  # the w an inversion row is made at unless swept
DDIM_P2P = bench.p2p_row("ddim", W)


@pytest.mark.parametrize("index", range(len(bench.KINDS) * 2))
def test_each_kind_of_edit_is_judged_done_on_its_target_and_not_on_its_source(index):
    case = bench.edit_case(index)

    on_target, on_source = bench.measure(case, case.target.image), bench.measure(case, case.source.image)

    assert case.kind == bench.KINDS[index % len(bench.KINDS)]
    assert on_target["success"] and not on_source["success"]
    assert on_source["background_psnr"] == bench.PSNR_CAP  # outside the true region the two renderings agree
    assert 0 < case.region.mean() < 1 and case.source_caption != case.target_caption


def test_the_set_is_fixed_by_its_seed():
    first, again = bench.edit_case(7), bench.edit_case(7)

    assert (first.source.image == again.source.image).all() and first.target_caption == again.target_caption


def test_every_inversion_method_p2p_samples_gets_its_rows_and_the_found_mask_its_diffedit():
    rows = [row.name for row in bench.rows_for(["ddim", "edict"])]

    assert DDIM_P2P in rows and f"DiffEdit · DDIM inversion · w {W:g}" in rows and "DiffEdit · noised start" in rows
    assert not any("EDICT" in name for name in rows)  # not sampled by P2P: no rows
    assert sum(name.startswith("SDEdit") for name in rows) == 2 * len(bench.SDEDIT_T0)
    assert set(bench.SDEditSpec().strengths) <= set(bench.SDEDIT_T0)
    preferred = bench.EDIT_PREFERENCE[0]  # the tabs' default inversion, also at other w
    swept = [row.name for row in bench.rows_for(list(bench.EDITABLE_INVERSIONS))
             if row.tab == "P2P" and row.method == preferred]
    assert sorted(swept) == sorted(bench.p2p_row(preferred, w) for w in bench.GUIDANCE_SWEEP)
    assert W in bench.GUIDANCE_SWEEP and 7.5 in bench.GUIDANCE_SWEEP
    assert [row.name for row in bench.rows_for(["ddim"], ("DiffEdit's mask · t0 0.5",))] == [
        bench.OWN_START, "SDEdit · DiffEdit's mask · t0 0.5"]
    assert [row.name for row in bench.rows_for(["ddim"], ("DiffEdit · DDIM",))] == [  # edits the same found mask
        bench.OWN_START, f"DiffEdit · DDIM inversion · w {W:g}"]


def cell(success: float, psnr: float, seconds: float = 1.0, edits: int = 60) -> dict:
    return {"edits": edits, "success": success, "background_psnr": psnr, "seconds": seconds}


def test_the_ranking_takes_success_rates_within_a_standard_error_as_tied_and_then_the_background():
    # 0.72 vs 0.67 on 60 edits: 3 edits, under one standard error (0.058): the better background wins
    assert bench.best_row({"w 5": cell(0.72, 25.2), "w 2": cell(0.67, 29.3)}) == "w 2"
    # 0.72 vs 0.55: 10 edits, three standard errors: success wins whatever the background
    assert bench.best_row({"w 5": cell(0.72, 25.2), "NTI": cell(0.55, 40.0)}) == "w 5"
    # the error shrinks with the edits: 0.8 vs 0.65 are tied on 5 (standard error 0.18), not on 60 (0.05)
    assert bench.best_row({"a": cell(0.8, 20.0, edits=5), "b": cell(0.65, 30.0, edits=5)}) == "b"
    assert bench.best_row({"a": cell(0.8, 20.0), "b": cell(0.65, 30.0)}) == "a"
    assert bench.ranked({"a": cell(0.5, 20.0), "b": cell(0.9, 10.0), "c": cell(0.88, 30.0), "none": cell(0, 0, edits=0)}
                        ) == ["c", "b", "a"]
    assert bench.best_row({"none": cell(0.0, 0.0, edits=0)}) is None


def test_bench_tables_the_rows_and_ranks_them_per_tab(tmp_path):
    argv = ["--edits", "1", "--steps", "10", "--methods", "ddim", "--rows", "P2P,SDEdit · true", "--out", str(tmp_path)]

    report = bench.main(argv)

    rows = report["row_names"]
    assert rows == [DDIM_P2P, *(f"SDEdit · true mask · t0 {t0:g}" for t0 in bench.SDEDIT_T0)]
    overall = report["summary"][DDIM_P2P]["overall"]
    assert set(overall) >= {"success", "background_psnr", "background_ssim", "structure_iou", "seconds",
                            "unet_passes", "inversion_seconds"}
    assert overall["edits"] == 1 and overall["unet_passes"] == 10  # one batched call per step
    # a known-good row: SDEdit from t0 0.7 inside the true region recolours the object and keeps the rest exactly
    good = report["summary"]["SDEdit · true mask · t0 0.7"]["colour"]
    assert good["success"] == 1.0 and good["background_psnr"] == bench.PSNR_CAP
    assert report["best"]["SDEdit"]["colour"] is not None
    markdown = (tmp_path / "edit_bench.md").read_text()
    assert "**1 edits ran**" in markdown and f"| {DDIM_P2P} | 1 |" in markdown
    assert (tmp_path / "edit_bench.png").stat().st_size > 0

    resumed = bench.main([*argv, "--resume"])  # nothing left to run: the same records, written again

    assert resumed["records"] == json.loads((tmp_path / "edit_bench.json").read_text())["records"]
    assert resumed["records"][0]["rows"] == report["records"][0]["rows"]

    # --redo: a changed row runs again (its stale result, marked here, is replaced); the others stay in the table
    stored = json.loads((tmp_path / "edit_bench.json").read_text())
    stored["records"][0]["rows"]["SDEdit · true mask · t0 0.7"] = {"success": False, "stale": True}
    (tmp_path / "edit_bench.json").write_text(json.dumps(stored))
    redone = bench.main([*argv[:6], "--rows", "true mask · t0 0.7", "--resume", "--redo", "--out", str(tmp_path)])

    assert redone["row_names"] == rows
    again = redone["records"][0]["rows"]["SDEdit · true mask · t0 0.7"]
    assert again["success"] and "stale" not in again
    assert redone["records"][0]["rows"][DDIM_P2P] == report["records"][0]["rows"][DDIM_P2P]
