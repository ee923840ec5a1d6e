"""Protects: bad input raises a typed error with an actionable message before any model work."""

from __future__ import annotations

import json

import pytest

from studio.errors import InvalidInputError, ModelLoadError, UnknownWordError
from studio.models import load_model
from studio.specs import GenerateSpec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"steps": 0}, "Steps"),
        ({"steps": 151}, "Steps"),
        ({"guidance_scale": -1.0}, "Guidance"),
        ({"guidance_scale": 31.0}, "Guidance"),
        ({"width": 32}, "Image size"),
        ({"height": 4096}, "Image size"),
        ({"width": 100}, "multiple of 8"),
        ({"batch_size": 0}, "Batch"),
        ({"scheduler": "plms"}, "Unknown scheduler"),
    ],
)
def test_out_of_range_spec_is_rejected_before_any_model_work(tiny_engine, monkeypatch, changes, message):
    def no_model_work(*args, **kwargs):
        raise AssertionError("the model ran on invalid input")

    monkeypatch.setattr(tiny_engine.model.unet, "forward", no_model_work)
    monkeypatch.setattr(tiny_engine.model.text_encoder, "forward", no_model_work)
    spec = GenerateSpec(**{"prompt": "a red circle", "steps": 2, **changes})
    with pytest.raises(InvalidInputError, match=message):
        tiny_engine.generate(spec)  # raises at the call, not when the events are consumed


def test_unknown_words_are_named(tiny_engine):
    with pytest.raises(UnknownWordError) as caught:
        tiny_engine.generate(GenerateSpec("a zebra circle next to a giraffe", steps=2))
    assert caught.value.words == ["zebra", "next", "to", "giraffe"]
    assert "'zebra'" in str(caught.value)


def test_unknown_word_in_the_negative_prompt_is_named(tiny_engine):
    with pytest.raises(UnknownWordError, match="'blurry'"):
        tiny_engine.generate(GenerateSpec("a red circle", negative_prompt="blurry", steps=2))


def test_too_long_prompt_is_rejected_not_truncated(tiny_engine):
    with pytest.raises(InvalidInputError, match="reads at most 32"):
        tiny_engine.generate(GenerateSpec(" ".join(["red"] * 40), steps=2))


def test_missing_model_path_says_so(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no-such-model"), device="cpu")


def test_folder_that_is_not_a_diffusers_model_says_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_model(str(tmp_path), device="cpu")


def test_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    with pytest.raises(ModelLoadError, match=".safetensors or .ckpt"):
        load_model(str(notes), device="cpu")


def test_hub_id_that_cannot_be_loaded_says_what_to_do_instead():
    # Offline: no connection; online: no such repository. Either way a ModelLoadError, not a crash.
    with pytest.raises(ModelLoadError, match="local folder"):
        load_model("diffusion-control-studio/no-such-model", device="cpu")
