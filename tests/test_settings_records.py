"""Protects: every result's settings say which job made it and name its inputs (the source image's pixel hash,
the mask, the inversion an edit started from); a record of every job round-trips through a PNG, with the
A1111 line only where a prompt made the image and each image's own seed in it; batch item i is remade alone
with seed + i (as AUTOMATIC1111 seeds a batch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from studio import png_settings
from studio.editing.diffedit import DiffEditSpec
from studio.editing.p2p import P2PSpec
from studio.editing.sdedit import SDEditSpec
from studio.errors import InvalidInputError
from studio.inversion import InversionSpec
from studio.inversion.file import load_inversion, save_inversion
from studio.jobs import JOBS, image_record, mask_record
from studio.shapes.render import Scene, make_object, render
from studio.specs import GenerateSpec

STEPS = 4
PROMPT = "a big red circle on a blue background"
TARGET = "a big yellow circle on a blue background"


def _last(events):
    return list(events)[-1]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(render(Scene("blue", (make_object("circle", "red", "big", "left"),))).image)


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    selected = np.zeros((128, 128), dtype=bool)
    selected[32:96, 8:72] = True
    return selected


@pytest.fixture(scope="module")
def results(tiny_engine, image, mask):
    """One result of every job on the tiny model (an inversion and the edits of it included)."""
    inverted = _last(tiny_engine.invert(InversionSpec(PROMPT, method="null_text", steps=STEPS, inner_steps=1), image))
    inversion = inverted.inversion
    diffedit_spec = DiffEditSpec(PROMPT, TARGET, steps=STEPS, edit_strength=0.5, seed=3)
    return {
        "generate": _last(tiny_engine.generate(GenerateSpec(PROMPT, seed=5, steps=STEPS, batch_size=2))),
        "sdedit": _last(tiny_engine.sdedit(SDEditSpec(PROMPT, strengths=(0.5,), repeats=2, seed=8, steps=STEPS),
                                           image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mask, original=image)),
        "diffedit_mask": _last(tiny_engine.diffedit_mask(diffedit_spec, image)),
        "diffedit": _last(tiny_engine.diffedit(diffedit_spec, image, mask=mask)),
        "diffedit of inversion": _last(tiny_engine.diffedit(diffedit_spec, mask=mask, inversion=inversion)),
        "p2p": _last(tiny_engine.p2p(P2PSpec(PROMPT, TARGET, edit="refine", seed=2, steps=STEPS))),
        "p2p of inversion": _last(tiny_engine.p2p(P2PSpec("", TARGET, edit="refine", blend_words=("circle",)),
                                                  inversion=inversion)),
        "invert": inverted,
    }


def test_every_record_says_which_job_made_it(results):
    for name, result in results.items():
        job = name.split(" ")[0]
        assert result.settings["job"] == job and job in JOBS, name
        assert png_settings.record_job(result.settings) == job
    assert results["diffedit"].settings["method"] == "diffedit"  # the old key keeps its meaning
    assert results["diffedit_mask"].settings["method"] == "diffedit mask"
    assert png_settings.job_label(results["diffedit"].settings) == "DiffEdit"


def test_edits_name_their_source_image_by_its_pixels(results, image, mask):
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sdedit = results["sdedit"].settings
    assert sdedit["source_image"] == image_record(flipped) and sdedit["original_image"] == image_record(image)
    assert sdedit["mask"] == mask_record(mask, "given") and sdedit["mask"]["fraction"] == pytest.approx(mask.mean())
    for job in ("diffedit", "diffedit_mask", "invert"):
        assert results[job].settings["source_image"] == image_record(image), job
    assert image_record(image) != image_record(flipped)  # the hash tells the pixels apart
    assert len(image_record(image)["hash"]) == 16 and image_record(image)["width"] == 128
    assert results["diffedit"].settings["mask"] == mask_record(mask, "given")
    stage_one = results["diffedit_mask"].settings["mask"]
    assert stage_one["from"] == "Stage I" and stage_one["fraction"] == results["diffedit_mask"].mask_fraction
    assert stage_one["hash"] == mask_record(results["diffedit_mask"].binary, "Stage I")["hash"]


def test_edits_of_an_inversion_record_the_inversion_they_started_from(results, image):
    inverted = results["invert"].settings
    for name in ("diffedit of inversion", "p2p of inversion"):
        record = results[name].settings["source_inversion"]
        assert record["method"] == "null_text" and record["prompt"] == PROMPT and record["steps"] == STEPS
        assert record["guidance_scale"] == inverted["guidance_scale"]
        assert record["inner_steps"] == 1 and record["learning_rate"] == inverted["learning_rate"]
        assert "edict_mix" not in record  # only the settings its method read
        assert record["source_image"] == inverted["source_image"] == image_record(image)
    assert results["p2p of inversion"].settings["inversion"] == "null_text"  # the old key keeps its meaning
    assert results["p2p of inversion"].settings["source_image"] == image_record(image)
    blend = results["p2p of inversion"].settings["mask"]
    assert blend["from"] == "local blend"
    assert blend["fraction"] == pytest.approx(float(results["p2p of inversion"].mask.mean()))
    for name in ("diffedit", "p2p"):
        assert results[name].settings["source_inversion"] is None
    assert "source_image" not in results["p2p"].settings and "mask" not in results["p2p"].settings


def test_an_inversion_file_keeps_what_edits_record_of_it(results, tmp_path):
    inversion = results["invert"].inversion
    loaded = load_inversion(save_inversion(inversion, tmp_path / "nti.inversion.safetensors"))
    assert loaded.method_settings == inversion.method_settings and loaded.method_settings["inner_steps"] == 1


def _stored(record: dict) -> dict:
    return json.loads(json.dumps(record, default=str))  # what JSON keeps of it (tuples as lists)


def _chunks(path) -> dict[str, str]:
    with Image.open(path) as png:
        return dict(png.text)


def test_a_record_of_every_job_round_trips_through_a_png(results, tmp_path):
    for name, result in results.items():
        for index, image in enumerate(result.images):
            path = png_settings.save_png(image, result.settings, tmp_path / f"{name}-{index}.png", batch_index=index)
            record = png_settings.read_png_settings(path)
            assert record == _stored(result.settings), name
            assert png_settings.record_job(record) == result.settings["job"]
            prompted = result.settings["job"] in ("generate", "sdedit", "diffedit", "p2p")
            assert (png_settings.A1111_CHUNK in _chunks(path)) == prompted, name


def test_the_a1111_line_gives_each_image_its_own_prompt_and_seed(results):
    generated = results["generate"].settings
    assert generated["seed"] == 5 and generated["seeds"] == [5, 6]
    second = png_settings.parse_parameters(png_settings.format_parameters(generated, batch_index=1))
    assert (second["seed"], second["batch_index"], second["prompt"]) == (6, 1, PROMPT)
    sdedit = results["sdedit"].settings
    assert sdedit["seeds"] == [8, 9]
    assert png_settings.parse_parameters(png_settings.format_parameters(sdedit, batch_index=1))["seed"] == 9
    p2p = results["p2p"].settings
    source, edited = (png_settings.parse_parameters(png_settings.format_parameters(p2p, i)) for i in (0, 1))
    assert source["prompt"] == PROMPT and edited["prompt"] == TARGET
    diffedit = png_settings.parse_parameters(png_settings.format_parameters(results["diffedit"].settings, 0))
    assert diffedit["prompt"] == TARGET and (diffedit["width"], diffedit["height"]) == (128, 128)


def test_an_sdedit_without_prompt_carries_no_a1111_line():
    record = {"model": "m", "job": "sdedit", "prompt": "", "seed": 1}
    assert png_settings.A1111_CHUNK not in png_settings.png_text_chunks(record)
    assert png_settings.STUDIO_CHUNK in png_settings.png_text_chunks(record)


def test_records_of_other_tools_and_older_records_name_their_job():
    assert png_settings.record_job(png_settings.parse_parameters("a cat\nSteps: 20, Seed: 1, CFG scale: 7")) == "generate"
    assert png_settings.record_job({"method": "sdedit", "prompt": "a red circle"}) == "sdedit"
    assert png_settings.record_job({"method": "diffedit mask"}) == "diffedit_mask"


def test_a_damaged_settings_chunk_is_refused_by_name(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_itxt(png_settings.STUDIO_CHUNK, '{"format": "diffusion-control-studio/settings", "settings": ')
    Image.new("RGB", (8, 8)).save(tmp_path / "damaged.png", pnginfo=info)
    with pytest.raises(InvalidInputError, match="damaged"):
        png_settings.read_png_settings(tmp_path / "damaged.png")


def test_spec_fields_pick_any_spec_class():
    record = {"model": "m", "job": "diffedit", "source_prompt": "a", "target_prompt": "b", "threshold": 0.3,
              "timings": {"total": 1.0}}
    assert DiffEditSpec(**png_settings.spec_fields(record, DiffEditSpec)).threshold == 0.3


@pytest.mark.parametrize("scheduler", ["ddim", "euler_ancestral"])
def test_batch_item_i_is_remade_alone_with_seed_plus_i(tiny_engine, scheduler):
    """Item i of a batch is drawn (x_T and, for ancestral samplers, every step's noise) from seed + i."""
    batch = _last(tiny_engine.generate(GenerateSpec(PROMPT, seed=11, steps=STEPS, batch_size=3, scheduler=scheduler)))
    assert batch.settings["seeds"] == [11, 12, 13] and batch.seed == 11
    for item in (0, 2):
        alone = _last(tiny_engine.generate(GenerateSpec(PROMPT, seed=11 + item, steps=STEPS, scheduler=scheduler)))
        # the same picture to float rounding: a batch of 3 and of 1 take different matmul kernels (CI measured
        # 1.06e-5 with euler_ancestral); 1e-4 is 40x under one 8-bit level, a wrong seed differs by > 1e-2
        assert np.abs(batch.pixels[item] - alone.pixels[0]).max() <= 1e-4
    assert np.abs(batch.pixels[0] - batch.pixels[1]).max() > 1e-2  # the items differ


def test_a_batch_past_the_largest_seed_is_refused_before_any_work(tiny_engine):
    from studio.specs import SEED

    with pytest.raises(InvalidInputError, match="lower the seed"):
        tiny_engine.generate(GenerateSpec(PROMPT, seed=int(SEED.high), batch_size=2))


def test_the_cli_names_each_batch_image_by_its_own_seed(tiny_model_dir, tmp_path):
    from studio.cli import main

    out = tmp_path / "batch"
    assert main(["--model", str(tiny_model_dir), "--device", "cpu", "generate", PROMPT, "--seeds", "4", "--batch", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["0000-seed4.png", "0001-seed5.png"]
    line = png_settings.parse_parameters(_chunks(pngs[1])[png_settings.A1111_CHUNK])
    assert (line["seed"], line["batch_index"]) == (5, 1)
