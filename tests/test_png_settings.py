"""PNG settings chunks: what the app embeds in downloads and what "load settings from PNG" reads."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from studio.errors import InvalidInputError
from studio.specs import GenerateSpec
from studio import png_settings as ps

SETTINGS = {
    "prompt": "a big red circle on the left, and a small blue square",
    "negative_prompt": "green: triangle\nblack",
    "seed": 123456789,
    "steps": 25,
    "guidance_scale": 7.5,
    "scheduler": "euler_ancestral",
    "width": 64,
    "height": 96,
    "batch_size": 2,
    "model": "assets/models/shapes-sd",
}


def _image() -> Image.Image:
    return Image.new("RGB", (8, 8), (200, 30, 30))


def test_png_round_trip_restores_every_setting(tmp_path):
    path = ps.save_png(_image(), SETTINGS, tmp_path / "out.png", batch_index=1)
    assert ps.read_png_settings(path) == SETTINGS
    with Image.open(path) as image:  # pixels untouched
        assert image.getpixel((3, 3)) == (200, 30, 30)


def test_settings_survive_gradio_png_encoding(tmp_path):
    """Gradio saves gallery/image outputs via encode_pil_to_bytes; info text must become chunks."""
    from gradio.processing_utils import save_pil_to_cache

    path = save_pil_to_cache(ps.with_settings(_image(), SETTINGS), str(tmp_path), format="png")
    assert ps.read_png_settings(path) == SETTINGS


def test_a1111_parameters_line_is_parseable_and_round_trips():
    text = ps.format_parameters(SETTINGS, batch_index=0)
    prompt_line, negative_line, *_, last = text.split("\n")
    assert prompt_line == SETTINGS["prompt"]
    assert negative_line == "Negative prompt: green: triangle"
    # A1111 recognises the last line only with >= 3 `key: value` pairs; our values are quoted when needed.
    assert last.startswith("Steps: 25, Sampler: Euler a, CFG scale: 7.5, Seed: 123456789, Size: 64x96")
    assert len(ps._PARAM.findall(last)) >= 3
    parsed = ps.parse_parameters(text)
    for key, value in SETTINGS.items():
        assert parsed[key] == value, key
    assert parsed["batch_index"] == 0


GUIDED = {
    **SETTINGS,
    "conditions": [
        {"prompt": "a blue background", "weight": 3.0, "schedule": "snr", "exponent": 0.5, "start": 0.0, "stop": 1.0},
        {"prompt": "a yellow background", "weight": -2.0, "schedule": "constant", "exponent": 0.5, "start": 0.2, "stop": 0.9},
    ],
    "guidance_rescale": 0.7,
    "classifier_guidance": {"target": "red object", "strength": 5.0, "schedule": "constant", "exponent": 0.5, "start": 0.0, "stop": 1.0},
}


def test_global_guidance_settings_round_trip_through_both_chunks(tmp_path):
    path = ps.save_png(_image(), GUIDED, tmp_path / "guided.png")
    assert ps.read_png_settings(path) == GUIDED
    parsed = ps.parse_parameters(ps.format_parameters(GUIDED))  # the A1111 line alone
    for key in ("conditions", "guidance_rescale", "classifier_guidance"):
        assert parsed[key] == GUIDED[key], key
    assert "extra" not in parsed or "Conditions" not in parsed["extra"]
    spec = GenerateSpec(**ps.spec_fields(parsed))
    assert spec.conditions[1].weight == -2.0 and spec.classifier_guidance.target == "red object"


def test_parses_a_real_a1111_infotext():
    text = (
        "masterpiece, 1girl, (blue eyes:1.2)\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3421, "
        'Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.9.4'
    )
    parsed = ps.parse_parameters(text)
    assert parsed["prompt"] == "masterpiece, 1girl, (blue eyes:1.2)"
    assert parsed["negative_prompt"] == "lowres, bad anatomy"
    assert (parsed["steps"], parsed["seed"], parsed["guidance_scale"]) == (20, 3421, 7.0)
    assert (parsed["width"], parsed["height"]) == (512, 768)
    assert parsed["scheduler"] == "dpmpp_2m"
    assert parsed["model"] == "v1-5-pruned-emaonly"
    assert parsed["extra"]["Lora hashes"] == "a: 1, b: 2"
    assert parsed["extra"]["Schedule type"] == "Karras"


def test_text_without_parameter_line_is_all_prompt():
    assert ps.parse_parameters("a red circle\nsecond line") == {"prompt": "a red circle\nsecond line", "negative_prompt": ""}


def test_a1111_chunk_alone_is_read_when_our_json_is_missing(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", ps.format_parameters(SETTINGS))
    _image().save(tmp_path / "a1111.png", pnginfo=info)
    assert ps.spec_fields(ps.read_png_settings(tmp_path / "a1111.png")) == ps.spec_fields(SETTINGS)


def test_our_json_chunk_keeps_types_and_unicode(tmp_path):
    settings = {**SETTINGS, "prompt": "un cercle rouge — é ✓"}
    path = ps.save_png(_image(), settings, tmp_path / "u.png")
    with Image.open(path) as image:
        stored = json.loads(image.text[ps.STUDIO_CHUNK])
    assert stored["format"] == ps.FORMAT_ID and stored["settings"] == settings


def test_image_without_settings_gives_an_actionable_error(tmp_path):
    _image().save(tmp_path / "plain.png")
    with pytest.raises(InvalidInputError, match="no generation settings"):
        ps.read_png_settings(tmp_path / "plain.png")
    (tmp_path / "not.png").write_bytes(b"not an image")
    with pytest.raises(InvalidInputError, match="not an image"):
        ps.read_png_settings(tmp_path / "not.png")


def test_spec_fields_build_a_generate_spec():
    spec = GenerateSpec(**ps.spec_fields({**SETTINGS, "timings": {"total": 1.0}}))
    assert spec.seed == SETTINGS["seed"] and spec.scheduler == "euler_ancestral"
