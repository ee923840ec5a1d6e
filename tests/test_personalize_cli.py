"""`studio ... --lora FILE[:SCALE] --embedding FILE[:TOKEN]` and `studio concepts FILE` on the embedded model, with
concept files the test writes (studio.personalize.files' writers; peft for the LoRA layers)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image

from studio.cli import main
from studio.models import load_model
from studio.personalize.files import (
    base_fingerprint,
    write_concept_json,
    write_embeddings,
    write_lora,
)
from studio.png_settings import A1111_CHUNK, read_png_settings


@pytest.fixture(scope="module")
def concept_files(tmp_path_factory) -> dict[str, Path]:
    """A LoRA trained folder for the word "star" and a diffusers embedding file for "<new>"."""
    model = load_model(None, "cpu")
    root = tmp_path_factory.mktemp("concepts")
    torch.manual_seed(0)
    unet = copy.deepcopy(model.unet)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    lora = root / "star-lora"
    files = write_lora(lora, "star", get_peft_model_state_dict(unet), alpha=2)
    write_concept_json(lora, method="lora", words=["star"], class_word="circle",
                       base={"name": model.name, "fingerprint": base_fingerprint(model)}, steps=0, stopped=False,
                       files=files)
    width = model.text_encoder.get_input_embeddings().weight.shape[1]
    write_embeddings(root / "new", {"<new>": torch.randn(1, width)})
    return {"lora": lora, "embedding": root / "new" / "learned_embeds.safetensors"}


def studio(*args) -> int:
    return main(["--device", "cpu", *map(str, args)])


def test_generate_with_a_lora_and_an_embedding_records_them_and_remakes(concept_files, tmp_path):
    lora, embedding = concept_files["lora"], concept_files["embedding"]
    out = tmp_path / "out"
    assert studio("generate", "a red star on a blue <new>", "--seeds", 1, "--steps", 2, "--lora", f"{lora}:0.7",
                  "--embedding", embedding, "--out", out) == 0
    png = out / "0000-seed1.png"
    settings = read_png_settings(png)
    assert [(c["name"], c["kind"], c["scale"]) for c in settings["concepts"]] == [("star", "lora", 0.7),
                                                                                 ("<new>", "embedding", 1.0)]
    assert all(len(c["hash"]) == 16 for c in settings["concepts"])
    with Image.open(png) as image:
        assert image.text[A1111_CHUNK].splitlines()[0] == "a red star on a blue <new> <lora:star:0.7>"
    # the same files loaded again remake the image from its settings
    assert studio("generate", "--from-png", png, "--lora", lora, "--embedding", embedding, "--out", tmp_path / "again") == 0
    with Image.open(png) as first, Image.open(tmp_path / "again" / "0000-seed1.png") as again:
        np.testing.assert_array_equal(np.asarray(first), np.asarray(again))


def test_edit_commands_take_concepts_too(concept_files, tmp_path):
    assert studio("edit", "p2p", "--source", "a big red circle", "--target", "a big red square", "--edit", "word swap",
                  "--seed", 2, "--steps", 2, "--lora", f"{concept_files['lora']}:0.5", "--out", tmp_path) == 0
    settings = read_png_settings(tmp_path / "0001-edited.png")
    assert (settings["job"], settings["concepts"][0]["name"], settings["concepts"][0]["scale"]) == ("p2p", "star", 0.5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora", "missing.safetensors"], "--lora missing.safetensors: no such file or folder"),
        (["--lora", "{lora}:much"], "the scale after ':' must be a number, got 'much'"),
        (["--lora", "{lora}:5"], "Concept scale must be between -2 and 2, got 5"),
        (["--embedding", "{lora}/concept.json"], "concept.json"),  # not a concept file: the reader says why
    ],
)
def test_bad_concept_flags_are_one_line(concept_files, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert studio("generate", "a red circle", "--steps", 1, *[f.format(**concept_files) for f in flags], "--out", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_concepts_command_says_what_a_file_is(concept_files, capsys):
    assert studio("concepts", concept_files["lora"], concept_files["embedding"]) == 0
    text = capsys.readouterr().out
    assert "star" in text and "<new>" in text and "LoRA" in text
