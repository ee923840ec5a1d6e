"""Control models and the image-prompt adapter: the files users have, checked against the base model.

    ControlNet      Zhang, Rao & Agrawala 2023: a trainable copy of the UNet's encoder joined to the frozen
                    UNet by zero convolutions (eq. 1-4); diffusers' ControlNetModel, folder or single file.
    T2I-Adapter     Mou et al. 2024: a small convolutional network whose features are added to the UNet's
                    encoder once per generation; diffusers' T2IAdapter folder.
    IP-Adapter      Ye et al. 2023: an image embedding projected to a few tokens and read by a second,
                    decoupled cross-attention in every cross-attention layer (eq. 5:
                    Z = Attn(Q, K, V) + lambda Attn(Q, K', V')); the flat `image_proj.*` / `ip_adapter.*`
                    file that diffusers' `load_ip_adapter` reads, with its CLIP image encoder.

Every loader checks the file against the base model before anything runs: a mismatch raises ModelLoadError
naming both models and what differs, an unknown layout names the first keys found and the layouts read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from diffusers.models.embeddings import ImageProjection
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from studio.errors import InvalidInputError, ModelLoadError

IP_ADAPTER_FILE = "ip-adapter.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"
# diffusers' `load_ip_adapter` reads the plain IP-Adapter's projection as 4 tokens (unet._convert_ip_adapter_*)
DIFFUSERS_IP_TOKENS = 4


@dataclass
class ControlModel:
    """A loaded ControlNet or T2I-Adapter, already checked against the base model."""

    name: str
    kind: str  # "controlnet" | "t2i_adapter"
    module: ControlNetModel | T2IAdapter
    trained_for: str  # the control map it reads: "outline", "layout", "canny", ... ("" when unknown)

    def to(self, device: torch.device, dtype: torch.dtype) -> ControlModel:
        self.module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return self


@dataclass
class ImagePromptAdapter:
    """IP-Adapter (Ye et al. 2023): image encoder -> `image_proj` (num_tokens tokens of the UNet's cross-attention
    width) -> per cross-attention layer a second key/value projection (to_k_ip, to_v_ip) of those tokens (eq. 5)."""

    image_encoder: CLIPVisionModelWithProjection
    image_processor: CLIPImageProcessor
    image_proj: ImageProjection
    key_value: dict[str, tuple[nn.Linear, nn.Linear]]  # unet.attn_processors key -> (to_k_ip, to_v_ip), cross-attention only
    num_tokens: int

    def modules(self) -> list[nn.Module]:
        """Every module of the adapter, the image encoder first (what training optimises, what moves with the base)."""
        return [self.image_encoder, self.image_proj, *(linear for pair in self.key_value.values() for linear in pair)]

    def to(self, device: torch.device, dtype: torch.dtype) -> ImagePromptAdapter:
        for module in self.modules():
            module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return self


def tiny_image_encoder_config(projection_dim: int = 128, image_size: int = 64, patch_size: int = 8,
                              hidden_size: int = 64, num_layers: int = 2) -> CLIPVisionConfig:
    """A small CLIP vision tower for the shapes world (64x64 input, 8x8 patches, 2 layers of width 64).

    No pretrained CLIP is reachable here (no hub), and the shapes world needs none: its pictures are flat colours and
    simple outlines. So the project trains this encoder jointly with the IP-Adapter's projections; published
    IP-Adapters instead freeze OpenAI's CLIP ViT-H/14 (Ye et al. 2023, sec. 3.2). It saves as a standard
    CLIPVisionModelWithProjection folder, so diffusers' `load_ip_adapter` reads it like any other encoder.
    """
    return CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=max(1, hidden_size // 32), projection_dim=projection_dim,
    )


def image_processor_for(image_encoder: CLIPVisionModelWithProjection) -> CLIPImageProcessor:
    """The preprocessing diffusers' `load_ip_adapter` builds for an encoder without one: resize and centre crop
    to the encoder's image size, CLIP's normalisation."""
    size = image_encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


def cross_attention_keys(unet: UNet2DConditionModel) -> list[str]:
    """The attn_processors keys of the cross-attention layers, in the UNet's order (diffusers' own criterion:
    every processor but the self-attention `attn1` ones)."""
    return [key for key in unet.attn_processors if not key.endswith("attn1.processor") and "motion_modules" not in key]


def diffusers_ip_index(position: int) -> int:
    """The number diffusers gives the k-th cross-attention layer in an IP-Adapter file (`ip_adapter.<n>.to_k_ip`):
    it counts 1, 3, 5, ... (unet._convert_ip_adapter_attn_to_diffusers), which is that `attn2`'s position in
    unet.attn_processors, where every transformer block lists its attn1 then its attn2."""
    return 2 * position + 1


def new_ip_adapter(base_unet: UNet2DConditionModel, image_embed_dim: int, num_tokens: int = DIFFUSERS_IP_TOKENS,
                   image_encoder: CLIPVisionModelWithProjection | None = None) -> ImagePromptAdapter:
    """Fresh IP-Adapter modules to train for `base_unet`, in float32 on the CPU.

    image_proj: diffusers' ImageProjection (image embedding -> num_tokens tokens, LayerNorm), as the paper's
    projection network. to_k_ip / to_v_ip of each cross-attention layer start as copies of that layer's to_k / to_v
    (Ye et al. 2023, sec. 3.3; tencent-ailab's tutorial_train.py does the same), so at step 0 the image tokens are
    read like text tokens. image_encoder: the one given, or a fresh `tiny_image_encoder_config` encoder whose
    projection is `image_embed_dim` wide (trained jointly). diffusers reads the saved file as 4 tokens: keep
    num_tokens at 4 for files diffusers should load.
    """
    if image_encoder is None:
        image_encoder = CLIPVisionModelWithProjection(tiny_image_encoder_config(projection_dim=image_embed_dim))
    elif image_encoder.config.projection_dim != image_embed_dim:
        raise InvalidInputError(
            f"The image encoder embeds {image_encoder.config.projection_dim} wide, not {image_embed_dim}: give "
            "image_embed_dim=image_encoder.config.projection_dim.")
    cross_attention_dim = base_unet.config.cross_attention_dim
    image_proj = ImageProjection(image_embed_dim=image_embed_dim, cross_attention_dim=cross_attention_dim,
                                 num_image_text_embeds=num_tokens)
    key_value = {}
    for key in cross_attention_keys(base_unet):
        attention = base_unet.get_submodule(key.removesuffix(".processor"))
        pair = []
        for text_projection in (attention.to_k, attention.to_v):
            image_projection = nn.Linear(text_projection.in_features, text_projection.out_features, bias=False)
            image_projection.weight.data.copy_(text_projection.weight.data.float())
            pair.append(image_projection)
        key_value[key] = (pair[0], pair[1])
    return ImagePromptAdapter(image_encoder=image_encoder.float(), image_processor=image_processor_for(image_encoder),
                              image_proj=image_proj, key_value=key_value, num_tokens=num_tokens)


def ip_adapter_state_dict(adapter: ImagePromptAdapter) -> dict[str, torch.Tensor]:
    """The flat layout of diffusers' `load_ip_adapter` (.safetensors): `image_proj.proj.*` / `image_proj.norm.*`
    (the original names of ImageProjection's `image_embeds` / `norm`) and `ip_adapter.<n>.to_k_ip.weight` /
    `to_v_ip.weight`, n = diffusers_ip_index of the layer."""
    state = {f"image_proj.{name.replace('image_embeds', 'proj')}": tensor
             for name, tensor in adapter.image_proj.state_dict().items()}
    for position, (to_k_ip, to_v_ip) in enumerate(adapter.key_value.values()):
        index = diffusers_ip_index(position)
        state[f"ip_adapter.{index}.to_k_ip.weight"] = to_k_ip.weight
        state[f"ip_adapter.{index}.to_v_ip.weight"] = to_v_ip.weight
    return {key: tensor.detach().to("cpu").contiguous() for key, tensor in state.items()}


def save_ip_adapter(adapter: ImagePromptAdapter, folder: str | Path) -> Path:
    """Write `folder/ip-adapter.safetensors` and `folder/image_encoder/` (the encoder's save_pretrained and its
    CLIPImageProcessor), so that diffusers reads it with
    `pipe.load_ip_adapter(folder, subfolder="", weight_name="ip-adapter.safetensors", image_encoder_folder="image_encoder")`
    and `load_ip_adapter(folder / "ip-adapter.safetensors", base)` here. Returns the weights file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / IP_ADAPTER_FILE
    save_file(ip_adapter_state_dict(adapter), str(weights), metadata={"format": "pt"})
    adapter.image_encoder.save_pretrained(folder / IMAGE_ENCODER_FOLDER, safe_serialization=True)
    adapter.image_processor.save_pretrained(folder / IMAGE_ENCODER_FOLDER)
    return weights
