"""SDXL (two text encoders, pooled text embedding, size/crop ids) through the engine.

Fast: a tiny random model with SDXL's structure gives the same pixels as diffusers'
StableDiffusionXLPipeline (empty negative prompt = zeros, as its force_zeros_for_empty_prompt;
and with a negative prompt), and attention maps at its cross-attention resolutions.
Slow: the published SDXL architecture (random weights, bfloat16 on the CPU) generates a step
with attention maps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from studio.architectures import SDXL, random_pipeline
from studio.engine import Engine
from studio.events import AttentionMaps, Result
from studio.specs import GenerateSpec

TINY_SDXL = replace(
    SDXL, name="tiny SDXL", native_size=128,
    unet={**SDXL.unet, "sample_size": 16, "block_out_channels": [32, 64], "layers_per_block": 1,
          "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
          "transformer_layers_per_block": [1, 2], "attention_head_dim": [2, 4], "norm_num_groups": 16,
          "cross_attention_dim": 64, "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32},
    vae={**SDXL.vae, "sample_size": 128, "block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8, "layers_per_block": 1},
    text_encoder={**SDXL.text_encoder, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "projection_dim": 32},
    text_encoder_2={**SDXL.text_encoder_2, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "projection_dim": 32},
)
PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sdxl"
    random_pipeline(TINY_SDXL, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sdxl_engine(tiny_sdxl_dir):
    return Engine(str(tiny_sdxl_dir), device="cpu")


@pytest.mark.parametrize("negative", ["", "a blurry photograph"])
def test_same_pixels_as_the_sdxl_pipeline(sdxl_engine, tiny_sdxl_dir, negative):
    spec = GenerateSpec(PROMPT, negative_prompt=negative, seed=3, steps=3, guidance_scale=5.0, scheduler="euler")
    ours = next(e for e in sdxl_engine.generate(spec) if isinstance(e, Result))
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipeline.scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    theirs = pipeline(PROMPT, negative_prompt=negative or None, num_inference_steps=3, guidance_scale=5.0,
                      generator=torch.Generator("cpu").manual_seed(3), output_type="np").images
    assert ours.pixels.shape == theirs.shape == (1, 128, 128, 3)
    assert np.abs(ours.pixels - theirs).max() <= 1e-4


def test_attention_maps_at_each_cross_attention_resolution(sdxl_engine):
    spec = GenerateSpec(PROMPT, seed=1, steps=2, capture_attention=True, attention_every=1)
    maps = [e for e in sdxl_engine.generate(spec) if isinstance(e, AttentionMaps)][-1]
    assert maps.tokens == PROMPT.split()
    # SDXL has no attention at the full latent resolution: the second level (8) and the mid block (8)
    assert {size: m.shape for size, m in maps.per_resolution.items()} == {8: (8, 8, 8)}


@pytest.mark.slow
def test_published_sdxl_architecture_generates_with_attention_maps(tmp_path):
    folder = tmp_path / "sdxl"
    random_pipeline(SDXL, dtype=torch.bfloat16).save_pretrained(folder)
    engine = Engine(str(folder), device="cpu", dtype=torch.bfloat16)
    assert engine.native_size == 1024 and engine.model.vae.dtype == torch.float32
    spec = GenerateSpec(PROMPT, seed=0, steps=1, width=256, height=256, capture_attention=True, attention_every=1)
    events = list(engine.generate(spec))
    result = events[-1]
    assert isinstance(result, Result) and result.pixels.shape == (1, 256, 256, 3) and np.isfinite(result.pixels).all()
    maps = [e for e in events if isinstance(e, AttentionMaps)][-1]
    assert {size: m.shape for size, m in maps.per_resolution.items()} == {16: (8, 16, 16), 8: (8, 8, 8)}
