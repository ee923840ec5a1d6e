"""--offload and --compile: refused where they cannot work, and the same pictures where they do.

The GPU figures (time, peak memory) are in bench/results/sd15_costs_cuda.md; here the plumbing is
checked on the CPU: the offload hooks with the CPU as their execution device, and a compiled UNet."""

from __future__ import annotations

import pytest
import torch

from studio.engine import Engine
from studio.errors import ModelLoadError
from studio.events import Result
from studio.models import offload_to_cpu
from studio.specs import GenerateSpec

SPEC = GenerateSpec("a big red circle on a blue background", seed=3, steps=3, preview_every=1)


def pixels(engine: Engine):
    return next(e for e in engine.generate(SPEC) if isinstance(e, Result)).pixels


def test_offload_without_a_gpu_is_refused_with_the_reason(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="needs a CUDA device"):
        Engine(str(tiny_model_dir), device="cpu", offload=True)


def test_offload_ring_moves_each_component_when_it_runs_and_keeps_the_pictures(tiny_model_dir):
    engine = Engine(str(tiny_model_dir), device="cpu")
    before = pixels(engine)
    model = engine.model
    offload_to_cpu([model.text_encoder, model.text_encoder_2, model.unet], torch.device("cpu"))
    text_hook, unet_hook = model.text_encoder._hf_hook, model.unet._hf_hook
    assert text_hook.prev_module_hook.model is model.unet  # a new prompt evicts the UNet: the ring is closed
    assert unet_hook.prev_module_hook.model is model.text_encoder
    assert not hasattr(model.vae, "_hf_hook")  # previews decode between steps without moving the UNet
    assert torch.equal(torch.as_tensor(pixels(engine)), torch.as_tensor(before))


def test_cli_reports_offload_on_cpu_as_an_error(capsys):
    from studio.cli import main

    assert main(["--device", "cpu", "--offload", "generate", "a circle", "--out", "unused"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_unet_gives_the_eager_pictures(tiny_model_dir):
    eager = pixels(Engine(str(tiny_model_dir), device="cpu"))
    compiled = Engine(str(tiny_model_dir), device="cpu", compile_unet=True)
    assert torch.allclose(torch.as_tensor(pixels(compiled)), torch.as_tensor(eager), atol=2e-3)
