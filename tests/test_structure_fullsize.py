"""Control models for real checkpoints: SD 1.5's architecture (published configs, random weights: structure needs no
real weights) with the files users download, each written here in its layout: a ControlNet folder, a ControlNet
single file in the original layout (lllyasviel/ControlNet's `control_model.*`), a T2I-Adapter folder, an IP-Adapter
.bin and .safetensors with its image encoder; and the files that do not fit (SD 1.5's ControlNet on shapes-sd,
SD 2's 1024-wide one on SD 1.5, SDXL's on SD 1.5) refused naming both models. SDXL's files (ControlNetModel.from_unet
on its UNet, the "full_adapter_xl" T2I-Adapter, the IP-Adapter as diffusers' UNet loader reads it) load for SDXL's
UNet structure at a fraction of its width: at full size they would need ~10 GB of memory here and test nothing more.

Files whose weights are never read (a refused folder) hold only their config.json, and bases that only answer
shape questions are built on the meta device: those tests are fast; the ones that write and read full-size weights
are marked slow.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from safetensors.torch import save_file

from studio.architectures import SD15, SD21, SDXL
from studio.errors import ModelLoadError
from studio.export_single_file import rename_modules, unet_module_names
from studio.models import EMBEDDED_MODEL_DIR, tiny_random_pipeline
from studio.structure.adapters import (
    IMAGE_ENCODER_FOLDER,
    ip_adapter_state_dict,
    load_control,
    load_ip_adapter,
    new_control,
    new_ip_adapter,
    save_ip_adapter,
    tiny_image_encoder_config,
)

LDM_CONTROLNET_PREFIX = "control_model."


def base_model(arch_unet: dict, name: str, meta: bool = False, dtype=torch.float32):
    """What the loaders read of a LoadedModel (name, UNet, device, dtype, pixels per latent) for an architecture's UNet:
    on the meta device when only its shapes matter."""
    if meta:
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(arch_unet)
    else:
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(arch_unet).to(dtype)
    return SimpleNamespace(name=name, unet=unet, device=torch.device("cpu"), dtype=dtype, size_multiple=8)


def config_only_controlnet(arch_unet: dict, folder):
    """A ControlNet folder of an architecture holding only its config.json (enough to be refused before loading)."""
    with init_empty_weights():
        template = ControlNetModel.from_unet(UNet2DConditionModel.from_config(arch_unet), load_weights_from_unet=False)
    template.save_config(folder)
    return folder


def controlnet_to_ldm(controlnet: ControlNetModel) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet in lllyasviel/ControlNet's layout (cldm/cldm.py ControlNet: the UNet encoder's
    original names, `input_hint_block` for the condition embedding, `zero_convs` and `middle_block_out`), the
    inverse of diffusers' convert_controlnet_checkpoint."""
    embedding = controlnet.controlnet_cond_embedding
    names = [("input_hint_block.0", "controlnet_cond_embedding.conv_in"),
             ("input_hint_block.14", "controlnet_cond_embedding.conv_out"),
             *((f"input_hint_block.{2 * (j + 1)}", f"controlnet_cond_embedding.blocks.{j}") for j in range(len(embedding.blocks))),
             *((f"zero_convs.{i}.0", f"controlnet_down_blocks.{i}") for i in range(len(controlnet.controlnet_down_blocks))),
             ("middle_block_out.0", "controlnet_mid_block")]
    # the encoder half of the UNet's names (a ControlNet has no up blocks)
    encoder = unet_module_names(SimpleNamespace(**controlnet.config, up_block_types=()))
    return rename_modules(controlnet.state_dict(), iter([*names, *encoder]), LDM_CONTROLNET_PREFIX)


def assert_same_weights(loaded: torch.nn.Module, expected: torch.nn.Module) -> None:
    expected_state = expected.state_dict()
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == expected_state.keys()
    for key, tensor in loaded_state.items():
        assert torch.equal(tensor, expected_state[key].to(tensor.dtype)), key


# ---------------------------------------------------------------------------------------------
# fast: tiny weights, or configs only


def test_an_original_layout_controlnet_file_loads_as_the_controlnet_it_was_made_from(tiny_model_dir, tmp_path):
    from studio.models import load_model

    base = load_model(str(tiny_model_dir), device="cpu")
    control = new_control(base.unet, "controlnet", "made", "outline")
    for parameter in control.module.parameters():  # zero convolutions start at zero: make every weight tell
        parameter.data.normal_()
    save_file(controlnet_to_ldm(control.module), str(tmp_path / "control_outline.safetensors"))
    save_file(control.module.state_dict(), str(tmp_path / "diffusers_names.safetensors"))
    torch.save(controlnet_to_ldm(control.module), tmp_path / "control_outline.pth")  # lllyasviel's .pth: a pickle
    for file in ("control_outline.safetensors", "diffusers_names.safetensors", "control_outline.pth"):
        loaded = load_control(tmp_path / file, base)
        assert (loaded.name, loaded.kind) == (file.rsplit(".", 1)[0], "controlnet")
        assert_same_weights(loaded.module, control.module)

    wide_unet = UNet2DConditionModel.from_config({**base.unet.config, "cross_attention_dim": 64})
    save_file(controlnet_to_ldm(new_control(wide_unet, "controlnet", "w", "").module), str(tmp_path / "wide.safetensors"))
    with pytest.raises(ModelLoadError, match=r"ControlNet wide .*: cross-attention 64 wide \(the base has 32 wide\)"):
        load_control(tmp_path / "wide.safetensors", base)
    save_file({"control_model.time_embed.0.weight": torch.zeros(4, 4)}, str(tmp_path / "stub.safetensors"))
    with pytest.raises(ModelLoadError, match=r"stub.safetensors is in a layout .*first keys: control_model.time_embed.0.weight"):
        load_control(tmp_path / "stub.safetensors", base)


def test_sd15_controlnet_on_shapes_sd_is_refused_naming_both(tmp_path):
    base = base_model(UNet2DConditionModel.load_config(EMBEDDED_MODEL_DIR / "unet"), "shapes-sd", meta=True)
    folder = config_only_controlnet(SD15.unet, tmp_path / "control_v11p_sd15_canny")
    with pytest.raises(ModelLoadError) as refused:
        load_control(folder, base)
    message = str(refused.value)
    assert message.startswith("The ControlNet control_v11p_sd15_canny was made for a different base model than shapes-sd:")
    assert "cross-attention 768 wide (the base has 128 wide)" in message
    assert "Load a ControlNet trained for shapes-sd." in message


def test_sd2_controlnet_on_sd15_is_refused_for_its_1024_wide_cross_attention(tmp_path):
    base = base_model(SD15.unet, "stable-diffusion-v1-5", meta=True)
    folder = config_only_controlnet(SD21.unet, tmp_path / "controlnet-sd21-canny")
    with pytest.raises(ModelLoadError, match=r"controlnet-sd21-canny .* than stable-diffusion-v1-5: "
                                             r"cross-attention 1024 wide \(the base has 768 wide\)\. Load a ControlNet"):
        load_control(folder, base)


def test_sdxl_controls_fit_sdxl_and_are_refused_on_sd15(tmp_path):
    """diffusers has ControlNetModel.from_unet on SDXL's UNet and the "full_adapter_xl" T2I-Adapter."""
    sdxl = base_model(SDXL.unet, "sdxl-base", meta=True)
    sd15 = base_model(SD15.unet, "sd15", meta=True)
    folder = config_only_controlnet(SDXL.unet, tmp_path / "controlnet-canny-sdxl")
    from studio.structure.adapters import check_controlnet, check_t2i_adapter

    check_controlnet(json.loads((folder / "config.json").read_text()), "controlnet-canny-sdxl", sdxl)  # fits: no error
    with pytest.raises(ModelLoadError, match=r"model family SDXL \(the base has SD 1.x/2.x\); cross-attention 2048 wide"):
        load_control(folder, sd15)
    with init_empty_weights():
        adapter_xl = T2IAdapter(channels=[320, 640, 1280, 1280], adapter_type="full_adapter_xl", downscale_factor=16)
        adapter_sd15 = T2IAdapter(channels=[320, 640, 1280, 1280])
    check_t2i_adapter(adapter_xl, "t2i-adapter-canny-sdxl", sdxl)
    check_t2i_adapter(adapter_sd15, "t2i-adapter-canny-sd15", sd15)
    with pytest.raises(ModelLoadError, match=r"T2I-Adapter t2i-adapter-canny-sdxl .*model family SDXL \(the base has SD 1.x/2.x\)"):
        check_t2i_adapter(adapter_xl, "t2i-adapter-canny-sdxl", sd15)
    with pytest.raises(ModelLoadError, match=r"model family SD 1.x/2.x \(the base has SDXL\)"):
        check_t2i_adapter(adapter_sd15, "t2i-adapter-canny-sd15", sdxl)


def narrow_sdxl_unet() -> dict:
    """SDXL's UNet structure (text_time added conditions, 2 transformer layers per block, no attention at the first
    level) at a fraction of its width: what the SDXL paths read, in seconds."""
    return {**SDXL.unet, "block_out_channels": [32, 64, 128], "transformer_layers_per_block": [1, 2, 2],
            "attention_head_dim": [1, 2, 4], "cross_attention_dim": 64, "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 64, "sample_size": 16}


def test_controlnet_t2i_adapter_and_ip_adapter_files_load_for_an_sdxl_shaped_unet(tmp_path):
    import copy

    base = base_model(narrow_sdxl_unet(), "sdxl-narrow")
    control = new_control(base.unet, "controlnet", "made", "canny")
    control.module.save_pretrained(tmp_path / "controlnet-canny-sdxl")
    loaded = load_control(tmp_path / "controlnet-canny-sdxl", base)
    assert loaded.module.config.addition_embed_type == "text_time"
    assert_same_weights(loaded.module, control.module)

    T2IAdapter(channels=[32, 64, 128, 128], adapter_type="full_adapter_xl", downscale_factor=16).save_pretrained(
        tmp_path / "t2i-adapter-canny-sdxl")
    assert load_control(tmp_path / "t2i-adapter-canny-sdxl", base).kind == "t2i_adapter"

    adapter = new_ip_adapter(base.unet, image_embed_dim=32)
    # cross-attention layers: down levels 1-2 (2 layers x 2 transformer layers each), mid (2), up levels 0-1 (3 x 2 each)
    assert len(adapter.key_value) == 4 + 4 + 2 + 6 + 6
    flat = ip_adapter_state_dict(adapter)
    nested = {part: {key.removeprefix(part + "."): tensor for key, tensor in flat.items() if key.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}
    diffusers_unet = copy.deepcopy(base.unet)
    diffusers_unet._load_ip_adapter_weights([nested])  # what StableDiffusionXLPipeline.load_ip_adapter calls
    processors = diffusers_unet.attn_processors
    for key, (to_k_ip, to_v_ip) in adapter.key_value.items():
        assert torch.equal(processors[key].to_k_ip[0].weight, to_k_ip.weight), key
        assert torch.equal(processors[key].to_v_ip[0].weight, to_v_ip.weight), key


# ---------------------------------------------------------------------------------------------
# slow: full-size weights written and read


@pytest.fixture(scope="module")
def sd15():
    """SD 1.5's UNet at random init in float16 (half the memory; structure, not values, is under test)."""
    return base_model(SD15.unet, "stable-diffusion-v1-5", dtype=torch.float16)


@pytest.mark.slow
def test_sd15_controlnet_folder_and_single_file_load_with_their_weights(sd15, tmp_path):
    control = new_control(sd15.unet, "controlnet", "made", "canny")
    control.module.half()
    control.module.save_pretrained(tmp_path / "control_v11p_sd15_canny")
    (tmp_path / "control_v11p_sd15_canny" / "studio.json").write_text(json.dumps({"control": "canny"}))
    from_folder = load_control(tmp_path / "control_v11p_sd15_canny", sd15)
    assert (from_folder.kind, from_folder.trained_for) == ("controlnet", "canny")
    assert_same_weights(from_folder.module, control.module)
    del from_folder
    save_file(controlnet_to_ldm(control.module), str(tmp_path / "control_sd15_canny.safetensors"))
    from_file = load_control(tmp_path / "control_sd15_canny.safetensors", sd15)
    assert from_file.module.dtype == torch.float16
    assert_same_weights(from_file.module, control.module)


@pytest.mark.slow
def test_sd15_t2i_adapter_folder_loads_and_one_of_another_width_is_refused(sd15, tmp_path):
    adapter = new_control(sd15.unet, "t2i_adapter", "made", "canny")
    adapter.module.save_pretrained(tmp_path / "t2iadapter_canny_sd15v2")
    loaded = load_control(tmp_path / "t2iadapter_canny_sd15v2", sd15)
    assert loaded.kind == "t2i_adapter"
    assert_same_weights(loaded.module, adapter.module)
    T2IAdapter(channels=[320, 640, 1280]).save_pretrained(tmp_path / "three-stages")
    with pytest.raises(ModelLoadError, match=r"stage widths \[320, 640, 1280\] \(the base has \[320, 640, 1280, 1280\]\)"):
        load_control(tmp_path / "three-stages", sd15)


@pytest.mark.slow
def test_sd15_ip_adapter_bin_and_safetensors_load_with_their_image_encoder(sd15, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(tiny_image_encoder_config(projection_dim=1024, image_size=224, patch_size=32))
    adapter = new_ip_adapter(sd15.unet, image_embed_dim=1024, image_encoder=encoder)
    assert len(adapter.key_value) == 16  # SD 1.5: 16 cross-attention layers
    save_ip_adapter(adapter, tmp_path / "models")
    flat = ip_adapter_state_dict(adapter)
    torch.save({part: {key.removeprefix(part + "."): tensor for key, tensor in flat.items() if key.startswith(part + ".")}
                for part in ("image_proj", "ip_adapter")}, tmp_path / "models" / "ip-adapter_sd15.bin")
    for file in ("ip-adapter.safetensors", "ip-adapter_sd15.bin"):
        loaded = load_ip_adapter(tmp_path / "models" / file, sd15)
        assert list(loaded.key_value) == list(adapter.key_value)
        assert loaded.image_proj.image_embeds.weight.dtype == torch.float16
        assert_same_weights(loaded.image_proj, adapter.image_proj)
        assert loaded.image_encoder.config.image_size == 224
    shapes_adapter = new_ip_adapter(tiny_random_pipeline(seed=0).unet, image_embed_dim=1024, image_encoder=encoder)
    save_ip_adapter(shapes_adapter, tmp_path / "tiny")
    with pytest.raises(ModelLoadError, match=r"image tokens for cross-attention 32 wide \(the base has 768 wide\); "
                                             r"cross-attention layers 7 \(the base has 16\)"):
        load_ip_adapter(tmp_path / "tiny" / "ip-adapter.safetensors", sd15, image_encoder=tmp_path / "models" / IMAGE_ENCODER_FOLDER)
