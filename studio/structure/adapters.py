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

import inspect
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from diffusers.models.embeddings import ImageProjection
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from studio.errors import InvalidInputError, ModelLoadError
from studio.single_file import read_pickled_weights

if TYPE_CHECKING:  # studio.models imports this module to load the embedded controls
    from studio.models import LoadedModel

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_CONTROLS_DIR = REPO_ROOT / "assets" / "models" / "shapes-sd-controls"
IP_ADAPTER_FILE = "ip-adapter.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"
STUDIO_CARD = "studio.json"  # beside a control's weights: {"control": "layout"}, the map it reads
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
# config.json `_class_name` -> ControlModel.kind
CONTROL_CLASSES = {"ControlNetModel": "controlnet", "T2IAdapter": "t2i_adapter"}
FOLDER_LAYOUT = "a diffusers ControlNetModel or T2IAdapter folder (config.json + diffusion_pytorch_model.safetensors)"
LAYOUTS_READ = (
    f"{FOLDER_LAYOUT}, a ControlNet single file in the original layout (control_model.* keys, lllyasviel/ControlNet) or diffusers' "
    "(controlnet_cond_embedding.* keys), an IP-Adapter file with image_proj.* and ip_adapter.* weights "
    "(.safetensors flat, .bin nested, h94/IP-Adapter)"
)
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
        _resident(self.module, device, dtype)
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
            _resident(module, device, dtype)
        return self


def _resident(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """On `device` in `dtype`, for inference (eval, no grads); cast only when the dtype differs, as studio.models does
    (diffusers warns on every `to(dtype)`)."""
    module.to(device=device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    module.eval().requires_grad_(False)


def tiny_image_encoder_config(projection_dim: int = 128, image_size: int = 64, patch_size: int = 8,
                              hidden_size: int = 64, num_layers: int = 2) -> CLIPVisionConfig:
    """A small CLIP vision tower for the shapes world (64x64 input, 8x8 patches, 2 layers of width 64).

    No pretrained CLIP is reachable here (no hub), and the shapes world needs none: its pictures are flat colours and
    simple outlines. So the project trains this encoder jointly with the IP-Adapter's projections; published
    IP-Adapters instead freeze OpenAI's CLIP ViT-H/14 (Ye et al. 2023, sec. 3.2.1). It saves as a standard
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
    ("to speed up convergence", Ye et al. 2023, sec. 3.2.2; tencent-ailab's tutorial_train.py does the same), so at
    step 0 the image tokens are read like text tokens. image_encoder: the one given, or a fresh `tiny_image_encoder_config` encoder whose
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


def new_control(base_unet: UNet2DConditionModel, kind: str, name: str, trained_for: str) -> ControlModel:
    """A fresh control model to train for `base_unet` (float32, CPU).

    controlnet: diffusers' ControlNetModel.from_unet, the trainable copy of the UNet's encoder with zero convolutions
    (Zhang et al. 2023, eq. 1-4). t2i_adapter: a full T2I-Adapter (Mou et al. 2024) with one feature stage per UNet
    down block, each as wide as that block, on an RGB map at the VAE's resolution (pixel-unshuffle by 8).
    """
    if kind == "controlnet":
        module = ControlNetModel.from_unet(base_unet)
    elif kind == "t2i_adapter":
        module = T2IAdapter(in_channels=3, channels=list(base_unet.config.block_out_channels), num_res_blocks=2,
                            downscale_factor=8, adapter_type="full_adapter")
    else:
        raise InvalidInputError(f"Unknown control kind {kind!r}: use one of {', '.join(CONTROL_CLASSES.values())}.")
    return ControlModel(name=name, kind=kind, module=module.float(), trained_for=trained_for)


# ---------------------------------------------------------------------------------------------
# reading files


def read_weights(path: Path) -> dict:
    """Every tensor of a .safetensors file, or the (possibly nested) dict of a pickled one, read with
    `weights_only=True` (no code runs)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelLoadError(f"{path} is not a readable .safetensors file ({error}); it may be truncated or corrupt.") from error
    return read_pickled_weights(path)


def unknown_layout(path: Path, keys: list[str]) -> ModelLoadError:
    first = ", ".join(keys[:5]) or "none"
    return ModelLoadError(f"{path.name} is in a layout this studio does not read (its first keys: {first}). It reads {LAYOUTS_READ}.")


def _card_control(folder: Path) -> str:
    """The control map a model reads, from `studio.json` ({"control": "layout"}) or its README's front matter."""
    card = folder / STUDIO_CARD
    if card.is_file():
        try:
            return str(json.loads(card.read_text()).get("control", ""))
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"Could not read {card}: {error}. It should hold e.g. {{\"control\": \"layout\"}}.") from error
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            front_matter = text.split("---", 2)[1]
            try:
                return str((yaml.safe_load(front_matter) or {}).get("control", ""))
            except yaml.YAMLError:
                return ""  # a card without machine-readable front matter says nothing about its control
    return ""


def _differences(checks: list[tuple[str, object, object]]) -> list[str]:
    """(facet, the adapter's value, the base model's value) -> "<facet> <theirs> (the base has <ours>)" per mismatch."""
    return [f"{facet} {theirs} (the base has {ours})" for facet, theirs, ours in checks if theirs != ours]


def _refuse(what: str, name: str, base: LoadedModel, differences: list[str], advice: str) -> ModelLoadError:
    return ModelLoadError(f"{what} {name} was made for a different base model than {base.name}: {'; '.join(differences)}. {advice}")


def _init_defaults(model_class: type) -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(model_class.__init__).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def _family(unet_config) -> str:
    return "SDXL" if unet_config.get("addition_embed_type") == "text_time" else "SD 1.x/2.x"


def check_controlnet(config, name: str, base: LoadedModel) -> None:
    """A ControlNet's residuals are added to the UNet's skip connections: same latent channels, same levels, widths
    and layers per level, same cross-attention width (its own copy reads the prompt) and the same model family."""
    unet = base.unet.config
    config = {**_init_defaults(ControlNetModel), **config}  # a config.json may leave out arguments at their default
    differences = _differences([
        ("model family", _family(config), _family(unet)),
        ("cross-attention", f"{config['cross_attention_dim']} wide", f"{unet.cross_attention_dim} wide"),
        ("latent channels", config["in_channels"], unet.in_channels),
        ("block widths", list(config["block_out_channels"]), list(unet.block_out_channels)),
        ("layers per block", config["layers_per_block"], unet.layers_per_block),
        ("down blocks", list(config["down_block_types"]), list(unet.down_block_types)),
    ])
    if differences:
        raise _refuse("The ControlNet", name, base, differences, f"Load a ControlNet trained for {base.name}.")


def check_t2i_adapter(adapter: T2IAdapter, name: str, base: LoadedModel) -> None:
    """A T2I-Adapter's features are added inside the UNet's down blocks: one stage per block, as wide, starting at the
    latent resolution (SD 1.x/2.x: "full_adapter"/"light_adapter"; SDXL: "full_adapter_xl", whose first stages
    share a resolution)."""
    unet = base.unet.config
    config = adapter.config
    made_for_xl = config.adapter_type == "full_adapter_xl"
    widths = list(unet.block_out_channels)
    checks = [("model family", "SDXL" if made_for_xl else "SD 1.x/2.x", _family(unet)),
              ("stage widths", list(config.channels)[:len(widths)], widths)]
    if not made_for_xl:
        checks += [("stages", len(config.channels), len(widths)),
                   ("input downscale", adapter.downscale_factor, base.size_multiple)]
    differences = _differences(checks)
    if differences:
        raise _refuse("The T2I-Adapter", name, base, differences, f"Load a T2I-Adapter trained for {base.name}.")


def _controlnet_template(base: LoadedModel, folder: Path) -> Path:
    """A config folder for a ControlNet of the base UNet's shape (what a single file lacks), written without weights."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        template = ControlNetModel.from_unet(base.unet, load_weights_from_unet=False)
    template.save_config(folder)
    return folder


def _single_file_controlnet_facts(weights: dict) -> dict | None:
    """What a ControlNet file says about the UNet it was made for, from its tensors' shapes, in either naming:
    original (`control_model.input_blocks.*`, or unprefixed as thibaud/controlnet-sd21's) or diffusers'
    (`conv_in`, `down_blocks.*`). None when the tensors these are read from are missing."""
    if "controlnet_cond_embedding.conv_in.weight" in weights:
        conv_in_key, encoder = "conv_in.weight", "down_blocks."
    else:
        prefix = "control_model." if any(key.startswith("control_model.") for key in weights) else ""
        conv_in_key, encoder = f"{prefix}input_blocks.0.0.weight", f"{prefix}input_blocks."
    conv_in = weights.get(conv_in_key)
    cross_attention = next((tensor for key, tensor in weights.items()
                            if key.startswith(encoder) and key.endswith("attn2.to_k.weight")), None)
    if conv_in is None or cross_attention is None:
        return None
    return {"in_channels": conv_in.shape[1], "width": conv_in.shape[0], "cross_attention_dim": cross_attention.shape[1]}


def _load_controlnet_file(path: Path, name: str, base: LoadedModel) -> ControlNetModel:
    """A ControlNet single file, original layout (`control_model.*`, lllyasviel/ControlNet) or diffusers' keys,
    through diffusers' ControlNetModel.from_single_file against a config of the base UNet's shape (offline)."""
    weights = read_weights(path)
    keys = list(weights)
    if not any(key.startswith(("control_model.", "input_hint_block.", "controlnet_cond_embedding.")) for key in keys):
        raise unknown_layout(path, keys)
    facts = _single_file_controlnet_facts(weights)
    if facts is None:  # a ControlNet's names without its input convolution or cross-attention: not one we can read
        raise unknown_layout(path, keys)
    unet = base.unet.config
    differences = _differences([
        ("cross-attention", f"{facts['cross_attention_dim']} wide", f"{unet.cross_attention_dim} wide"),
        ("latent channels", facts["in_channels"], unet.in_channels),
        ("first block width", facts["width"], unet.block_out_channels[0]),
    ])
    if differences:
        raise _refuse("The ControlNet", name, base, differences, f"Load a ControlNet trained for {base.name}.")
    with tempfile.TemporaryDirectory(prefix="studio-controlnet-") as folder:
        try:
            return ControlNetModel.from_single_file(weights, config=str(_controlnet_template(base, Path(folder))),
                                                    local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as error:  # shapes beyond those checked differ
            raise ModelLoadError(
                f"The ControlNet {name} does not fit {base.name}: {error}. Load a ControlNet trained for {base.name}."
            ) from error


def _folder_config(folder: Path) -> tuple[dict, str]:
    """A control folder's config.json and the kind its `_class_name` names; raises ModelLoadError for anything else."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:5]) or "nothing"
        raise ModelLoadError(f"{folder} has no config.json (it holds {found}). It should be {FOLDER_LAYOUT}.")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Could not read {config_file}: {error}") from error
    class_name = config.get("_class_name", "")
    kind = CONTROL_CLASSES.get(class_name)
    if kind is None:
        raise ModelLoadError(
            f"{folder.name} holds a {class_name or 'unnamed'} model; the controls this studio loads are "
            f"{' and '.join(CONTROL_CLASSES)} folders.")
    return config, kind


def control_kind(path: str | Path) -> str:
    """"controlnet" or "t2i_adapter": what a control folder's config names (a single file is a ControlNet), without
    loading it."""
    path = Path(path).expanduser()
    return _folder_config(path)[1] if path.is_dir() else "controlnet"


def _load_control_folder(folder: Path, name: str, base: LoadedModel) -> tuple[str, ControlNetModel | T2IAdapter]:
    config, kind = _folder_config(folder)
    class_name = config["_class_name"]
    model_class = ControlNetModel if kind == "controlnet" else T2IAdapter
    if kind == "controlnet":
        check_controlnet(config, name, base)  # before the weights: a mismatch should not cost a load
    try:
        module = model_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"Could not load the {class_name} in {folder}: {error}") from error
    if kind == "t2i_adapter":
        check_t2i_adapter(module, name, base)
    return kind, module


def load_control(path: str | Path, base: LoadedModel, name: str | None = None) -> ControlModel:
    """A ControlNet or T2I-Adapter for `base`, on its device and dtype: a diffusers folder (kind from config.json's
    `_class_name`) or a ControlNet single file. Its name is `name`, else the folder's name or the file's stem; the
    map it reads comes from a `studio.json` (or README front matter) beside the weights. Raises ModelLoadError."""
    path = Path(path).expanduser()
    if path.is_dir():
        name = name or path.name
        kind, module = _load_control_folder(path, name, base)
        trained_for = _card_control(path)
    elif path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ModelLoadError(f"{path} is neither a folder nor a weights file ({', '.join(WEIGHT_SUFFIXES)}).")
        name = name or path.stem
        kind, module, trained_for = "controlnet", _load_controlnet_file(path, name, base), _card_control(path.parent)
    else:
        raise ModelLoadError(f"Control model {path} does not exist: give a diffusers ControlNet/T2I-Adapter folder or a ControlNet file.")
    return ControlModel(name=name, kind=kind, module=module, trained_for=trained_for).to(base.device, base.dtype)


# ---------------------------------------------------------------------------------------------
# IP-Adapter files


def _ip_adapter_parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(image_proj, ip_adapter) weights of a .safetensors file (flat `image_proj.*`/`ip_adapter.*` keys) or a
    pickled one (the nested {"image_proj": {...}, "ip_adapter": {...}} of h94/IP-Adapter's .bin files, or flat)."""
    weights = read_weights(path)
    if isinstance(weights.get("image_proj"), dict) and isinstance(weights.get("ip_adapter"), dict):
        return weights["image_proj"], weights["ip_adapter"]
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in weights.items():
        group, _, rest = key.partition(".")
        if group in parts and isinstance(tensor, torch.Tensor):
            parts[group][rest] = tensor
    if not parts["image_proj"] or not parts["ip_adapter"]:
        raise unknown_layout(path, list(weights))
    return parts["image_proj"], parts["ip_adapter"]


# image_proj keys of the IP-Adapter variants diffusers knows, and what this studio calls them
_IP_VARIANTS = {"latents": "IP-Adapter Plus", "proj.3.weight": "IP-Adapter Full Face",
                "perceiver_resampler.proj_in.weight": "IP-Adapter FaceID Plus", "norm.weight": "IP-Adapter FaceID"}


def _open_image_encoder(path: Path, image_encoder: str | Path | None) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
    folder = Path(image_encoder).expanduser() if image_encoder is not None else path.parent / IMAGE_ENCODER_FOLDER
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"The IP-Adapter {path.name} needs its CLIP image encoder, and {folder} holds none (no config.json). "
            f"Put the encoder's folder beside the file as {IMAGE_ENCODER_FOLDER}/ or pass it with --image-encoder DIR "
            "(h94/IP-Adapter ships it as models/image_encoder for SD 1.5 and sdxl_models/image_encoder for SDXL).")
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"Could not load the image encoder in {folder}: {error}") from error
    has_processor = (folder / "preprocessor_config.json").is_file()
    return encoder, CLIPImageProcessor.from_pretrained(folder) if has_processor else image_processor_for(encoder)


def check_ip_adapter(image_proj: dict[str, torch.Tensor], ip_layers: dict[str, torch.Tensor], name: str,
                     base: LoadedModel, encoder: CLIPVisionModelWithProjection) -> list[str]:
    """The processor keys of `base` the file's layers belong to, in order; raises ModelLoadError naming what differs:
    the projection's token width vs the UNet's cross-attention, its input vs the encoder's embedding, the number of
    layers, and each layer's key/value shape."""
    cross_attention_dim = base.unet.config.cross_attention_dim
    embed_width, token_width = image_proj["proj.weight"].shape[1], image_proj["proj.weight"].shape[0] // DIFFUSERS_IP_TOKENS
    keys = cross_attention_keys(base.unet)
    indices = sorted({int(key.split(".")[0]) for key in ip_layers})
    differences = _differences([
        ("image tokens for cross-attention", f"{token_width} wide", f"{cross_attention_dim} wide"),
        ("cross-attention layers", len(indices), len(keys)),
    ])
    if differences:
        raise _refuse("The IP-Adapter", name, base, differences, f"Load an IP-Adapter trained for {base.name}.")
    if encoder.config.projection_dim != embed_width:
        raise ModelLoadError(
            f"The IP-Adapter {name} reads {embed_width}-wide image embeddings, its image encoder gives "
            f"{encoder.config.projection_dim}: pass the encoder it was trained with (--image-encoder DIR).")
    for position, key in enumerate(keys):
        attention = base.unet.get_submodule(key.removesuffix(".processor"))
        for projection in ("to_k_ip", "to_v_ip"):
            weight = ip_layers.get(f"{diffusers_ip_index(position)}.{projection}.weight")
            if weight is None or tuple(weight.shape) != (attention.to_k.out_features, cross_attention_dim):
                found = "missing" if weight is None else tuple(weight.shape)
                needed = (attention.to_k.out_features, cross_attention_dim)
                difference = f"layer {key.removesuffix('.processor')} {projection} is {found} (the base needs {needed})"
                raise _refuse("The IP-Adapter", name, base, [difference], f"Load an IP-Adapter trained for {base.name}.")
    return keys


def load_ip_adapter(path: str | Path, base: LoadedModel, image_encoder: str | Path | None = None) -> ImagePromptAdapter:
    """An IP-Adapter file (the plain IP-Adapter of Ye et al. 2023: a linear projection to 4 tokens) and its CLIP image
    encoder (`image_encoder`, else the `image_encoder/` folder beside the file), checked against `base` and on its
    device and dtype. Raises ModelLoadError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"IP-Adapter file {path} does not exist: give its .safetensors or .bin file.")
    image_proj_weights, ip_layers = _ip_adapter_parts(path)
    if "proj.weight" not in image_proj_weights:
        variant = next((label for key, label in _IP_VARIANTS.items() if key in image_proj_weights), None)
        if variant is not None:
            raise ModelLoadError(f"{path.name} is an {variant} file; this studio reads the plain IP-Adapter "
                                 "(image_proj.proj.* and image_proj.norm.*, e.g. ip-adapter_sd15.bin).")
        raise unknown_layout(path, [f"image_proj.{key}" for key in image_proj_weights])
    encoder, processor = _open_image_encoder(path, image_encoder)
    keys = check_ip_adapter(image_proj_weights, ip_layers, path.stem, base, encoder)
    image_proj = ImageProjection(image_embed_dim=image_proj_weights["proj.weight"].shape[1],
                                 cross_attention_dim=base.unet.config.cross_attention_dim,
                                 num_image_text_embeds=DIFFUSERS_IP_TOKENS)
    image_proj.load_state_dict({key.replace("proj", "image_embeds"): tensor for key, tensor in image_proj_weights.items()})
    key_value = {}
    for position, key in enumerate(keys):
        pair = []
        for projection in ("to_k_ip", "to_v_ip"):
            weight = ip_layers[f"{diffusers_ip_index(position)}.{projection}.weight"]
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight.data.copy_(weight)
            pair.append(linear)
        key_value[key] = (pair[0], pair[1])
    adapter = ImagePromptAdapter(image_encoder=encoder, image_processor=processor, image_proj=image_proj,
                                 key_value=key_value, num_tokens=DIFFUSERS_IP_TOKENS)
    return adapter.to(base.device, base.dtype)


# ---------------------------------------------------------------------------------------------
# the embedded model's controls


def _embedded_folders() -> Iterator[Path]:
    if EMBEDDED_CONTROLS_DIR.is_dir():
        yield from sorted(folder for folder in EMBEDDED_CONTROLS_DIR.iterdir() if folder.is_dir())


def embedded_controls(base: LoadedModel) -> tuple[dict[str, ControlModel], ImagePromptAdapter | None]:
    """The controls shipped for the embedded model (assets/models/shapes-sd-controls/), by name: a ControlNet is named
    after the map it reads ("layout", "outline"), a T2I-Adapter "t2i-" + that map ("t2i-outline"); and the image
    prompt adapter of its `ip-adapter/` folder. Empty (and None) while none are shipped."""
    controls: dict[str, ControlModel] = {}
    image_prompt = None
    for folder in _embedded_folders():
        try:
            if (folder / IP_ADAPTER_FILE).is_file():
                image_prompt = load_ip_adapter(folder / IP_ADAPTER_FILE, base)
            elif (folder / "config.json").is_file():
                control = load_control(folder, base)
                reads = control.trained_for or folder.name
                control.name = reads if control.kind == "controlnet" else f"t2i-{reads}"
                controls[control.name] = control
        except ModelLoadError as error:  # shipped files: damaged, never silently left out
            relative = folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder
            raise ModelLoadError(
                f"The embedded model's control {folder.name} is damaged: {error} Restore it with "
                f"`git checkout -- {relative}` in the repository, or retrain it (the recipe is in {relative}/README.md)."
            ) from error
    return controls, image_prompt
