"""Personalization files: what a trained concept is on disk, in the layouts users' tools read and write.

Readers (`read_concept`) take a studio trained folder or a file users have — LoRA in diffusers' or kohya's layout (SGM
block names too; Linear and convolution layers, each at its own alpha), embeddings from diffusers, A1111, kohya
(`emb_params`) and SDXL (`clip_l`/`clip_g`), Custom Diffusion, a DreamBooth `unet/` — and normalise it (diffusers' own
converters) into one `ConceptFile`; `check_fits` says whether it belongs to a loaded model, naming both architectures
when not. A layout the studio cannot apply (LyCORIS LoHA/LoKr, `lora_mid`, DoRA, unknown keys) is refused before
conversion, naming its keys: diffusers itself fails on them with "keys have not been correctly renamed".

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
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import (
    convert_state_dict_to_kohya,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from diffusers.utils.state_dict_utils import StateDictType
from peft import LoraConfig
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from studio.errors import ModelLoadError
from studio.single_file import read_pickled_weights
from studio.specs import MAX_NAME_CHARS, MAX_WORD_CHARS, check_text

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
    all words; diffusers' `load_textual_inversion` reads it when it holds one word) and A1111's (one `<word>.pt` per
    word, which A1111 names after the file and diffusers' `load_textual_inversion` after its "name")."""
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
    unet_metadata = _lora_metadata(unet_lora, alpha)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_lora, text_encoder_lora_layers=text_encoder_lora, weight_name=DIFFUSERS_LORA,
        unet_lora_adapter_metadata=unet_metadata,
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
                                           "ss_network_dim": str(unet_metadata["r"])})
    return [folder / DIFFUSERS_LORA, kohya_path]


def write_custom_diffusion(folder: Path, kv_parameters: Mapping[str, torch.Tensor],
                           embeddings: Mapping[str, torch.Tensor], unet: torch.nn.Module | None = None) -> list[Path]:
    """Custom Diffusion's trained cross-attention projections by UNet parameter name (`<attention>.to_k.weight`) in
    diffusers' layout (`<attention>.processor.to_k_custom_diffusion.weight`, what `unet.load_attn_procs` reads),
    and its modifier words' embeddings (`learned_embeds.safetensors`). Given the `unet`, its untrained attention
    layers are listed too (an empty tensor each), as diffusers' `save_attn_procs` lists them: stock
    `load_attn_procs` needs a processor for every layer."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {}
    for name, value in kv_parameters.items():
        module, projection, parameter = _split_projection(name)
        weights[f"{module}.processor.{CUSTOM_DIFFUSION_NAMES[projection]}.{parameter}"] = value.detach().contiguous()
    trained = {key.split(".processor.", 1)[0] for key in weights}
    for processor in (unet.attn_processors if unet is not None else {}):
        if processor.removesuffix(".processor") not in trained:
            weights[processor] = torch.empty(0)
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


def _lora_metadata(lora: Mapping[str, torch.Tensor], alpha: float) -> dict[str, Any]:
    """peft LoraConfig fields diffusers rebuilds the adapter from on load (else it assumes alpha = rank)."""
    prefixed = {f"part.{key}": value for key, value in lora.items()}
    return _lora_config_fields(prefixed, {key.rsplit(".lora_", 1)[0]: alpha for key in prefixed}, "part")


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


# ----- reading -----------------------------------------------------------------------------------------------------

KIND_OF_METHOD = {"textual-inversion": "embedding", "lora": "lora", "dreambooth": "dreambooth",
                  "custom-diffusion": "custom-diffusion"}
KIND_LABELS = {"embedding": "embedding", "lora": "LoRA", "dreambooth": "DreamBooth UNet",
               "custom-diffusion": "Custom Diffusion concept"}
LORA_PARTS = ("unet", "text_encoder", "text_encoder_2")
# Adapters the studio cannot apply, by a fragment of their key names
UNSUPPORTED_MARKERS = {"hada_": "LyCORIS LoHA", "lokr_": "LyCORIS LoKr", "lora_mid": "LyCORIS LoCon with lora_mid",
                       "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "oft_": "OFT", "ia3_": "IA3"}
KOHYA_LORA_KEY = re.compile(r"^lora_(unet|te|te1|te2)_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$")
DIFFUSERS_LORA_KEY = re.compile(r"^((unet|text_encoder|text_encoder_2)\.)?[\w.]+\.(lora_[AB]\.weight|"
                                r"lora(_linear_layer)?\.(down|up)\.weight|to_(q|k|v|out)_lora\.(down|up)\.weight)$")
SGM_BLOCK_NAMES = ("input_blocks", "middle_block", "output_blocks")
# What diffusers' SGM → diffusers block renaming reads of a UNet config: every SD 1.x/2.x/XL UNet has 2 layers per block
SGM_UNET_CONFIG = SimpleNamespace(layers_per_block=2)
# Cross-attention width → model family (SDXL's is its two text encoders' 768 + 1280)
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
KEYS_NAMED = 4  # how many keys a refusal names
# A folder's file of each kind, in diffusers' names (safetensors first)
FOLDER_FILES = {"lora": (DIFFUSERS_LORA, "pytorch_lora_weights.bin"),
                "embedding": (DIFFUSERS_EMBEDDINGS, "learned_embeds.bin")}


@dataclass(frozen=True)
class ConceptFile:
    """A concept read from disk, in one form whatever its layout. `lora` has peft's names, prefixed by the model part
    (`unet.<module>.lora_A.weight` / `lora_B`, `text_encoder.…`, `text_encoder_2.…`, module names as the installed
    diffusers/transformers name them); `network_alphas` has every LoRA module's alpha (`unet.<module>` → alpha; rank
    where the file gives none, as diffusers assumes); `parameters` are full replacement weights by parameter name
    (UNet names; `text_encoder.<name>` for DreamBooth's text encoder)."""

    kind: str  # "lora" | "embedding" | "custom-diffusion" | "dreambooth"
    layout: str  # "diffusers", "kohya", "kohya (SGM names)", "a1111", "kohya-emb", "sdxl-emb", "studio folder", ...
    words: tuple[str, ...]
    path: Path
    sha256: str  # 16 hex
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # {word: (n, dim)}, the (first) text encoder
    embeddings_2: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL's second text encoder
    lora: dict[str, torch.Tensor] | None = None
    network_alphas: dict[str, float] | None = None
    # The same ranks and alphas as diffusers' adapter metadata ({"unet.r", "unet.lora_alpha", "unet.target_modules",
    # "unet.rank_pattern", "unet.alpha_pattern", "text_encoder.…"}) for every layout: pass it as `metadata=` (and
    # no network_alphas) to diffusers' load_lora_into_unet / load_lora_into_text_encoder
    lora_metadata: dict[str, Any] | None = None
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)
    base: dict | None = None  # concept.json's {"name", "fingerprint"} for a studio folder
    notes: tuple[str, ...] = ()  # what the user should know (e.g. the word a kohya embedding was given)


def read_concept(path: Path, token: str | None = None) -> ConceptFile:
    """A studio trained folder, a folder of diffusers files, or one LoRA / embedding / Custom Diffusion file.
    `token` names the word of an embedding file that stores none (A1111, kohya, SDXL; default: the file's stem).
    Raises ModelLoadError for a missing, unreadable or unknown file, naming what it could not read."""
    path = Path(path)
    # the name and the words are shown back and become prompt words: refused when longer than any real one
    check_text("The file's name", path.name, MAX_NAME_CHARS)
    if token is not None:
        check_text("The token", token, MAX_WORD_CHARS)
    if path.is_dir():
        concept = _read_folder(path, token)
    elif not path.is_file():
        raise ModelLoadError(f"{path} does not exist.")
    else:
        weights, metadata = _read_weights(path)
        concept = ConceptFile(path=path, sha256=file_sha256(path), **_read_weights_as_concept(path, weights, metadata, token))
    for word in concept.words:
        check_text(f"The concept's word {word[:20]!r}", word, MAX_WORD_CHARS)
    return concept


def check_fits(concept: ConceptFile, model) -> None:
    """Every tensor of the concept against the loaded model's: LoRA layers' modules exist with the widths they were
    trained on, embeddings are as wide as the text encoder(s) read, replacement weights have the same shapes.
    Raises ModelLoadError naming both architectures (by cross-attention width) when they differ."""
    differences = [*_lora_differences(concept, model), *_embedding_differences(concept, model),
                   *_parameter_differences(concept, model)]
    if not differences:
        return
    what = KIND_LABELS[concept.kind]
    model_width = model.unet.config.cross_attention_dim
    width = _concept_width(concept)
    if width is not None and width != model_width:
        made_for = _family(width)
        if width not in FAMILIES and concept.base and concept.base.get("name"):  # a studio folder knows its base
            made_for = f"{concept.base['name']} ({width}-wide cross-attention)"
        raise ModelLoadError(f"{concept.path.name}: this {what} is for {made_for}; the loaded model, {model.name},"
                             f" is {_family(model_width)}. Load a {what} made for {model.name}'s family.")
    examples = "; ".join(differences[:KEYS_NAMED])
    raise ModelLoadError(f"{concept.path.name}: this {what} does not fit {model.name} ({_family(model_width)}): "
                         f"{len(differences)} of its tensors differ from the model's ({examples}).")


def describe(path: Path, token: str | None = None) -> str:
    """A few lines on what a concept file or folder is, for `studio concepts FILE`."""
    concept = read_concept(path, token)
    lines = [f"{concept.path.name}: {KIND_LABELS[concept.kind]}, {concept.layout} layout, sha256 {concept.sha256}"]
    if concept.words:
        lines.append("words: " + ", ".join(concept.words))
    for word, vectors in concept.embeddings.items():
        second = concept.embeddings_2.get(word)
        widths = f"{vectors.shape[1]}" + (f" + {second.shape[1]}" if second is not None else "")
        lines.append(f"embedding '{word}': {vectors.shape[0]} vector(s), {widths} wide")
    if concept.lora:
        for part in LORA_PARTS:
            ranks = [value.shape[0] for key, value in concept.lora.items()
                     if key.startswith(f"{part}.") and key.endswith("lora_A.weight")]
            if ranks:
                alphas = sorted({alpha for key, alpha in concept.network_alphas.items() if key.startswith(f"{part}.")})
                lines.append(f"{part}: {len(ranks)} LoRA layers, rank {_span(ranks)}, alpha {_span(alphas)}")
    if concept.parameters:
        numbers = sum(value.numel() for value in concept.parameters.values())
        lines.append(f"replaces {len(concept.parameters)} weights ({numbers:,} numbers)")
    width = _concept_width(concept)
    if width is not None:
        lines.append(f"made for {_family(width)}")
    if concept.base:
        lines.append(f"trained on {concept.base.get('name')} (fingerprint {concept.base.get('fingerprint')})")
    return "\n".join([*lines, *concept.notes])


def peft_adapter(concept: ConceptFile, part: str) -> tuple[LoraConfig, dict[str, torch.Tensor]] | None:
    """The peft LoraConfig and state dict (names relative to the part) of a LoRA concept's layers on one model part
    ("unet", "text_encoder", "text_encoder_2"), ranks and alphas per layer; None when it has none there. Apply with
    `inject_adapter_in_model(config, module, adapter_name)` + `set_peft_model_state_dict(module, state, adapter_name)`."""
    prefix = f"{part}."
    state = {key[len(prefix):]: value for key, value in (concept.lora or {}).items() if key.startswith(prefix)}
    if not state:
        return None
    return LoraConfig(**_lora_config_fields(concept.lora, concept.network_alphas, part)), state


def _lora_config_fields(lora: Mapping[str, torch.Tensor], alphas: Mapping[str, float], part: str) -> dict[str, Any]:
    """LoraConfig fields of one model part's layers: the commonest rank and alpha, the others as patterns."""
    prefix = f"{part}."
    modules = sorted({key[len(prefix):].rsplit(".lora_", 1)[0] for key in lora if key.startswith(prefix)})
    ranks = {module: lora[f"{prefix}{module}.lora_A.weight"].shape[0] for module in modules}
    module_alphas = {module: alphas[f"{prefix}{module}"] for module in modules}
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(module_alphas.values()), key=list(module_alphas.values()).count)
    return {"r": rank, "lora_alpha": alpha, "target_modules": modules,
            "rank_pattern": {module: value for module, value in ranks.items() if value != rank},
            "alpha_pattern": {module: value for module, value in module_alphas.items() if value != alpha}}


def _read_weights(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A file's tensors (nested dicts kept, for A1111 embeddings) and safetensors metadata; no code runs."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as stream:
                metadata = stream.metadata() or {}
                weights = {key: stream.get_tensor(key) for key in stream.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"{path} is not a readable safetensors file: {error}. It may be truncated or corrupt;"
                                 " download it again.") from error
    else:
        weights, metadata = read_pickled_weights(path), {}
    if not weights:
        raise ModelLoadError(f"{path} holds no tensors; it is not a LoRA, embedding or Custom Diffusion file.")
    return weights, metadata


def _read_weights_as_concept(path: Path, weights: dict, metadata: dict[str, str], token: str | None) -> dict:
    """The ConceptFile fields (less path and hash) of one file's weights, by what its keys say it is."""
    embedding = _embedding_parts(path, weights, token)
    if embedding is not None:
        return embedding
    keys = list(weights)
    if any("_custom_diffusion." in key for key in keys):
        return {"kind": "custom-diffusion", "layout": "diffusers", "words": (),
                "parameters": _custom_diffusion_parameters(path, weights)}
    if any(marker in key for key in keys for marker in ("lora", *UNSUPPORTED_MARKERS)):
        layout, lora, alphas = _lora_parts(path, weights, metadata)
        lora_metadata = {f"{part}.{name}": value for part in LORA_PARTS if any(key.startswith(f"{part}.") for key in lora)
                         for name, value in _lora_config_fields(lora, alphas, part).items()}
        return {"kind": "lora", "layout": layout, "words": (), "lora": lora, "network_alphas": alphas,
                "lora_metadata": lora_metadata}
    raise ModelLoadError(f"{path} is not a LoRA, embedding or Custom Diffusion file the studio can read: its keys are "
                         f"such as {_some(keys)}.")


def _embedding_parts(path: Path, weights: dict, token: str | None) -> dict | None:
    """Embedding layouts: diffusers {word: (n, dim)}, A1111 {"string_to_param": {"*": ...}}, kohya {"emb_params":
    ...} and SDXL {"clip_l", "clip_g"}; None for weights that are none of them. Files that store no word get
    `token`, else their file's stem (what A1111 and ComfyUI call them)."""
    word = token or path.stem
    unnamed_note = () if token else ((f"This file does not store its word: it is '{word}', the file's name "
                                      f"(give a token to choose another)."),)
    if isinstance(weights.get("string_to_param"), dict):
        vectors = next(iter(weights["string_to_param"].values()), None)
        return {"kind": "embedding", "layout": "a1111", "words": (word,),
                "embeddings": {word: _embedding_vectors(path, vectors)}, "notes": unnamed_note}
    if set(weights) == {"emb_params"}:
        return {"kind": "embedding", "layout": "kohya-emb", "words": (word,),
                "embeddings": {word: _embedding_vectors(path, weights["emb_params"])}, "notes": unnamed_note}
    if set(weights) == {"clip_l", "clip_g"}:
        return {"kind": "embedding", "layout": "sdxl-emb", "words": (word,),
                "embeddings": {word: _embedding_vectors(path, weights["clip_l"])},
                "embeddings_2": {word: _embedding_vectors(path, weights["clip_g"])}, "notes": unnamed_note}
    if all("." not in key and isinstance(value, torch.Tensor) and value.dim() <= 2 for key, value in weights.items()):
        if token and len(weights) == 1:  # diffusers' load_textual_inversion(token=...) renames a one-word file too
            weights = {token: next(iter(weights.values()))}
        return {"kind": "embedding", "layout": "diffusers", "words": tuple(weights),
                "embeddings": {key: _embedding_vectors(path, value) for key, value in weights.items()}}
    return None


def _embedding_vectors(path: Path, vectors: Any) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (1, 2):
        raise ModelLoadError(f"{path} is not an embedding file: its vectors are a {type(vectors).__name__}"
                             f"{tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else ''}.")
    return _as_vectors(vectors)


def _lora_parts(path: Path, weights: dict, metadata: dict[str, str]) -> tuple[str, dict, dict]:
    """Layout check first (a layout diffusers would half-convert is refused naming its keys), then diffusers' own
    conversion (`lora_state_dict`: kohya names, SGM block names) into peft names, and every layer's alpha."""
    for marker, name in UNSUPPORTED_MARKERS.items():
        marked = [key for key in weights if marker in key]
        if marked:
            raise ModelLoadError(f"{path} is a {name} file, which the studio cannot apply (keys such as {_some(marked)})."
                                 " LoRA files in diffusers' or kohya's layout (lora_down / lora_up / alpha) load.")
    kohya = [key for key in weights if KOHYA_LORA_KEY.match(key)]
    # one layout per file: in a kohya file every key is kohya's, else every key is one of diffusers' LoRA names
    unreadable = [key for key in weights if not (key in set(kohya) if kohya else DIFFUSERS_LORA_KEY.match(key))]
    if unreadable:
        raise ModelLoadError(f"{path} has keys the studio cannot read as a LoRA: {_some(unreadable)}.")
    if not kohya and not any(key.startswith(tuple(f"{part}." for part in LORA_PARTS)) for key in weights):
        weights = {f"unet.{key}": value for key, value in weights.items()}  # UNet-only attention-processor files
    sgm = any(name in key for key in kohya for name in SGM_BLOCK_NAMES)
    try:
        state, kohya_alphas = StableDiffusionPipeline.lora_state_dict(dict(weights),
                                                                      unet_config=SGM_UNET_CONFIG if sgm else None)
    except (ValueError, KeyError) as error:
        raise ModelLoadError(f"{path} is not a LoRA diffusers can convert: {error}") from error
    lora = _peft_names(state)
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in lora})
    for module in modules:
        if f"{module}.lora_A.weight" not in lora or f"{module}.lora_B.weight" not in lora:
            raise ModelLoadError(f"{path}: LoRA layer {module} lacks its down or up weight; the file is incomplete.")
    if kohya:
        # diffusers names an attention projection's alpha after its down weight (`….to_q.lora_A.weight.alpha` once in
        # peft's names), every other layer's (feed-forward, proj_in/out, convolutions, CLIP's MLP) `<layer>.alpha`
        given = {key.removesuffix(".alpha").split(".lora_A", 1)[0]: float(alpha)
                 for key, alpha in _peft_names(kohya_alphas or {}).items()}
    else:
        given = _metadata_alphas(metadata, modules)
    alphas = {module: given.get(module, float(lora[f"{module}.lora_A.weight"].shape[0])) for module in modules}
    layout = ("kohya (SGM names)" if sgm else "kohya") if kohya else "diffusers"
    return layout, lora, alphas


def _peft_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers' LoRA names (old attention-processor ones, `lora.down`, `lora_linear_layer`, peft's) → peft's, per
    model part. Text encoder names lose CLIP's `text_model.` root, which transformers 5's CLIPTextModel lacks
    (SDXL's CLIPTextModelWithProjection keeps it)."""
    named = {}
    for part in LORA_PARTS:
        prefix = f"{part}."
        section = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if part != "unet" and section:
            section = convert_state_dict_to_peft(section, original_type=StateDictType.DIFFUSERS_OLD)
        section = convert_unet_state_dict_to_peft(section)
        for key, value in section.items():
            if part == "text_encoder" and key.startswith(TEXT_MODEL_ROOT):
                key = key[len(TEXT_MODEL_ROOT):]
            named[prefix + key] = value
    return named


def _metadata_alphas(metadata: dict[str, str], modules: list[str]) -> dict[str, float]:
    """Alphas from diffusers' adapter metadata (`save_lora_weights`: "unet.lora_alpha", "unet.alpha_pattern")."""
    packed = metadata.get("lora_adapter_metadata")
    if not packed:
        return {}
    try:
        fields = json.loads(packed)
    except json.JSONDecodeError:
        return {}
    alphas = {}
    for module in modules:
        part = module.split(".", 1)[0]
        pattern = fields.get(f"{part}.alpha_pattern") or {}
        relative = module[len(part) + 1:]
        matched = [value for key, value in pattern.items() if re.fullmatch(rf"(.*\.)?{key}", relative)]
        alpha = matched[0] if matched else fields.get(f"{part}.lora_alpha")
        if alpha is not None:
            alphas[module] = float(alpha)
    return alphas


def _custom_diffusion_parameters(path: Path, weights: dict) -> dict[str, torch.Tensor]:
    """`<attention>.processor.to_k_custom_diffusion.weight` → the UNet's own `<attention>.to_k.weight`."""
    by_trained_name = {trained: projection for projection, trained in CUSTOM_DIFFUSION_NAMES.items()}
    parameters = {}
    for key, value in weights.items():
        if key.endswith(".processor") and value.numel() == 0:  # an untrained layer, listed as save_attn_procs does
            continue
        match = re.fullmatch(r"(.+)\.processor\.(\w+_custom_diffusion(?:\.0)?)\.(weight|bias)", key)
        if match is None or match.group(2) not in by_trained_name:
            raise ModelLoadError(f"{path} has keys the studio cannot read as Custom Diffusion: {_some([key])}.")
        module, trained, parameter = match.groups()
        parameters[f"{module}.{by_trained_name[trained]}.{parameter}"] = value
    return parameters


def _read_folder(folder: Path, token: str | None) -> ConceptFile:
    """A studio trained folder (concept.json names its method and words) or a folder of diffusers' files."""
    record = _concept_record(folder)
    method = record.get("method") if record else None
    wanted = KIND_OF_METHOD.get(method)
    read: list[Path] = []
    parts: dict[str, Any] = {}
    if (folder / "unet").is_dir() and wanted in (None, "dreambooth"):
        parts = {"kind": "dreambooth", "layout": "diffusers folder", "words": (),
                 "parameters": _model_folder_weights(folder, read)}
    elif (folder / CUSTOM_DIFFUSION_WEIGHTS).is_file() and wanted in (None, "custom-diffusion"):
        weights, _ = _read_weights(folder / CUSTOM_DIFFUSION_WEIGHTS)
        read.append(folder / CUSTOM_DIFFUSION_WEIGHTS)
        parts = {"kind": "custom-diffusion", "layout": "diffusers", "words": (),
                 "parameters": _custom_diffusion_parameters(folder / CUSTOM_DIFFUSION_WEIGHTS, weights)}
    else:
        for name in (name for kind, names in FOLDER_FILES.items() if wanted in (None, kind) for name in names):
            if (folder / name).is_file():
                single = read_concept(folder / name, token)
                read.append(folder / name)
                parts = {key: getattr(single, key) for key in ("kind", "layout", "words", "embeddings", "embeddings_2",
                                                               "lora", "network_alphas", "lora_metadata", "parameters",
                                                               "notes")}
                break
    if parts and parts["kind"] != "embedding":
        # the words a LoRA, DreamBooth or Custom Diffusion training added to the tokenizer, with their vectors: the
        # studio's learned_embeds, or one file per modifier word (diffusers' Custom Diffusion script: `<new1>.bin`)
        word_files = [folder / name for name in FOLDER_FILES["embedding"] if (folder / name).is_file()][:1] or \
            sorted(path for path in folder.glob("<*>.*") if path.suffix in (".safetensors", ".bin"))
        for path in word_files:
            added = read_concept(path)
            read.append(path)
            parts.update(words=(*parts["words"], *added.words), embeddings={**parts.get("embeddings", {}),
                                                                            **added.embeddings})
    if not parts:
        raise ModelLoadError(f"{folder} holds no concept the studio can read: a trained folder has concept.json, or a "
                             f"folder holds {DIFFUSERS_LORA}, {DIFFUSERS_EMBEDDINGS}, {CUSTOM_DIFFUSION_WEIGHTS} or unet/.")
    if record:
        parts.update(layout="studio folder", words=tuple(record.get("words", parts["words"])))
    digest = hashlib.sha256("".join(f"{path.name}:{file_sha256(path)}" for path in read).encode()).hexdigest()[:16]
    return ConceptFile(path=folder, sha256=digest, base=record.get("base") if record else None, **parts)


def _concept_record(folder: Path) -> dict | None:
    path = folder / CONCEPT_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} is not readable JSON ({error}); the trained folder is damaged.") from error
    if not isinstance(record, dict) or record.get("method") not in KIND_OF_METHOD:
        raise ModelLoadError(f"{path} names no training method the studio knows ({', '.join(KIND_OF_METHOD)}).")
    return record


def _model_folder_weights(folder: Path, read: list[Path]) -> dict[str, torch.Tensor]:
    """DreamBooth's `unet/` (UNet parameter names) and `text_encoder/` (prefixed `text_encoder.`) weights."""
    parameters = {}
    for subfolder, prefix in (("unet", ""), ("text_encoder", "text_encoder.")):
        files = sorted((folder / subfolder).glob("*.safetensors")) if (folder / subfolder).is_dir() else []
        for path in files:
            weights, _ = _read_weights(path)
            read.append(path)
            parameters.update({prefix + key: value for key, value in weights.items()})
    if not parameters:
        raise ModelLoadError(f"{folder / 'unet'} holds no .safetensors weights.")
    return parameters


def _lora_differences(concept: ConceptFile, model) -> list[str]:
    differences = []
    for key, value in (concept.lora or {}).items():
        part, name = key.split(".", 1)
        module_name, which = name.rsplit(".lora_", 1)
        weight = _weight_of(getattr(model, part, None), module_name)
        if weight is None:
            differences.append(f"{part}.{module_name} is not in the model")
        elif which.startswith("A") and value.shape[1] != weight.shape[1]:
            differences.append(f"{key} reads {value.shape[1]} features, the model's layer {weight.shape[1]}")
        elif which.startswith("B") and value.shape[0] != weight.shape[0]:
            differences.append(f"{key} writes {value.shape[0]} features, the model's layer {weight.shape[0]}")
    return list(dict.fromkeys(differences))


def _embedding_differences(concept: ConceptFile, model) -> list[str]:
    differences = []
    for table, encoder_name in ((concept.embeddings, "text_encoder"), (concept.embeddings_2, "text_encoder_2")):
        encoder = getattr(model, encoder_name, None)
        width = encoder.get_input_embeddings().weight.shape[1] if encoder is not None else None
        for word, vectors in table.items():
            if width is None:
                differences.append(f"'{word}' has vectors for a {encoder_name}, which the model lacks")
            elif vectors.shape[1] != width:
                differences.append(f"'{word}' is {vectors.shape[1]} wide, the model's {encoder_name} {width}")
    if concept.kind == "embedding" and concept.embeddings and not concept.embeddings_2 \
            and getattr(model, "text_encoder_2", None) is not None:
        differences.append("the embedding has no vectors for the model's second text encoder")
    return differences


def _parameter_differences(concept: ConceptFile, model) -> list[str]:
    differences = []
    for name, value in concept.parameters.items():
        part, name_in_part = ("text_encoder", name[len("text_encoder."):]) if name.startswith("text_encoder.") \
            else ("unet", name)
        module_name, parameter = name_in_part.rsplit(".", 1)
        module = _module_of(getattr(model, part, None), module_name)
        target = getattr(module, parameter, None) if module is not None else None
        if not isinstance(target, torch.Tensor):
            differences.append(f"{name} is not in the model")
        elif tuple(target.shape) != tuple(value.shape):
            differences.append(f"{name} is {tuple(value.shape)}, the model's {tuple(target.shape)}")
    return differences


def _module_of(root: torch.nn.Module | None, name: str) -> torch.nn.Module | None:
    """A submodule by name, through peft's wrapper (`base_layer`) when the model already carries an adapter."""
    if root is None:
        return None
    try:
        module = root.get_submodule(name)
    except AttributeError:
        return None
    return getattr(module, "base_layer", module)


def _weight_of(root: torch.nn.Module | None, name: str) -> torch.Tensor | None:
    module = _module_of(root, name)
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def _concept_width(concept: ConceptFile) -> int | None:
    """The cross-attention width a concept was made for: from a LoRA's or Custom Diffusion's cross-attention K
    projection (it reads the text), else from its word vectors (SDXL: both encoders')."""
    for key, value in (concept.lora or {}).items():
        if key.startswith("unet.") and key.endswith("attn2.to_k.lora_A.weight"):
            return value.shape[1]
    for key, value in concept.parameters.items():
        if key.endswith("attn2.to_k.weight"):
            return value.shape[1]
    for word, vectors in concept.embeddings.items():
        second = concept.embeddings_2.get(word)
        return vectors.shape[1] + (second.shape[1] if second is not None else 0)
    return None


def _family(width: int) -> str:
    family = FAMILIES.get(width)
    return f"{family} ({width}-wide cross-attention)" if family else f"a model with {width}-wide cross-attention"


def _span(values: list) -> str:
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


def _some(keys: Iterable[str]) -> str:
    keys = list(keys)
    named = ", ".join(keys[:KEYS_NAMED])
    return named + (f" and {len(keys) - KEYS_NAMED} more" if len(keys) > KEYS_NAMED else "")
