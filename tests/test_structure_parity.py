"""Protects: structure control in diffusers' default mode is diffusers' own pipelines, pixel for pixel (max abs
difference <= 1e-4, CPU fp32, same model, seed and settings): StableDiffusionControlNetPipeline with one net, with two
(MultiControlNetModel, different scales and windows) and in guess mode; StableDiffusionAdapterPipeline; and
StableDiffusionPipeline.load_ip_adapter on a file in diffusers' layout. The controls are random
(tests/structure_harness.py), on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from structure_harness import square_map
from structure_harness import structure_engine as random_structure_engine

from studio.events import Result
from studio.sampling import make_scheduler
from studio.specs import GenerateSpec
from studio.structure.adapters import save_ip_adapter
from studio.structure.spec import (
    ControlSpec,
    ImagePromptSpec,
    StructureImages,
    StructureSpec,
)

TOLERANCE = 1e-4
PROMPT = "a big red circle on the left"
SETTINGS = dict(seed=3, steps=4, guidance_scale=6.0, scheduler="ddim")
MAP_A, MAP_B = square_map(10, 20, 60), square_map(60, 50, 50)


@pytest.fixture(scope="module")
def structure_engine(tiny_model_dir):
    return random_structure_engine(tiny_model_dir)


def stock(tiny_model_dir, engine):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.scheduler = make_scheduler(SETTINGS["scheduler"], engine.model.scheduler_config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def ours(engine, structure: StructureSpec, images: StructureImages, batch_size: int = 1) -> Result:
    spec = GenerateSpec(PROMPT, structure=structure, batch_size=batch_size, **SETTINGS)
    return list(engine.generate(spec, structure_images=images))[-1]


def reference_call(batch_size: int = 1) -> dict:
    # item i is drawn from seed + i, as the engine seeds a batch (diffusers: one generator per item)
    return dict(num_inference_steps=SETTINGS["steps"], guidance_scale=SETTINGS["guidance_scale"],
                num_images_per_prompt=batch_size, output_type="np",
                generator=[torch.Generator().manual_seed(SETTINGS["seed"] + item) for item in range(batch_size)])


def plain(engine) -> np.ndarray:
    return list(engine.generate(GenerateSpec(PROMPT, **SETTINGS)))[-1].pixels


def test_one_controlnet_equals_controlnet_pipeline(structure_engine, tiny_model_dir):
    from diffusers import StableDiffusionControlNetPipeline

    net = structure_engine.model.controls["layout"].module
    pipeline = StableDiffusionControlNetPipeline.from_pipe(stock(tiny_model_dir, structure_engine), controlnet=net)
    expected = pipeline(PROMPT, image=Image.fromarray(MAP_A), controlnet_conditioning_scale=0.8,
                        control_guidance_start=0.0, control_guidance_end=0.75, **reference_call()).images
    result = ours(structure_engine, StructureSpec((ControlSpec("layout", scale=0.8, stop=0.75),)),
                  StructureImages((MAP_A,)))
    assert np.abs(result.pixels - expected).max() <= TOLERANCE
    assert np.abs(result.pixels - plain(structure_engine)).max() > 1e-2  # the control matters: the test can fail
    assert result.unet_evaluations == SETTINGS["steps"]  # one UNet call per step, the net's residuals in it
    assert result.settings["structure"]["controls"][0]["control"] == "layout"
    assert len(result.settings["structure_images"]["controls"]) == 1


def test_two_controlnets_equal_multicontrolnet_with_their_own_scales_and_windows_on_a_batch(structure_engine, tiny_model_dir):
    from diffusers import StableDiffusionControlNetPipeline

    nets = [structure_engine.model.controls[name].module for name in ("layout", "outline")]
    pipeline = StableDiffusionControlNetPipeline.from_pipe(stock(tiny_model_dir, structure_engine), controlnet=nets)
    expected = pipeline(PROMPT, image=[Image.fromarray(MAP_A), Image.fromarray(MAP_B)],
                        controlnet_conditioning_scale=[0.8, 1.3], control_guidance_start=[0.0, 0.25],
                        control_guidance_end=[1.0, 0.75], **reference_call(batch_size=2)).images
    structure = StructureSpec((ControlSpec("layout", scale=0.8), ControlSpec("outline", scale=1.3, start=0.25, stop=0.75)))
    result = ours(structure_engine, structure, StructureImages((MAP_A, MAP_B)), batch_size=2)
    assert result.pixels.shape == expected.shape == (2, 128, 128, 3)
    assert np.abs(result.pixels - expected).max() <= TOLERANCE


def test_guess_mode_equals_diffusers_guess_mode_on_a_batch(structure_engine, tiny_model_dir):
    from diffusers import StableDiffusionControlNetPipeline

    net = structure_engine.model.controls["layout"].module
    pipeline = StableDiffusionControlNetPipeline.from_pipe(stock(tiny_model_dir, structure_engine), controlnet=net)
    expected = pipeline(PROMPT, image=Image.fromarray(MAP_A), controlnet_conditioning_scale=1.2, guess_mode=True,
                        **reference_call(batch_size=2)).images
    result = ours(structure_engine, StructureSpec((ControlSpec("layout", scale=1.2, mode="guess"),)),
                  StructureImages((MAP_A,)), batch_size=2)
    assert np.abs(result.pixels - expected).max() <= TOLERANCE


def test_t2i_adapter_equals_adapter_pipeline(structure_engine, tiny_model_dir):
    from diffusers import StableDiffusionAdapterPipeline

    adapter = structure_engine.model.controls["t2i-outline"].module
    pipeline = StableDiffusionAdapterPipeline.from_pipe(stock(tiny_model_dir, structure_engine), adapter=adapter)
    expected = pipeline(PROMPT, image=Image.fromarray(MAP_B), adapter_conditioning_scale=0.7, **reference_call()).images
    result = ours(structure_engine, StructureSpec((ControlSpec("t2i-outline", scale=0.7),)),
                  StructureImages((MAP_B,)))
    assert np.abs(result.pixels - expected).max() <= TOLERANCE
    assert np.abs(result.pixels - plain(structure_engine)).max() > 1e-2


def test_ip_adapter_equals_load_ip_adapter(structure_engine, tiny_model_dir, tmp_path):
    adapter = structure_engine.model.image_prompt
    save_ip_adapter(adapter, tmp_path)
    pipeline = stock(tiny_model_dir, structure_engine)
    pipeline.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip-adapter.safetensors",
                             image_encoder_folder="image_encoder")
    pipeline.set_ip_adapter_scale(0.9)
    reference = np.zeros((96, 96, 3), np.uint8)
    reference[:, :48] = (220, 40, 40)
    reference[:, 48:] = (30, 60, 200)
    expected = pipeline(PROMPT, ip_adapter_image=Image.fromarray(reference), **reference_call()).images
    result = ours(structure_engine, StructureSpec(image_prompt=ImagePromptSpec(scale=0.9)),
                  StructureImages(image_prompt=reference))
    assert np.abs(result.pixels - expected).max() <= TOLERANCE
    assert np.abs(result.pixels - plain(structure_engine)).max() > 1e-2
    assert result.settings["structure_images"]["image_prompt"]["width"] == 96
    # the image attention is installed for the run only
    assert not any(type(p).__name__ == "ImagePromptAttention" for p in structure_engine.model.unet.attn_processors.values())
