"""Protects: plain text-to-image equals stock diffusers.StableDiffusionPipeline on the same model,
prompt, seed, scheduler and steps (max abs pixel difference <= 1e-4 on CPU fp32), like minGPT's
test against the Hugging Face implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.sampling import make_scheduler
from studio.specs import GenerateSpec

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def stock_pipeline(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize(
    ("scheduler", "negative_prompt", "batch_size"),
    [("ddim", "", 2), ("dpmpp_2m", "", 1), ("euler_ancestral", "a blue square", 1)],
)
def test_engine_output_equals_stable_diffusion_pipeline(tiny_engine, stock_pipeline, scheduler, negative_prompt, batch_size):
    spec = GenerateSpec(
        "a big red circle on the left", negative_prompt=negative_prompt, seed=7, steps=5,
        guidance_scale=6.0, scheduler=scheduler, batch_size=batch_size,
    )
    result = list(tiny_engine.generate(spec))[-1]

    stock_pipeline.scheduler = make_scheduler(scheduler, tiny_engine.model.scheduler_config)
    expected = stock_pipeline(
        spec.prompt, negative_prompt=negative_prompt or None, num_inference_steps=spec.steps,
        guidance_scale=spec.guidance_scale, num_images_per_prompt=batch_size,
        # item i is drawn from seed + i, as AUTOMATIC1111 seeds a batch (diffusers: one generator per item)
        generator=[torch.Generator().manual_seed(spec.seed + item) for item in range(batch_size)], output_type="np",
    ).images

    assert result.pixels.shape == expected.shape == (batch_size, 128, 128, 3)
    assert np.abs(result.pixels - expected).max() <= TOLERANCE
    assert result.unet_evaluations == spec.steps  # conditions batched: one UNet call per step
