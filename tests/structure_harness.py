"""Random structure controls for tests: an engine on the tiny model with two ControlNets, a T2I-Adapter and an
IP-Adapter at random init (the ControlNets' zero convolutions perturbed, else every residual is 0 and a wrong
wiring could not fail), and simple control maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from studio.structure.adapters import ControlModel, new_control, new_ip_adapter

IMAGE_EMBED_DIM = 32  # the random IP-Adapter's image encoder width


def square_map(left: int, top: int, size: int, side: int = 128) -> np.ndarray:
    """(side, side, 3) uint8: a white square on black."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[top : top + size, left : left + size] = 255
    return pixels


def random_controlnet(unet, name: str, seed: int) -> ControlModel:
    """ControlNetModel.from_unet with its zero convolutions (the map embedding's output and every residual's) drawn
    at random, so the map and the net change the image."""
    model = new_control(unet, "controlnet", name, "layout")
    generator = torch.Generator().manual_seed(seed)
    net = model.module
    for conv in (net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block):
        conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * 0.05
        conv.bias.data = torch.randn(conv.bias.shape, generator=generator) * 0.05
    return model


def structure_engine(model_dir: Path):
    """An engine of its own on `model_dir` with controls "layout", "outline" (ControlNets), "t2i-outline"
    (T2I-Adapter) and an IP-Adapter, all random."""
    from studio.engine import Engine

    engine = Engine(str(model_dir), device="cpu")
    unet = engine.model.unet
    engine.model.controls["layout"] = random_controlnet(unet, "layout", 1)
    engine.model.controls["outline"] = random_controlnet(unet, "outline", 2)
    torch.manual_seed(4)
    engine.model.controls["t2i-outline"] = new_control(unet, "t2i_adapter", "t2i-outline", "outline")
    torch.manual_seed(5)
    engine.model.image_prompt = new_ip_adapter(unet, image_embed_dim=IMAGE_EMBED_DIM)
    return engine
