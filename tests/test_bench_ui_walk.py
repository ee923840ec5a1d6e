"""Protects: bench/ui_walk.py (the timed walk through every tab, issue #16) without a browser -- its actions reach
every tab of app.py by the tab's own label, every selector it uses names an elem_id the UI declares, the scene it
uploads is a model-sized image, and its report keeps each action's median over the walks, counts a failed action
as not done and writes the JSON and table the other benchmarks write."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
from bench_scripts import BENCH

ROOT = BENCH.parent


@pytest.fixture(scope="module")
def walk():
    """bench/ui_walk.py imported by name, as scripts/screenshot.py imports it (its dataclasses need a registered module)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("ui_walk")
    finally:
        sys.path.remove(str(BENCH))


def ui_sources() -> str:
    return "\n".join(path.read_text() for path in [ROOT / "app.py", *sorted((ROOT / "studio" / "ui").glob("*.py"))])


def test_the_walk_visits_every_tab_by_its_label(walk, tmp_path):
    tabs = dict(re.findall(r'gr\.Tab\("([^"]+)", id="([^"]+)"\)', (ROOT / "app.py").read_text()))

    actions = walk.actions(walk.walk_inputs(tmp_path))

    assert {(a.tab, a.tab_id) for a in actions} <= set(tabs.items())
    assert {a.tab_id for a in actions} == set(tabs.values())
    assert {a.tab_id for a in actions if a.from_inversion} == {"p2p", "diffedit"}
    assert actions[-1].tab_id == "history"  # after every other tab has made a result
    assert all(a.status for a in actions if isinstance(a.start, str))  # a button's job ends in its status box


def test_every_selector_of_the_walk_is_an_elem_id_of_the_ui():
    used = set(re.findall(r"#([a-z][a-z0-9-]*)", (BENCH / "ui_walk.py").read_text()))
    declared = ui_sources()

    missing = sorted(elem_id for elem_id in used if f'"{elem_id}"' not in declared)

    assert len(used) > 20 and not missing, f"the walk uses elem_ids the UI does not declare: {missing}"


def test_the_uploaded_scene_is_a_model_sized_rgb_image(walk, tmp_path):
    from PIL import Image

    inputs = walk.walk_inputs(tmp_path)

    with Image.open(inputs.scene) as scene:
        assert (scene.size, scene.mode) == ((128, 128), "RGB")


def test_the_report_keeps_medians_of_done_runs_and_writes_json_and_table(walk, tmp_path):
    timings = [walk.Timing("Generate", "prompt -> gallery image", seconds, "done", "Done in 1 s", n)
               for n, seconds in enumerate((3.0, 1.0, 2.0))]
    timings += [walk.Timing("DiffEdit", "edit -> edited image", 5.0, "done", "Done", 0),
                walk.Timing("DiffEdit", "edit -> edited image", None, "timeout", "Timeout 600000ms exceeded.", 1)]
    report = walk.Walk("smoke", "/tree", "abc1234", "now", model="shapes-sd", device="cpu", timings=timings)

    path = walk.write_report(report, tmp_path)

    written = json.loads(Path(path).read_text())
    assert path.name == "ui_walk-smoke.json"
    rows = {row["action"]: row for row in written["summary"]}
    assert rows["prompt -> gallery image"]["median_seconds"] == 2.0
    assert rows["edit -> edited image"]["median_seconds"] == 5.0
    assert rows["edit -> edited image"]["states"] == ["done", "timeout"]
    table = (tmp_path / "ui_walk-smoke.md").read_text()
    assert "| Generate | prompt -> gallery image | 2.00 | 3.00, 1.00, 2.00 | done |" in table
    assert "| DiffEdit | edit -> edited image | 5.00 | 5.00, - | done, timeout |" in table
    assert "2 of 2 actions done" in table


def test_walks_read_back_join_and_compare_action_by_action(walk, tmp_path):
    def one_walk(label: str, seconds: float, load: float) -> Path:
        timings = [walk.Timing("Generate", "prompt -> gallery image", seconds, "done", "Done", 0)]
        report = walk.Walk(label, f"/{label}", "abc1234", "now", load_average={"start": [load], "end": [load + 1]},
                           timings=timings)
        return walk.write_report(report, tmp_path / f"{label}-{seconds}")

    before = walk.joined([walk.read_report(one_walk("before", s, n), walk=n) for n, s in enumerate((4.0, 6.0))])
    after = walk.joined([walk.read_report(one_walk("after", s, n), walk=n) for n, s in enumerate((2.0, 3.0))])

    assert [t.walk for t in before.timings] == [0, 1]
    assert before.load_average == {"start": [0], "end": [2]}
    lines = walk.comparison_lines(before, after)
    assert "| Generate | prompt -> gallery image | 5.00 | 2.50 | 0.50 |" in lines
