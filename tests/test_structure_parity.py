"""Protects: structure control in diffusers' default mode is diffusers' own pipelines, pixel for pixel (max abs
difference <= 1e-4, CPU fp32, same model, seed and settings): StableDiffusionControlNetPipeline with one net, with two
(MultiControlNetModel, different scales and windows) and in guess mode; StableDiffusionAdapterPipeline; and
StableDiffusionPipeline.load_ip_adapter on a file in diffusers' layout. The controls are random (their zero
convolutions perturbed, else every residual is 0 and a wrong wiring could not fail), on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from studio.events import Result
from studio.sampling import make_scheduler
from studio.specs import GenerateSpec
from studio.structure.adapters import new_control, new_ip_adapter, save_ip_adapter
from studio.structure.spec import (
    ControlSpec,
    ImagePromptSpec,
    StructureImages,
    StructureSpec,
)

TOLERANCE = 1e-4
PROMPT = "a big red circle on the left"
SETTINGS = dict(seed=3, steps=4, guidance_scale=6.0, scheduler="ddim")


def layout_map(left: int, top: int, size: int) -> np.ndarray:
    """(128, 128, 3) white square on black."""
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[top : top + size, left : left + size] = 255
    return pixels


MAP_A, MAP_B = layout_map(10, 20, 60), layout_map(60, 50, 50)


def random_controlnet(unet, seed: int):
    """ControlNetModel.from_unet with its zero convolutions (the map's embedding output and every residual's)
    drawn at random, so the map and the net change the image."""
    model = new_control(unet, "controlnet", f"net{seed}", "layout")
    generator = torch.Generator().manual_seed(seed)
    net = model.module
    for conv in (net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block):
        conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * 0.05
        conv.bias.data = torch.randn(conv.bias.shape, generator=generator) * 0.05
    return model


@pytest.fixture(scope="module")
def structure_engine(tiny_model_dir):
    """An engine of its own (the session's tiny_engine keeps no controls) with two ControlNets, a T2I-Adapter and
    an IP-Adapter attached at random init."""
    from studio.engine import Engine

    engine = Engine(str(tiny_model_dir), device="cpu")
    unet = engine.model.unet
    engine.model.controls["layout"] = random_controlnet(unet, 1)
    engine.model.controls["outline"] = random_controlnet(unet, 2)
    torch.manual_seed(4)
    engine.model.controls["t2i-outline"] = new_control(unet, "t2i_adapter", "t2i-outline", "outline")
    torch.manual_seed(5)
    engine.model.image_prompt = new_ip_adapter(unet, image_embed_dim=32)
    return engine


def stock(tiny_model_dir, engine):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.scheduler = make_scheduler(SETTINGS["scheduler"], engine.model.scheduler_config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def ours(engine, structure: StructureSpec, images: StructureImages) -> Result:
    return list(engine.generate(GenerateSpec(PROMPT, structure=structure, **SETTINGS), structure_images=images))[-1]


def reference_call() -> dict:
    return dict(num_inference_steps=SETTINGS["steps"], guidance_scale=SETTINGS["guidance_scale"],
                generator=[torch.Generator().manual_seed(SETTINGS["seed"])], output_type="np")


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


def test_two_controlnets_equal_multicontrolnet_with_their_own_scales_and_windows(structure_engine, tiny_model_dir):
    from diffusers import StableDiffusionControlNetPipeline

    nets = [structure_engine.model.controls[name].module for name in ("layout", "outline")]
    pipeline = StableDiffusionControlNetPipeline.from_pipe(stock(tiny_model_dir, structure_engine), controlnet=nets)
    expected = pipeline(PROMPT, image=[Image.fromarray(MAP_A), Image.fromarray(MAP_B)],
                        controlnet_conditioning_scale=[0.8, 1.3], control_guidance_start=[0.0, 0.25],
                        control_guidance_end=[1.0, 0.75], **reference_call()).images
    structure = StructureSpec((ControlSpec("layout", scale=0.8), ControlSpec("outline", scale=1.3, start=0.25, stop=0.75)))
    result = ours(structure_engine, structure, StructureImages((MAP_A, MAP_B)))
    assert np.abs(result.pixels - expected).max() <= TOLERANCE


def test_guess_mode_equals_diffusers_guess_mode(structure_engine, tiny_model_dir):
    from diffusers import StableDiffusionControlNetPipeline

    net = structure_engine.model.controls["layout"].module
    pipeline = StableDiffusionControlNetPipeline.from_pipe(stock(tiny_model_dir, structure_engine), controlnet=net)
    expected = pipeline(PROMPT, image=Image.fromarray(MAP_A), controlnet_conditioning_scale=1.2, guess_mode=True,
                        **reference_call()).images
    result = ours(structure_engine, StructureSpec((ControlSpec("layout", scale=1.2, mode="guess"),)),
                  StructureImages((MAP_A,)))
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
