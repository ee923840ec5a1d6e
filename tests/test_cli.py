"""`studio generate`: PNGs that carry their settings, batch over prompts and seeds, remakes from a
PNG, and one clear line (exit status 2, nothing written) for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from studio.cli import main, seed_list
from studio.png_settings import read_png_settings


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


def test_classifier_guidance_from_the_command_line_is_recorded_in_the_png(tiny_classifier_model_dir, tmp_path):
    assert studio(tiny_classifier_model_dir, "generate", "a big circle", "--classifier", "red object:3", "--steps", 2,
                  "--out", tmp_path / "normalised") == 0
    assert studio(tiny_classifier_model_dir, "generate", "a big circle", "--classifier", "red object", "--raw-gradient",
                  "--steps", 2, "--out", tmp_path / "raw") == 0
    normalised, raw = (read_png_settings(tmp_path / run / "0000-seed0.png")["classifier_guidance"] for run in ("normalised", "raw"))
    assert (normalised["target"], normalised["strength"], normalised["normalise"]) == ("red object", 3.0, True)
    assert (raw["strength"], raw["normalise"]) == (2.0, False)  # the spec's default strength


@pytest.mark.parametrize(("args", "message"), [
    (["--classifier", "red object:lots"], "the strength after ':' must be a number"),
    (["--classifier", "pink object"], "unknown target 'pink object'"),
    (["--raw-gradient"], "give --classifier TARGET[:STRENGTH] too"),
])
def test_bad_classifier_flags_are_one_line_and_write_nothing(tiny_classifier_model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert studio(tiny_classifier_model_dir, "generate", "a big circle", *args, "--steps", 1, "--out", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_edit_commands_write_their_images_with_settings(tiny_model_dir, tmp_path):
    guide = tmp_path / "guide.png"
    Image.new("RGB", (128, 128), (30, 70, 220)).save(guide)
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 32:96] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")

    assert studio(tiny_model_dir, "edit", "sdedit", guide, "--prompt", "a red circle", "--t0", "0.4,0.6",
                  "--repeats", 1, "--seed", 5, "--steps", 4, "--out", tmp_path / "sdedit") == 0
    assert [p.name for p in sorted((tmp_path / "sdedit").glob("*.png"))] == ["0000-t0-0.4-seed5.png", "0001-t0-0.6-seed5.png"]
    assert read_png_settings(tmp_path / "sdedit" / "0001-t0-0.6-seed5.png")["prompt"] == "a red circle"

    assert studio(tiny_model_dir, "edit", "diffedit", guide, "--source", "a red circle", "--target", "a blue circle",
                  "--mask", tmp_path / "mask.png", "--steps", 4, "--seed", 1, "--out", tmp_path / "diffedit") == 0
    written_mask = np.asarray(Image.open(tmp_path / "diffedit" / "0000-mask.png")) > 0
    assert written_mask.sum() == 64 * 64 and written_mask[32:96, 32:96].all()  # the given mask was used

    assert studio(tiny_model_dir, "edit", "p2p", "--source", "a big red circle", "--target", "a big red square",
                  "--edit", "word swap", "--seed", 2, "--steps", 3, "--out", tmp_path / "p2p") == 0
    assert [p.name for p in sorted((tmp_path / "p2p").glob("*.png"))] == ["0000-source.png", "0001-edited.png"]


def test_edit_of_a_file_that_is_not_an_image_says_so(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    assert studio(tiny_model_dir, "edit", "sdedit", tmp_path / "notes.png", "--out", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "(notes.png) is not an image" in error and str(tmp_path) not in error  # its name, not the server's path


def test_invert_then_edit_the_inversion(tiny_model_dir, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (200, 150), (220, 30, 30)).save(photo)
    assert studio(tiny_model_dir, "invert", photo, "--prompt", "a red circle", "--method", "negative_prompt", "ddim",
                  "--steps", 3, "--out", tmp_path / "inv") == 0
    assert sorted(p.name for p in (tmp_path / "inv").iterdir()) == [
        "0000-negative_prompt-reconstruction.png", "0001-ddim-reconstruction.png", "ddim.inversion.safetensors",
        "negative_prompt.inversion.safetensors", "results.jsonl"]
    assert studio(tiny_model_dir, "edit", "p2p", "--inversion", tmp_path / "inv" / "negative_prompt.inversion.safetensors",
                  "--target", "a blue circle", "--edit", "word swap", "--out", tmp_path / "p2p") == 0
    assert len(list((tmp_path / "p2p").glob("*.png"))) == 2
    assert studio(tiny_model_dir, "edit", "diffedit", "--inversion", tmp_path / "inv" / "ddim.inversion.safetensors",
                  "--source", "a red circle", "--target", "a blue circle", "--out", tmp_path / "diffedit") == 0
    assert (tmp_path / "diffedit" / "0000-edited.png").exists()


def test_keep_size_works_at_the_images_own_size(tiny_model_dir, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (100, 90), (220, 30, 30)).save(photo)
    assert studio(tiny_model_dir, "invert", photo, "--method", "ddim", "--steps", 2, "--keep-size", "--out", tmp_path / "inv") == 0
    assert Image.open(tmp_path / "inv" / "0000-ddim-reconstruction.png").size == (88, 88)  # 90 down to a multiple of 8
    assert studio(tiny_model_dir, "edit", "sdedit", photo, "--t0", "0.5", "--repeats", 1, "--steps", 2, "--keep-size",
                  "--out", tmp_path / "sdedit") == 0
    assert Image.open(next((tmp_path / "sdedit").glob("*.png"))).size == (88, 88)
    assert studio(tiny_model_dir, "edit", "diffedit", photo, "--source", "a red circle", "--target", "a blue circle",
                  "--steps", 2, "--keep-size", "--out", tmp_path / "diffedit") == 0
    assert Image.open(tmp_path / "diffedit" / "0000-edited.png").size == (88, 88)


def test_invert_takes_the_tabs_defaults_and_the_newer_methods_settings(tiny_model_dir, tmp_path, capsys):
    from studio.editing.p2p import EDIT_PREFERENCE
    from studio.inversion import InversionSpec

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (220, 30, 30)).save(photo)
    assert studio(tiny_model_dir, "invert", photo, "--prompt", "a red circle", "--steps", 2, "--seed", 5,
                  "--out", tmp_path / "default") == 0
    default = read_png_settings(next((tmp_path / "default").glob("*.png")))
    assert default["method"] == EDIT_PREFERENCE[0] and default["guidance_scale"] == InversionSpec().guidance_scale
    assert default["seed"] == 5
    assert studio(tiny_model_dir, "invert", photo, "--method", "fixed_point", "--fixed-point-iterations", 2,
                  "--fixed-point-tolerance", 0.001, "--steps", 2, "--out", tmp_path / "fixed") == 0
    fixed = read_png_settings(tmp_path / "fixed" / "0000-fixed_point-reconstruction.png")
    assert (fixed["fixed_point_iterations"], fixed["fixed_point_tolerance"]) == (2, 0.001)

    assert studio(tiny_model_dir, "invert", photo, "--method", "fixed_point", "--fixed-point-iterations", 0,
                  "--steps", 2, "--out", tmp_path / "refused") == 2
    assert "Fixed-point iterations" in capsys.readouterr().err


def test_an_inversion_file_that_is_not_one_is_refused(tiny_model_dir, tmp_path, capsys):
    bogus = tmp_path / "bogus.inversion.pt"
    bogus.write_bytes(b"no pickle here")
    assert studio(tiny_model_dir, "edit", "p2p", "--inversion", bogus, "--target", "a blue circle",
                  "--out", tmp_path / "out") == 2
    assert "Could not read the inversion" in capsys.readouterr().err


def test_an_old_pickled_inversion_is_refused_unread(tiny_model_dir, tmp_path, capsys):
    import os

    import torch

    class WritesAFileWhenUnpickled:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    shared = tmp_path / "null_text.inversion.pt"
    torch.save(WritesAFileWhenUnpickled(), shared)
    assert studio(tiny_model_dir, "edit", "diffedit", "--inversion", shared, "--source", "a red circle",
                  "--target", "a blue circle", "--out", tmp_path / "out") == 2
    assert "it is a pickle" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
