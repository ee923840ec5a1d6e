"""Writing a diffusers SD 1.x/2.x pipeline as one single-file checkpoint in the original (LDM / CompVis) layout.

`save_single_file(pipeline, path)` is the inverse of diffusers' single-file converters
(`diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`), which ship only the
original -> diffusers direction. The key names follow the original Stable Diffusion repositories
(CompVis/stable-diffusion `ldm/modules/diffusionmodules/openaimodel.py` and `model.py`, OpenCLIP's
text transformer); the round trip through diffusers' loader is the test (tests/test_single_file.py).
Reading such files is studio/single_file.py.

Command line: `python -m studio.export_single_file <diffusers folder> <file.safetensors>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

from studio.errors import ModelLoadError
from studio.models import open_folder
from studio.single_file import METADATA_TO_PREDICTION, PREDICTION_METADATA_KEY

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: OpenAI CLIP, stored in transformers' own layout
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H text tower

# ---------------------------------------------------------------------------------------------
# diffusers -> original key names


def _unet_resnet(ldm: str, hf: str) -> Iterator[tuple[str, str]]:
    """ResBlock (openaimodel.py) <- ResnetBlock2D: in_layers = [norm, SiLU, conv], out_layers = [norm, SiLU, dropout, conv]."""
    for ldm_name, hf_name in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                              ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")):
        yield f"{ldm}.{ldm_name}", f"{hf}.{hf_name}"


def unet_module_names(config) -> Iterator[tuple[str, str]]:
    """(original prefix, diffusers prefix) for every module of an SD 1.x/2.x UNet2DConditionModel.

    The original UNet is flat: `input_blocks` numbers every resnet/attention pair and downsampler
    in order (entry 0 is conv_in), `output_blocks` likewise with layers_per_block + 1 entries per
    level; attention (SpatialTransformer) modules keep diffusers' inner names.
    """
    yield "time_embed.0", "time_embedding.linear_1"
    yield "time_embed.2", "time_embedding.linear_2"
    yield "input_blocks.0.0", "conv_in"
    yield "out.0", "conv_norm_out"
    yield "out.2", "conv_out"
    per_level = config.layers_per_block
    levels = len(config.block_out_channels)
    for level, block_type in enumerate(config.down_block_types):
        for layer in range(per_level):
            index = 1 + level * (per_level + 1) + layer
            yield from _unet_resnet(f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{layer}")
            if block_type.startswith("CrossAttn"):
                yield f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{layer}"
        if level < levels - 1:
            yield f"input_blocks.{(level + 1) * (per_level + 1)}.0.op", f"down_blocks.{level}.downsamplers.0.conv"
    yield from _unet_resnet("middle_block.0", "mid_block.resnets.0")
    yield "middle_block.1", "mid_block.attentions.0"
    yield from _unet_resnet("middle_block.2", "mid_block.resnets.1")
    for level, block_type in enumerate(config.up_block_types):
        has_attention = block_type.startswith("CrossAttn")
        for layer in range(per_level + 1):
            index = level * (per_level + 1) + layer
            yield from _unet_resnet(f"output_blocks.{index}.0", f"up_blocks.{level}.resnets.{layer}")
            if has_attention:
                yield f"output_blocks.{index}.1", f"up_blocks.{level}.attentions.{layer}"
        if level < levels - 1:  # the upsampler follows the level's last resnet (and attention)
            last = level * (per_level + 1) + per_level
            yield f"output_blocks.{last}.{2 if has_attention else 1}.conv", f"up_blocks.{level}.upsamplers.0.conv"


def _vae_resnet(ldm: str, hf: str) -> Iterator[tuple[str, str]]:
    for name in ("norm1", "conv1", "norm2", "conv2"):
        yield f"{ldm}.{name}", f"{hf}.{name}"
    yield f"{ldm}.nin_shortcut", f"{hf}.conv_shortcut"


def _vae_mid(coder: str) -> Iterator[tuple[str, str]]:
    yield from _vae_resnet(f"{coder}.mid.block_1", f"{coder}.mid_block.resnets.0")
    yield from _vae_resnet(f"{coder}.mid.block_2", f"{coder}.mid_block.resnets.1")
    attention = f"{coder}.mid_block.attentions.0"
    for ldm_name, hf_name in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        yield f"{coder}.mid.attn_1.{ldm_name}", f"{attention}.{hf_name}"


def vae_module_names(config) -> Iterator[tuple[str, str]]:
    """(original prefix, diffusers prefix) for every module of an AutoencoderKL.

    The original decoder numbers its levels from the lowest resolution up (`up.{levels-1}` runs
    first); diffusers' `up_blocks` are in execution order.
    """
    levels = len(config.block_out_channels)
    for name in ("quant_conv", "post_quant_conv"):
        yield name, name
    for coder in ("encoder", "decoder"):
        yield f"{coder}.conv_in", f"{coder}.conv_in"
        yield f"{coder}.norm_out", f"{coder}.conv_norm_out"
        yield f"{coder}.conv_out", f"{coder}.conv_out"
        yield from _vae_mid(coder)
    for level in range(levels):
        for layer in range(config.layers_per_block):
            yield from _vae_resnet(f"encoder.down.{level}.block.{layer}", f"encoder.down_blocks.{level}.resnets.{layer}")
        if level < levels - 1:
            yield f"encoder.down.{level}.downsample.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv"
    for level in range(levels):
        original_level = levels - 1 - level
        for layer in range(config.layers_per_block + 1):
            yield from _vae_resnet(f"decoder.up.{original_level}.block.{layer}", f"decoder.up_blocks.{level}.resnets.{layer}")
        if level < levels - 1:
            yield f"decoder.up.{original_level}.upsample.conv", f"decoder.up_blocks.{level}.upsamplers.0.conv"


def rename_modules(state_dict: dict[str, torch.Tensor], module_names: Iterator[tuple[str, str]], prefix: str) -> dict[str, torch.Tensor]:
    """Rename every tensor of `state_dict` from its diffusers module prefix to the original one;
    a tensor no module claims is an error (a layout this mapping does not know), never dropped."""
    renamed: dict[str, torch.Tensor] = {}
    claimed: set[str] = set()
    for ldm, hf in module_names:
        for key in [k for k in state_dict if k.startswith(hf + ".")]:
            renamed[prefix + ldm + key[len(hf):]] = state_dict[key]
            claimed.add(key)
    unclaimed = sorted(set(state_dict) - claimed)
    if unclaimed:
        raise ModelLoadError(f"No original-layout name for {len(unclaimed)} weights, e.g. {unclaimed[:3]}.")
    return renamed


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """The VAE in the original layout; its mid-block attention uses 1x1 convolutions where diffusers uses linears."""
    state = rename_modules(vae.state_dict(), vae_module_names(vae.config), VAE_PREFIX)
    for key, tensor in state.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            state[key] = tensor[:, :, None, None]  # (C, C) -> (C, C, 1, 1)
    return state


def clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's weights under transformers' published names (`text_model.*`), the names
    original SD 1.x files store; transformers 5 drops the `text_model.` level from `state_dict()`."""
    return {key if key.startswith("text_model.") else f"text_model.{key}": tensor
            for key, tensor in text_encoder.state_dict().items()}


def open_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel in OpenCLIP's text-tower layout (SD 2.x): query, key and value
    projections are one `in_proj` of three stacked blocks, as nn.MultiheadAttention keeps them."""
    state = clip_state_dict(text_encoder)
    out = {
        "token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": state.pop("text_model.final_layer_norm.bias"),
    }
    for layer in range(text_encoder.config.num_hidden_layers):
        hf, ldm = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[ldm + f"attn.in_proj_{kind}"] = torch.cat([state.pop(hf + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
            for ldm_name, hf_name in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                      ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[ldm + f"{ldm_name}.{kind}"] = state.pop(hf + f"{hf_name}.{kind}")
    state.pop("text_model.embeddings.position_ids", None)  # a buffer, rebuilt on load
    if state:
        raise ModelLoadError(f"No OpenCLIP name for {len(state)} text-encoder weights, e.g. {sorted(state)[:3]}.")
    return {OPEN_CLIP_PREFIX + key: tensor for key, tensor in out.items()}


def ldm_state_dict(pipeline) -> dict[str, torch.Tensor]:
    """Every weight of an SD 1.x/2.x pipeline (UNet, VAE, text encoder) under its original name.

    The text encoder decides the layout: OpenAI CLIP (hidden size 768, SD 1.x) is stored as
    transformers' own state dict, OpenCLIP (1024, SD 2.x) in its own layout.
    """
    if getattr(pipeline, "text_encoder_2", None) is not None:
        raise ModelLoadError("Export to a single file supports SD 1.x and 2.x pipelines; SDXL is not supported.")
    state = rename_modules(pipeline.unet.state_dict(), unet_module_names(pipeline.unet.config), UNET_PREFIX)
    state.update(vae_to_ldm(pipeline.vae))
    if pipeline.text_encoder.config.hidden_size == 1024:
        state.update(open_clip_to_ldm(pipeline.text_encoder))
    else:
        state.update({CLIP_PREFIX + key: tensor for key, tensor in clip_state_dict(pipeline.text_encoder).items()})
    return state


def save_single_file(pipeline, path: Path) -> Path:
    """Write an SD 1.x/2.x pipeline as one original-layout .safetensors file, with its prediction
    type in the ModelSpec metadata so `resolve_prediction_type` need not guess on load."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelLoadError(f"Export writes .safetensors files (no pickles); {path.name} has another suffix.")
    prediction_type = pipeline.scheduler.config.get("prediction_type", "epsilon")
    declared = {value: key for key, value in METADATA_TO_PREDICTION.items()}.get(prediction_type)
    if declared is None:
        raise ModelLoadError(f"The pipeline's prediction type {prediction_type!r} has no single-file equivalent.")
    # safetensors refuses shared or non-contiguous storage (the q/k/v slices, views of tied weights)
    state = {key: tensor.detach().contiguous().clone() for key, tensor in ldm_state_dict(pipeline).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={PREDICTION_METADATA_KEY: declared})
    return path


def export(folder: Path, path: Path) -> Path:
    """`save_single_file` of a local diffusers folder (SD 1.x/2.x), weights in their stored precision."""
    return save_single_file(open_folder(folder), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.export_single_file", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a diffusers SD 1.x/2.x model folder (with model_index.json)")
    parser.add_argument("file", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        written = export(args.folder.expanduser(), args.file.expanduser())
    except ModelLoadError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {written} ({written.stat().st_size / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
