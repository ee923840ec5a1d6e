"""Protects: a loaded model reports the facts the engine and UI size things by, on the chosen device."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from studio.errors import ModelLoadError
from studio.models import choose_device, load_model


def test_tiny_model_reports_native_size_multiple_and_prediction_type(tiny_engine):
    assert tiny_engine.native_size == 128  # unet sample_size 16 x VAE factor 8
    assert tiny_engine.size_multiple == 8
    assert tiny_engine.prediction_type == "v_prediction"
    assert tiny_engine.model_name == "tiny-sd"  # the folder's name


def test_cpu_runs_in_float32_and_an_explicit_choice_wins():
    assert choose_device("cpu", None) == (torch.device("cpu"), torch.float32)
    assert choose_device("cpu", torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)
    if not torch.cuda.is_available():
        assert choose_device(None, None) == (torch.device("cpu"), torch.float32)


def test_asking_for_cuda_without_one_says_so():

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="--device cpu"):
        choose_device("cuda", None)


def test_a_folder_of_another_kind_of_pipeline_is_refused_by_name(tiny_model_dir, tmp_path):
    folder = tmp_path / "inpainting"
    shutil.copytree(tiny_model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionInpaintPipeline"}))
    with pytest.raises(ModelLoadError, match="holds a StableDiffusionInpaintPipeline model"):
        load_model(str(folder), "cpu")


def test_a_missing_embedded_model_is_an_error_that_says_how_to_restore_it(tmp_path, monkeypatch):
    """A broken install must not draw noise from random weights as if nothing were wrong."""
    from studio import models

    missing = tmp_path / "shapes-sd"
    monkeypatch.setattr(models, "EMBEDDED_MODEL_DIR", missing)
    with pytest.raises(ModelLoadError) as error:
        load_model(None, device="cpu")
    message = str(error.value)
    assert str(missing) in message and "model_index.json" in message
    assert "git checkout -- assets/models/shapes-sd" in message and "scripts/train_shapes_gpu.sh" in message
    assert "--model" in message


def test_a_damaged_embedded_model_names_the_fault_and_the_remedy(tmp_path, monkeypatch):
    from studio import models

    damaged = tmp_path / "shapes-sd"
    damaged.mkdir()
    (damaged / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')  # no components
    monkeypatch.setattr(models, "EMBEDDED_MODEL_DIR", damaged)
    with pytest.raises(ModelLoadError, match="embedded model is damaged.*git checkout"):
        load_model(None, device="cpu")
