"""Single-file checkpoints (original LDM / CompVis layout) load offline, and folders export to one.

Protects what a user with a `.safetensors` from a model site relies on: it loads with no network
(configs come from studio/architectures.py), every weight arrives unchanged, it generates; a file
that is not an SD 1.x/2.x checkpoint is refused with a message naming what it is; the prediction
type follows the file's own config or metadata. The export (`python -m studio.export_single_file`)
is checked by diffusers' own original -> diffusers converters giving back every tensor.
"""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from studio import export_single_file
from studio.architectures import SD15, SD21, random_pipeline
from studio.export_single_file import clip_state_dict, ldm_state_dict
from studio.engine import Engine
from studio.errors import ModelLoadError
from studio.events import Result
from studio.models import tiny_random_pipeline
from studio.single_file import read_header, resolve_prediction_type
from studio.specs import GenerateSpec

V1_MARKER = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
V2_MARKER = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"


def narrow_components(arch):
    """The architecture's exact structure (levels, blocks, attention kinds, text widths) at a
    fraction of its channels, so the key mapping is checked in a second."""
    head_dim = [2, 4, 8, 8] if isinstance(arch.unet["attention_head_dim"], list) else 8
    unet = UNet2DConditionModel.from_config(
        {**arch.unet, "block_out_channels": [32, 64, 128, 128], "norm_num_groups": 8, "attention_head_dim": head_dim})
    vae = AutoencoderKL.from_config({**arch.vae, "block_out_channels": [16, 32, 64, 64], "norm_num_groups": 8})
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**arch.text_encoder, "num_hidden_layers": 2, "intermediate_size": 64}))
    return unet, vae, text_encoder


def assert_converts_back(ldm: dict, unet, vae, text_encoder):
    """diffusers' original -> diffusers converters return every tensor of every component unchanged."""
    if text_encoder.config.hidden_size == 1024:
        text_back = convert_open_clip_checkpoint(text_encoder, ldm)
    else:
        text_back = convert_ldm_clip_checkpoint(ldm)
    text_state = {k: v for k, v in clip_state_dict(text_encoder).items() if not k.endswith("position_ids")}
    for name, state, back in (("unet", unet.state_dict(), convert_ldm_unet_checkpoint(ldm, unet.config)),
                              ("vae", vae.state_dict(), convert_ldm_vae_checkpoint(ldm, vae.config)),
                              ("text encoder", text_state, text_back)):
        assert set(back) == set(state), f"{name}: keys differ, e.g. {sorted(set(back) ^ set(state))[:3]}"
        for key, tensor in state.items():
            assert torch.equal(back[key].reshape(tensor.shape), tensor), f"{name}: {key} changed"


@pytest.mark.parametrize("arch", [SD15, SD21], ids=["sd15", "sd21"])
def test_original_layout_converts_back_to_every_weight(arch):
    torch.manual_seed(0)
    unet, vae, text_encoder = narrow_components(arch)

    ldm = ldm_state_dict(SimpleNamespace(unet=unet, vae=vae, text_encoder=text_encoder))  # a pipeline's parts
    assert V1_MARKER in ldm and (arch is SD15 or ldm[V2_MARKER].shape[-1] == 1024)
    assert_converts_back(ldm, unet, vae, text_encoder)


def test_export_command_writes_a_file_diffusers_converts_back(tmp_path, capsys):
    pipeline = tiny_random_pipeline(seed=3)  # v-prediction: the metadata must say so
    folder, file = tmp_path / "tiny", tmp_path / "tiny.safetensors"
    pipeline.save_pretrained(folder)
    assert export_single_file.main([str(folder), str(file)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert_converts_back(load_file(str(file)), pipeline.unet, pipeline.vae, pipeline.text_encoder)
    with safe_open(str(file), framework="pt") as handle:
        assert handle.metadata() == {"modelspec.prediction_type": "v"}


def test_export_refuses_a_missing_folder_and_a_pickle_target(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_single_file.main([str(tmp_path / "nowhere"), str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2 and "not a diffusers model folder" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="writes .safetensors"):
        export_single_file.save_single_file(tiny_random_pipeline(), tmp_path / "out.ckpt")


# --- files that are not SD 1.x/2.x checkpoints: tiny files with the telling key names and shapes


def write_shapes(path, shapes: dict, metadata=None):
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(path), metadata=metadata)
    return path


def test_an_inpainting_checkpoint_is_refused_naming_its_type(tmp_path):
    file = write_shapes(tmp_path / "inpaint.safetensors", {UNET_INPUT: (8, 9, 3, 3), V1_MARKER: (8, 16, 1, 1)})
    with pytest.raises(ModelLoadError, match=r"'inpainting' checkpoint.*v1 \(SD 1.5\), v2 \(SD 2.1\)"):
        Engine(str(file), device="cpu")


def test_unrelated_tensors_are_not_a_checkpoint(tmp_path):
    file = write_shapes(tmp_path / "classifier.safetensors", {"fc.weight": (4, 4)})
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        Engine(str(file), device="cpu")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_corrupt_file_gets_a_clear_error(tmp_path, suffix):
    file = tmp_path / f"broken{suffix}"
    file.write_bytes(b"\x00\x01 not a checkpoint " * 10)
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        Engine(str(file), device="cpu")


def test_a_ckpt_pickle_is_read_for_its_type(tmp_path):
    file = tmp_path / "model.ckpt"
    torch.save({"state_dict": {V2_MARKER: torch.zeros(2, 1024), V1_MARKER: torch.zeros(2, 2, 1, 1)}}, file)
    assert read_header(file).model_type == "v2"


# --- prediction type: the file's own config, then its metadata, then the architecture (warned for SD 2.x)


@pytest.fixture
def v2_file(tmp_path):
    return write_shapes(tmp_path / "sd2.safetensors", {V2_MARKER: (2, 1024), V1_MARKER: (2, 2, 1, 1)})


def test_sd2_without_a_declaration_is_v_prediction_with_a_warning(v2_file, caplog):
    with caplog.at_level(logging.WARNING, logger="studio.single_file"):
        assert resolve_prediction_type(v2_file, read_header(v2_file), SD21) == "v_prediction"
    assert "sd2.yaml" in caplog.text and "parameterization: eps" in caplog.text


@pytest.mark.parametrize("yaml_text, expected", [
    ('model:\n  params:\n    parameterization: "v"\n', "v_prediction"),
    ("model:\n  params:\n    linear_start: 0.00085\n", "epsilon"),  # LDM's default is eps
])
def test_the_original_yaml_beside_the_file_decides(v2_file, yaml_text, expected):
    v2_file.with_suffix(".yaml").write_text(yaml_text)
    assert resolve_prediction_type(v2_file, read_header(v2_file), SD21) == expected


def test_a_yaml_that_is_not_a_config_gets_a_clear_error(v2_file):
    v2_file.with_suffix(".yaml").write_text("- just\n- a list\n")
    with pytest.raises(ModelLoadError, match="Could not read the model config"):
        resolve_prediction_type(v2_file, read_header(v2_file), SD21)


def test_the_modelspec_metadata_decides_and_bad_values_are_refused(tmp_path):
    shapes = {V2_MARKER: (2, 1024), V1_MARKER: (2, 2, 1, 1)}
    eps = write_shapes(tmp_path / "eps.safetensors", shapes, {"modelspec.prediction_type": "epsilon"})
    assert resolve_prediction_type(eps, read_header(eps), SD21) == "epsilon"
    odd = write_shapes(tmp_path / "odd.safetensors", shapes, {"modelspec.prediction_type": "flow"})
    with pytest.raises(ModelLoadError, match="'flow'"):
        resolve_prediction_type(odd, read_header(odd), SD21)


# --- the full-size round trip: random SD 1.5 / 2.1 weights written in the original layout, loaded offline


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the load must need no hub."""
    def refuse(*args, **kwargs):
        raise AssertionError("a single-file load tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
@pytest.mark.parametrize("arch, prediction_type, native_size", [
    (SD15, "epsilon", 512), (SD21, "v_prediction", 768), (SD21, "epsilon", 512),  # 2.1 and 2.1-base
], ids=["sd15", "sd21", "sd21-base"])
def test_full_size_checkpoint_loads_offline_with_every_weight_and_generates(
        arch, prediction_type, native_size, tmp_path, no_network):
    # float16 halves memory and disk (~2 GB); the CPU engine loads it as float32, which is exact
    written = random_pipeline(arch, seed=5, dtype=torch.float16)
    written.scheduler = written.scheduler.from_config(written.scheduler.config, prediction_type=prediction_type)
    file = export_single_file.save_single_file(written, tmp_path / "model.safetensors")
    engine = Engine(str(file), device="cpu")

    model = engine.model
    assert engine.prediction_type == prediction_type
    assert engine.native_size == native_size
    for name in ("unet", "vae", "text_encoder"):
        expected = clip_state_dict(getattr(written, name)) if name == "text_encoder" else getattr(written, name).state_dict()
        loaded = clip_state_dict(getattr(model, name)) if name == "text_encoder" else getattr(model, name).state_dict()
        expected = {k: v for k, v in expected.items() if not k.endswith("position_ids")}
        assert set(expected) <= set(loaded), f"{name}: weights missing after loading"
        for key, tensor in expected.items():
            assert torch.equal(loaded[key], tensor.float()), f"{name}: {key} differs after the round trip"
    del written

    spec = GenerateSpec("a red cube", seed=0, steps=1, width=256, height=256)
    result = list(engine.generate(spec))[-1]
    assert isinstance(result, Result)
    assert result.pixels.shape == (1, 256, 256, 3) and np.isfinite(result.pixels).all()
