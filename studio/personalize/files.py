"""Personalization files: what a trained concept is on disk, in the layouts users' tools read and write.

Writers (called by studio.personalize.job at each checkpoint) save every method in the layout its community uses:
- Textual Inversion (Gal et al. 2022, eq. 2: only the word's embedding v* is learned): diffusers'
  `learned_embeds.safetensors` ({word: (n, dim)}) and A1111's `<word>.pt` ({"string_to_param": {"*": (n, dim)}}).
- LoRA (Hu et al. 2021, eq. 3: h = W0 x + (alpha/r) B A x): diffusers' `pytorch_lora_weights.safetensors`
  (stock `load_lora_weights` reads it; alpha and rank travel in its adapter metadata) and the kohya / A1111 /
  ComfyUI layout `<word>.kohya.safetensors` (`lora_unet_…`, `lora_te_…`, one `.alpha` per layer).
- DreamBooth (Ruiz et al. 2023): the fine-tuned `unet/` folder (and `text_encoder/` when it trained).
- Custom Diffusion (Kumari et al. 2023, section 3.1: only cross-attention W_k, W_v and the modifier token V*):
  diffusers' `pytorch_custom_diffusion_weights.safetensors` + `learned_embeds.safetensors`.
Every trained folder also has `concept.json` (method, words, base model fingerprint, steps, files).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from safetensors.torch import save_file

CONCEPT_JSON = "concept.json"
DIFFUSERS_EMBEDDINGS = "learned_embeds.safetensors"
DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"
CUSTOM_DIFFUSION_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"
KOHYA_LORA_SUFFIX = ".kohya.safetensors"
TEXT_MODEL_ROOT = "text_model."
# A1111's embedding files name their one placeholder "*"; 265 is its id in CLIP's vocabulary, which A1111 writes
A1111_PLACEHOLDER = "*"
A1111_PLACEHOLDER_ID = 265
# diffusers' Custom Diffusion processors hold their trained K/V copies under these names (CustomDiffusionAttnProcessor)
CUSTOM_DIFFUSION_NAMES = {"to_k": "to_k_custom_diffusion", "to_v": "to_v_custom_diffusion",
                          "to_q": "to_q_custom_diffusion", "to_out.0": "to_out_custom_diffusion.0"}


def file_stem(word: str) -> str:
    """A file name for a concept word: `<my-star>` → `my-star` (angle brackets and slashes are not portable)."""
    return re.sub(r"[^\w.-]+", "", word).strip(".") or "concept"


def write_embeddings(folder: Path, embeddings: Mapping[str, torch.Tensor], step: int | None = None) -> list[Path]:
    """Learned word embeddings {word: (n_vectors, dim)} in diffusers' layout (one `learned_embeds.safetensors` for
    all words, read by `load_textual_inversion`) and A1111's (one `<word>.pt` per word; A1111 names the word after
    the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {word: _as_vectors(vectors) for word, vectors in embeddings.items()}
    diffusers_path = folder / DIFFUSERS_EMBEDDINGS
    save_file(tensors, diffusers_path)
    written = [diffusers_path]
    for word, vectors in tensors.items():
        a1111_path = folder / f"{file_stem(word)}.pt"
        torch.save({"string_to_token": {A1111_PLACEHOLDER: A1111_PLACEHOLDER_ID},
                    "string_to_param": {A1111_PLACEHOLDER: vectors}, "name": word, "step": step}, a1111_path)
        written.append(a1111_path)
    return written


def write_lora(folder: Path, word: str, unet_lora: Mapping[str, torch.Tensor],
               text_encoder_lora: Mapping[str, torch.Tensor] | None = None, *, alpha: float) -> list[Path]:
    """LoRA layers as peft's `get_peft_model_state_dict` returns them (`<module>.lora_A.weight` / `lora_B`), saved
    in diffusers' layout by diffusers itself (rank and alpha in the adapter metadata, so stock `load_lora_weights`
    scales by alpha/r) and in kohya's (diffusers' `convert_state_dict_to_kohya`, each layer's `.alpha` set to
    `alpha`; SD 1.x/2.x text encoder layers are `lora_te_`, kohya's name for a single encoder)."""
    folder.mkdir(parents=True, exist_ok=True)
    unet_lora = _detached(unet_lora)
    text_encoder_lora = _detached(text_encoder_lora) if text_encoder_lora else None
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_lora, text_encoder_lora_layers=text_encoder_lora, weight_name=DIFFUSERS_LORA,
        unet_lora_adapter_metadata=_lora_metadata(unet_lora, alpha),
        text_encoder_lora_adapter_metadata=_lora_metadata(text_encoder_lora, alpha) if text_encoder_lora else None)
    prefixed = {f"unet.{key}": value for key, value in unet_lora.items()}
    # kohya names CLIP's layers from its `text_model.` root, which transformers 5's CLIPTextModel no longer has
    prefixed.update({f"text_encoder.{_with_text_model_root(key)}": value for key, value in (text_encoder_lora or {}).items()})
    kohya = {}
    for key, value in convert_state_dict_to_kohya(prefixed).items():
        key = key.replace("lora_te1_", "lora_te_")
        kohya[key] = torch.tensor(float(alpha)) if key.endswith(".alpha") else value.contiguous()
    kohya_path = folder / f"{file_stem(word)}{KOHYA_LORA_SUFFIX}"
    save_file(kohya, kohya_path, metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha),
                                           "ss_network_dim": str(_lora_rank(unet_lora))})
    return [folder / DIFFUSERS_LORA, kohya_path]


def write_custom_diffusion(folder: Path, kv_parameters: Mapping[str, torch.Tensor],
                           embeddings: Mapping[str, torch.Tensor]) -> list[Path]:
    """Custom Diffusion's trained cross-attention projections by UNet parameter name (`<attention>.to_k.weight`) in
    diffusers' layout (`<attention>.processor.to_k_custom_diffusion.weight`, what `unet.load_attn_procs` reads),
    and its modifier words' embeddings (`learned_embeds.safetensors`)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {}
    for name, value in kv_parameters.items():
        module, projection, parameter = _split_projection(name)
        weights[f"{module}.processor.{CUSTOM_DIFFUSION_NAMES[projection]}.{parameter}"] = value.detach().contiguous()
    weights_path = folder / CUSTOM_DIFFUSION_WEIGHTS
    save_file(weights, weights_path)
    embeddings_path = folder / DIFFUSERS_EMBEDDINGS
    save_file({word: _as_vectors(vectors) for word, vectors in embeddings.items()}, embeddings_path)
    return [weights_path, embeddings_path]


def write_dreambooth(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> list[Path]:
    """DreamBooth's fine-tuned UNet (and text encoder, when it trained) as diffusers model folders, safetensors."""
    written = []
    for subfolder, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is not None:
            model.save_pretrained(folder / subfolder, safe_serialization=True)
            written.extend(sorted(path for path in (folder / subfolder).iterdir() if path.is_file()))
    return written


def write_concept_json(folder: Path, *, method: str, words: Iterable[str], class_word: str | None,
                       base: Mapping[str, str], steps: int, stopped: bool, files: Iterable[Path],
                       **facts: Any) -> Path:
    """The trained folder's `concept.json`: what trained, for which base (`base_fingerprint`), how far, and its
    files (path relative to the folder → sha256 short hash, so a changed file is noticed). Extra facts (settings)
    are stored as given; they must be JSON values."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "words": list(words), "class_word": class_word, "base": dict(base),
              "steps": steps, "stopped": stopped,
              "files": {path.relative_to(folder).as_posix(): file_sha256(path) for path in files}, **facts}
    path = folder / CONCEPT_JSON
    path.write_text(json.dumps(record, indent=2))
    return path


def file_sha256(path: Path) -> str:
    """Short (16 hex) sha256 of a file: the hash A1111 and Civitai show for LoRAs and embeddings, shortened."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def base_fingerprint(model) -> str:
    """Short hash of what makes a concept fit a base model: its UNet and text encoder configs (less vocabulary
    size and private keys, which token additions and the source path change) and its tokenizer's base vocabulary."""
    facts = {"unet": _config_facts(model.unet.config),
             "text_encoder": _config_facts(model.text_encoder.config.to_dict()),
             "vocabulary": model.tokenizer.vocab_size}
    if getattr(model, "text_encoder_2", None) is not None:
        facts["text_encoder_2"] = _config_facts(model.text_encoder_2.config.to_dict())
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _config_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    volatile = {"vocab_size", "transformers_version", "torch_dtype", "dtype", "architectures"}
    return {key: value for key, value in dict(config).items() if not key.startswith("_") and key not in volatile}


def _as_vectors(vectors: torch.Tensor) -> torch.Tensor:
    """(n, dim) float32, contiguous and detached: one word may be several vectors; a single (dim,) becomes (1, dim)."""
    vectors = vectors.detach().to("cpu", torch.float32)
    return (vectors[None] if vectors.dim() == 1 else vectors).contiguous()


def _detached(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def _lora_rank(lora: Mapping[str, torch.Tensor]) -> int:
    ranks = {value.shape[0] for key, value in lora.items() if key.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise ValueError(f"LoRA layers must share one rank to be saved; these have ranks {sorted(ranks)}")
    return ranks.pop()


def _lora_metadata(lora: Mapping[str, torch.Tensor], alpha: float) -> dict[str, Any]:
    """peft LoraConfig fields diffusers rebuilds the adapter from on load (else it assumes alpha = rank)."""
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in lora})
    return {"r": _lora_rank(lora), "lora_alpha": alpha, "target_modules": modules}


def _with_text_model_root(key: str) -> str:
    return key if key.startswith(TEXT_MODEL_ROOT) else TEXT_MODEL_ROOT + key


def _split_projection(name: str) -> tuple[str, str, str]:
    """`down_blocks.0.….attn2.to_k.weight` → (`down_blocks.0.….attn2`, `to_k`, `weight`)."""
    for projection in CUSTOM_DIFFUSION_NAMES:
        marker = f".{projection}."
        if marker in name:
            module, parameter = name.rsplit(marker, 1)
            return module, projection, parameter
    raise ValueError(f"{name} is not an attention projection's parameter (to_q, to_k, to_v, to_out.0)")
