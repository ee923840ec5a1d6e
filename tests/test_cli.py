"""`studio generate`: PNGs that carry their settings, batch over prompts and seeds, remakes from a
PNG, and one clear line (exit status 2, nothing written) for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from studio.cli import main, seed_list
from studio.ui.png_settings import read_png_settings


def studio(model_dir, *args) -> int:
    return main(["--model", str(model_dir), "--device", "cpu", *map(str, args)])


def test_seed_ranges_and_lists():
    assert seed_list("3") == [3]
    assert seed_list("0-3,9") == [0, 1, 2, 3, 9]


def test_batch_over_prompts_and_seeds_writes_pngs_with_their_settings(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na big red circle\n\na small blue square\n")
    out = tmp_path / "out"
    assert studio(tiny_model_dir, "generate", "--prompts", prompts, "--seeds", "4-5", "--steps", 2, "--out", out) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["0000-seed4.png", "0001-seed5.png", "0002-seed4.png", "0003-seed5.png"]
    settings = read_png_settings(pngs[2])
    assert (settings["prompt"], settings["seed"], settings["steps"]) == ("a small blue square", 4, 2)
    log = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [entry["file"] for entry in log] == [p.name for p in pngs]


def test_remake_from_png_gives_the_same_pixels(tiny_model_dir, tmp_path):
    assert studio(tiny_model_dir, "generate", "a big red circle", "--seeds", 7, "--steps", 2, "--out", tmp_path / "a") == 0
    first = tmp_path / "a" / "0000-seed7.png"
    assert studio(tiny_model_dir, "generate", "--from-png", first, "--out", tmp_path / "b") == 0
    again = tmp_path / "b" / "0000-seed7.png"
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a big unicorn"], "does not know the word(s) 'unicorn'"),
        (["a big red circle", "--steps", 0], "Steps must be between 1 and 150"),
        ([], "Nothing to generate"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert studio(tiny_model_dir, "generate", *args, "--out", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
