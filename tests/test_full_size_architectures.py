"""The engine on the real SD 1.5 and SD 2.1 architectures (published configs, random weights).

Protects what a user with a real checkpoint relies on: a diffusers folder of either loads, the
engine generates at a non-native size with the model's own parameterisation (SD 2.1 is
v-prediction), attention maps come out at every UNet resolution, and the engine's x0 estimate
equals the scheduler's own. Slow: ~1 GB of random weights per model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.architectures import SD15, SD21, random_pipeline
from studio.denoiser import Denoiser
from studio.engine import Engine
from studio.events import AttentionMaps, Result
from studio.sampling import make_scheduler
from studio.specs import GenerateSpec

pytestmark = pytest.mark.slow

SIZE = 256  # small for the CPU; latents 32x32, cross-attention at 32, 16, 8 and the mid block's 4


@pytest.fixture(scope="module", params=[SD15, SD21], ids=["sd15", "sd21"])
def engine(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("full-size") / request.param.name.replace(" ", "")
    random_pipeline(request.param).save_pretrained(folder)
    loaded = Engine(str(folder), device="cpu")
    loaded.architecture = request.param
    return loaded


def test_folder_loads_with_the_architecture_facts(engine):
    arch = engine.architecture
    assert engine.native_size == arch.native_size
    assert engine.size_multiple == 8
    assert engine.prediction_type == arch.scheduler.get("prediction_type", "epsilon")
    assert engine.model.tokenizer.model_max_length == 77


def test_generates_with_attention_maps_at_every_resolution(engine):
    spec = GenerateSpec("a photograph of an astronaut riding a horse", seed=1, steps=2, width=SIZE, height=SIZE,
                        capture_attention=True, attention_every=1)
    events = list(engine.generate(spec))
    result = events[-1]
    assert isinstance(result, Result)
    assert result.pixels.shape == (1, SIZE, SIZE, 3) and np.isfinite(result.pixels).all()
    assert result.unet_evaluations == 2
    maps = [e for e in events if isinstance(e, AttentionMaps)][-1]
    assert maps.tokens == ["a", "photograph", "of", "an", "astronaut", "riding", "a", "horse"]
    latent = SIZE // 8
    assert {size: m.shape for size, m in maps.per_resolution.items()} == {
        size: (8, size, size) for size in (latent, latent // 2, latent // 4, latent // 8)
    }


@torch.no_grad()
def test_engine_x0_estimate_equals_the_schedulers(engine):
    """ε/v/x0 conversions: the denoiser's x0 from the raw UNet output is the scheduler's pred_original_sample."""
    model = engine.model
    scheduler = make_scheduler("ddim", model.scheduler_config)
    scheduler.set_timesteps(10)
    denoiser = Denoiser(model, scheduler.alphas_cumprod)
    t = scheduler.timesteps[3]
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = engine.encode_prompt(engine.tokenize("a horse"))
    output = denoiser.predict(x_t, t, [cond])[0]
    expected = scheduler.step(output, t, x_t, return_dict=True).pred_original_sample
    torch.testing.assert_close(denoiser.to_x0(output, x_t, t), expected, rtol=1e-4, atol=1e-4)
