"""Protects: an inversion saved to disk comes back field for field, and reading an inversion file never runs code.

`studio invert` writes `<method>.inversion.safetensors` and `studio edit ... --inversion` reads it: a shared
file must be data only, so pickles are refused before they are opened.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from studio.errors import InvalidInputError
from studio.inversion import Inversion, InversionSpec
from studio.inversion.file import FORMAT_KEY, load_inversion, save_inversion


def invert(engine, method: str) -> Inversion:
    photo = Image.new("RGB", (200, 150), (220, 30, 30))
    spec = InversionSpec(prompt="a red circle", method=method, steps=3, inner_steps=2, float64=method == "edict")
    return list(engine.invert(spec, photo))[-1].inversion


def assert_same(value, expected) -> None:
    if isinstance(expected, torch.Tensor):
        assert value.dtype == expected.dtype and torch.equal(value, expected)
    elif isinstance(expected, list) and expected and isinstance(expected[0], torch.Tensor):
        assert len(value) == len(expected)
        for item, expected_item in zip(value, expected):
            assert_same(item, expected_item)
    elif isinstance(expected, Image.Image):
        assert value.mode == expected.mode and np.array_equal(np.asarray(value), np.asarray(expected))
    else:
        assert value == expected


@pytest.mark.parametrize("method", ["null_text", "edict", "ddim", "ddpm", "direct", "fixed_point"])
def test_a_saved_inversion_loads_back_field_for_field(tiny_engine, tmp_path, method):
    inversion = invert(tiny_engine, method)
    path = save_inversion(inversion, tmp_path / f"{method}.inversion.safetensors")
    loaded = load_inversion(path)
    for field in fields(Inversion):
        assert_same(getattr(loaded, field.name), getattr(inversion, field.name))
    assert loaded.steps == inversion.steps and loaded.noise_latents.shape == inversion.noise_latents.shape


def test_a_file_written_before_corrections_existed_still_loads(tiny_engine, tmp_path):
    """Files of the studio before edit-friendly DDPM inversion have no `corrections` field: they load as None."""
    path = save_inversion(invert(tiny_engine, "ddim"), tmp_path / "old.inversion.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()[FORMAT_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    del header["fields"]["corrections"]
    save_file(tensors, str(path), metadata={FORMAT_KEY: json.dumps(header)})
    assert load_inversion(path).corrections is None


def test_a_file_whose_header_length_begins_like_a_pickle_still_loads(tmp_path):
    """safetensors files start with their header's length: its low byte may be 0x80, a pickle's first byte."""
    latents = torch.zeros(1, 4, 2, 2)
    small = Inversion(method="ddim", image=Image.new("RGB", (16, 16)), prompt="", guidance_scale=1.0,
                      timesteps=torch.tensor([500, 0]), latents=latents, trajectory=[latents + 1, latents])
    for padding in range(256):  # the header grows 8 bytes at a time: some length ends in 0x80
        path = save_inversion(replace(small, preparation="x" * padding), tmp_path / "small.inversion.safetensors")
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert load_inversion(path).preparation == "x" * padding


class WritesAFileWhenUnpickled:
    """What a hostile "inversion" could carry: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_is_refused_without_running_it(tmp_path, writer):
    marker, file = tmp_path / "pwned", tmp_path / "shared.inversion.pt"
    payload = {"trajectory": WritesAFileWhenUnpickled(marker)}
    if writer == "torch.save":
        torch.save(payload, file)
    else:
        file.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(InvalidInputError, match="it is a pickle.*studio invert"):
        load_inversion(file)
    assert not marker.exists()


def test_a_safetensors_file_that_is_not_an_inversion_is_refused(tmp_path):
    file = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2)}, str(file))
    with pytest.raises(InvalidInputError, match="not an inversion written by `studio invert`"):
        load_inversion(file)
    (tmp_path / "garbage.inversion.safetensors").write_bytes(b"no header here")
    with pytest.raises(InvalidInputError, match="Could not read the inversion"):
        load_inversion(tmp_path / "garbage.inversion.safetensors")
