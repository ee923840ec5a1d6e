"""Published Stable Diffusion architectures as data: every component config of SD 1.5 and SD 2.1.

Two uses: single-file checkpoints (`.safetensors` in the original layout) carry weights but no
configs, and diffusers' `from_single_file` fetches those from the hub -- with these written to a
local folder it loads offline; and full-size pipelines at random initialisation, so tests and
benchmarks run the real architectures (structure and speed need no real weights).
Configs are those of the published diffusers folders (stable-diffusion-v1-5, stabilityai/
stable-diffusion-2-1); the tokenizer is CLIP's BPE (assets/tokenizers/clip, built by
scripts/build_clip_tokenizer.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP_TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "clip"

_SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1)
_SD_UNET = dict(
    in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
)
_SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
_CLIP_TEXT = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)


@dataclass(frozen=True)
class Architecture:
    name: str  # what users call it
    native_size: int  # pixels
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler_class: type
    scheduler: dict[str, Any]
    tokenizer: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json beyond the BPE files
    text_encoder_2: dict[str, Any] | None = None  # SDXL's second encoder (CLIPTextModelWithProjection)
    tokenizer_2: dict[str, Any] | None = None
    vae_keeps_float32: bool = False  # VAE config force_upcast (SDXL): decodes overflow in fp16

    @property
    def pipeline_class(self) -> type:
        return StableDiffusionXLPipeline if self.text_encoder_2 is not None else StableDiffusionPipeline


SD15 = Architecture(
    name="SD 1.5", native_size=512,
    unet={**_SD_UNET, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
    vae={**_SD_VAE, "sample_size": 512},
    text_encoder={**_CLIP_TEXT, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "hidden_act": "quick_gelu", "projection_dim": 768},
    scheduler_class=PNDMScheduler, scheduler={**_SD_BETAS, "skip_prk_steps": True},
    tokenizer={"pad_token": "<|endoftext|>"},
)
SD21 = Architecture(
    name="SD 2.1", native_size=768,
    unet={**_SD_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
          "use_linear_projection": True, "upcast_attention": True},
    vae={**_SD_VAE, "sample_size": 768},
    text_encoder={**_CLIP_TEXT, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                  "num_attention_heads": 16, "hidden_act": "gelu", "projection_dim": 512},
    scheduler_class=DDIMScheduler, scheduler={**_SD_BETAS, "prediction_type": "v_prediction"},
    tokenizer={"pad_token": "!"},  # OpenCLIP pads with "!" (id 0), not end-of-text
)
SDXL = Architecture(
    name="SDXL", native_size=1024,
    unet={**_SD_UNET, "sample_size": 128, "block_out_channels": [320, 640, 1280],
          "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
          "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
          "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
          "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
          "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816},  # 6 ids x 256 + 1280
    vae={**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoder=SD15.text_encoder,
    scheduler_class=EulerDiscreteScheduler,
    scheduler={**_SD_BETAS, "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False},
    tokenizer=SD15.tokenizer,
    text_encoder_2={**_CLIP_TEXT, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                    "num_attention_heads": 20, "hidden_act": "gelu", "projection_dim": 1280},
    tokenizer_2={"pad_token": "!"},
    vae_keeps_float32=True,
)
# diffusers.loaders.single_file_utils.infer_diffusers_model_type names -> architecture
BY_CHECKPOINT_TYPE: dict[str, Architecture] = {"v1": SD15, "v2": SD21, "xl_base": SDXL}


def write_config_folder(arch: Architecture, folder: Path) -> Path:
    """A diffusers folder with every config and the tokenizer(s) but no weights (`from_single_file(config=...)`)."""
    text_encoders = {"text_encoder": ("CLIPTextModel", arch.text_encoder, arch.tokenizer)}
    if arch.text_encoder_2 is not None:
        text_encoders["text_encoder_2"] = ("CLIPTextModelWithProjection", arch.text_encoder_2, arch.tokenizer_2)
    index: dict[str, Any] = {
        "_class_name": arch.pipeline_class.__name__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", arch.scheduler_class.__name__],
    }
    files = {
        "unet/config.json": {"_class_name": "UNet2DConditionModel", **arch.unet},
        "vae/config.json": {"_class_name": "AutoencoderKL", **arch.vae},
        "scheduler/scheduler_config.json": {"_class_name": arch.scheduler_class.__name__, **arch.scheduler},
    }
    for name, (class_name, config, tokenizer_config) in text_encoders.items():
        tokenizer = name.replace("text_encoder", "tokenizer")
        index[name], index[tokenizer] = ["transformers", class_name], ["transformers", "CLIPTokenizer"]
        files[f"{name}/config.json"] = {**CLIPTextConfig(**config).to_dict(), "architectures": [class_name]}
        files[f"{tokenizer}/tokenizer_config.json"] = {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **tokenizer_config}
        (folder / tokenizer).mkdir(parents=True, exist_ok=True)
        for filename in ("vocab.json", "merges.txt"):
            shutil.copy(CLIP_TOKENIZER_DIR / filename, folder / tokenizer / filename)
    if arch.text_encoder_2 is not None:
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False})
    files["model_index.json"] = index
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(json.dumps(content, indent=2))
    return folder


def config_folder(arch: Architecture) -> Path:
    """`write_config_folder` into a per-process temporary directory, once per architecture."""
    folder = _CONFIG_ROOT / arch.name.replace(" ", "").replace(".", "")
    if not (folder / "model_index.json").is_file():
        write_config_folder(arch, folder)
    return folder


_CONFIG_ROOT = Path(tempfile.mkdtemp(prefix="studio-configs-"))


def random_pipeline(arch: Architecture, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The full-size architecture with random weights (seeded), built directly in `dtype` (SDXL's 3.5 B
    parameters are 14 GB in float32): for tests and benchmarks only."""
    torch.manual_seed(seed)
    folder = config_folder(arch)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype: no float32 copy first
    try:
        components = dict(
            vae=AutoencoderKL.from_config(arch.vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            unet=UNet2DConditionModel.from_config(arch.unet),
            scheduler=arch.scheduler_class.from_config(arch.scheduler),
        )
        if arch.text_encoder_2 is not None:
            components.update(
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2)),
                tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
            )
        else:
            components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    finally:
        torch.set_default_dtype(default_dtype)
    if arch.vae_keeps_float32:
        components["vae"].to(torch.float32)
    return arch.pipeline_class(**components)
