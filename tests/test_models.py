"""Protects: a loaded model reports the facts the engine and UI size things by, on the chosen device."""

from __future__ import annotations

import pytest
import torch

from studio.errors import ModelLoadError
from studio.models import choose_device


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
