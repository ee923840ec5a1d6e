"""Protects: bench/personalize.py's pieces (issue #18's measurement): its composition prompts really hold out what
the training pictures showed, its pixel checks score the renderer's own pictures right and a wrong shape wrong, and
its table shows every method row (measured, failed or not run) with the base model's preservation as the baseline.
The run itself trains every method and takes about 20 minutes on 2 cores: bench/results/personalize.md is its
committed output."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load

from studio.shapes.render import Scene, make_object, render

bench = load("personalize")


def _picture(ask, shape: str | None = None):
    obj = make_object(shape or ask.shape, ask.colour, ask.size or "big", ask.position or "center")
    return render(Scene(ask.background, (obj,))).image


def test_composition_prompts_hold_out_every_attribute_the_training_pictures_showed():
    captions = [text for _, text in bench.render_concept_images("star", 8, seed=0)]
    seen = bench.seen_in_training(captions)

    asks = bench.composition_asks("star", captions, 4)

    assert len(asks) == 4 and len({a.position for a in asks}) == 4  # four different placements
    for a in asks:
        assert a.colour not in seen["colours"] and a.background not in seen["backgrounds"] and a.colour != a.background
        assert (a.size, a.position) not in seen["placements"]
        assert bench.CAPTION.match(a.prompt) and "star" in a.prompt  # the renderer's own grammar
        assert (a.colour, a.background) != ("red", "blue")  # the fidelity prompt's pair is (a)'s


def test_pixel_checks_score_rendered_pictures_right_and_another_shape_wrong():
    captions = [text for _, text in bench.render_concept_images("heart", 8, seed=0)]
    asks = [bench.fidelity_ask("star"), bench.fidelity_ask("heart"), *bench.composition_asks("heart", captions, 2),
            *bench.preservation_asks()]

    for a in asks:
        assert all(bench.check(_picture(a), a).values()), a.prompt
    wrong = bench.check(_picture(asks[0], shape="circle"), asks[0])
    assert wrong == {"shape": False, "colour": True, "background": True}

    scored = bench.rates([{"shape": True, "colour": True}, {"shape": False, "colour": True, "size": True}])
    assert scored == {"colour": 1.0, "shape": 0.5, "size": 1.0, "all": 0.5, "pictures": 2}


def test_table_shows_measured_failed_and_not_run_rows_against_the_base_model(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"0" * 2**20)
    (tmp_path / "learned_embeds.safetensors").write_bytes(b"0" * 2**19)
    assert bench.folder_megabytes(tmp_path, ("unet",)) == 1.0 and bench.folder_megabytes(tmp_path) == 1.5

    def judged(fidelity: float, kept: float) -> dict:
        return {"fidelity": {"shape": fidelity, "all": fidelity}, "composition": {"shape": fidelity, "all": fidelity / 2},
                "preservation": {"shape": kept, "colour": 1.0, "position": 1.0, "all": kept}}

    cost = {"seconds": 120.0, "steps": 150, "peak_rss_delta_mib": 300.0, "megabytes": 0.01}
    report = {
        "command": "python bench/personalize.py", "model": "shapes-sd", "device": "cpu", "device_name": "x86_64",
        "torch_threads": 2, "steps": 20, "guidance_scale": 5.0, "class_word": "circle",
        "renderer_training_palette": {"colours": ["yellow"], "backgrounds": ["black"]},
        "arguments": {"recipe": "{}", "images": 8, "seeds": 8, "compose_seeds": 4, "preserve_seeds": 4},
        "preservation_prompts": ["a green circle on the left on a white background"], "seconds": {"base": 60.0},
        "concepts": {"star": {
            "prompts": {"fidelity": "a red star on a blue background", "composition": ["a big red star ..."]},
            "seen_in_training": {"colours": ["yellow"], "backgrounds": ["black"], "placements": [["big", "left"]]},
            "rows": {"base": judged(0.0, 0.9), "textual-inversion": {**judged(0.75, 0.8), "cost": cost},
                     "lora": {"cost": {"error": "training exited with 1: out of memory"}}},
        }},
    }

    goal = bench.goal_lines(report)
    text = bench.table({**report, "goal": goal})

    assert [(g["method"], g["met"]) for g in goal] == [("textual-inversion", True)]  # LoRA failed: no goal line

    lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| **0%** |" in lines["base model (no training)"] and "| **90%** | – |" in lines["base model (no training)"]
    assert "| **75%** |" in lines["Textual Inversion"] and "| -10 pt |" in lines["Textual Inversion"]
    assert "| 120 (150 steps) | 300 | 0.01 |" in lines["Textual Inversion"]
    assert "| training exited with 1: out of memory |" in lines[bench.ROWS["lora"].label]
    assert "| not run |" in lines["DreamBooth, no prior loss"]
    # the measured rows' fidelity pictures are shown, the failed and unrun ones have none
    assert "![Textual Inversion: 'a red star on a blue background'](personalize/star-textual-inversion.png)" in text
    assert "personalize/star-lora.png" not in text and "personalize/star-dreambooth-no-prior.png" not in text
    assert "Textual Inversion teaches a star: 120 s, fidelity 75% vs 0% untrained: yes" in text


def test_resume_keeps_a_report_measured_alike_and_refuses_one_measured_otherwise(tmp_path):
    args = bench.parse_args(["--resume", "--out", str(tmp_path)])
    assert bench.previous_report(args) == {}  # nothing to continue: every row runs
    measured = {"command": "python bench/personalize.py", "arguments": {name: vars(args)[name] for name in bench.RESUME_SETTINGS}}
    (tmp_path / "personalize.json").write_text(json.dumps(measured))

    assert bench.previous_report(args) == measured
    assert bench.previous_report(bench.parse_args(["--out", str(tmp_path)])) == {}  # without --resume: all again
    with pytest.raises(SystemExit, match=r"other settings \(steps=20\)"):
        bench.previous_report(bench.parse_args(["--resume", "--steps", "10", "--out", str(tmp_path)]))
