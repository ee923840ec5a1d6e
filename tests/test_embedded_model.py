"""The shipped shapes model loads with stock diffusers and with the engine, and follows prompts."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from studio.errors import UnknownWordError
from studio.models import EMBEDDED_MODEL_DIR
from studio.shapes.judge import judge_pixels
from studio.specs import GenerateSpec

def test_stock_pipeline_loads_and_draws_the_background_asked_for():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL_DIR, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    images = pipe(["a big red circle on a blue background"] * 4, num_inference_steps=15, guidance_scale=5,
                  generator=generators, output_type="np").images
    assert images.shape == (4, 128, 128, 3)
    backgrounds = [judge_pixels((im * 255).round().astype(np.uint8)).background for im in images]
    assert backgrounds.count("blue") >= 3, backgrounds


def test_engine_defaults_to_the_embedded_model_and_names_unknown_words(engine):
    assert engine.model_name == "shapes-sd" and engine.native_size == 128
    with pytest.raises(UnknownWordError, match="'dog'"):
        engine.generate(GenerateSpec("a red dog on a blue background"))
