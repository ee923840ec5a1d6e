"""The four personalization methods, each as what it trains and what it saves; studio.personalize.training runs them.

- textual-inversion (Gal et al. 2022, eq. 2: v* = argmin_v E ||eps - eps_theta(z_t, t, c_theta(y))||^2): only the concept
  word's embedding row trains; every other row is put back after each optimiser step, as diffusers' reference
  script does (the optimiser's weight decay and momentum would otherwise move them).
- lora (Hu et al. 2021, eq. 3: h = W0 x + (alpha/r) B A x): peft LoRA layers on the UNet's attention projections
  (to_q, to_k, to_v, to_out.0), its ResNet blocks' 3x3 convolutions (conv1, conv2; a convolution's B A is a rank-r
  kxk convolution followed by a 1x1 one, as kohya's conv_dim / LoCon), or both (`lora_layers`; lora_alpha = r) via
  diffusers' `unet.add_adapter`, optionally on the text encoder's (q_proj, k_proj, v_proj, out_proj).
- dreambooth (Ruiz et al. 2023): the whole UNet fine-tunes; the class-prior loss (eq. 2) is the training loop's.
- custom-diffusion (Kumari et al. 2023, section 3.1): only the cross-attention K/V projections (attn2.to_k, attn2.to_v)
  and the modifier words' rows train; several words train jointly (section 3.2).
Words that need a row of their own (Textual Inversion, Custom Diffusion; or a word the tokenizer would read as
`<|unk|>`) get one, initialised from the class word's embedding; their rows are saved with every method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.utils.peft_utils import recurse_remove_peft_layers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from torch import nn

from studio.models import LoadedModel
from studio.personalize import files
from studio.personalize.spec import PersonalizeSpec

ATTENTION_TARGETS, CONVOLUTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0"), ("conv1", "conv2")
UNET_LORA_TARGETS = {"attention": ATTENTION_TARGETS, "convolutions": CONVOLUTION_TARGETS,
                     "attention+convolutions": ATTENTION_TARGETS + CONVOLUTION_TARGETS}  # spec.LORA_LAYERS
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
OWN_ROW_METHODS = ("textual-inversion", "custom-diffusion")


@dataclass
class TrainingParts:
    """Copies of the resident model's modules that a run trains (the engine's own are never touched), in float32."""

    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    vae: nn.Module  # the resident VAE itself: it only encodes and decodes, without gradients
    scheduler_config: dict
    token_ids: dict[str, list[int]] = field(default_factory=dict)  # concept word -> its embedding rows
    added_words: tuple[str, ...] = ()  # words given new rows (saved with every method)

    @property
    def embeddings(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def word_embeddings(self, words: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {word: self.embeddings.weight[self.token_ids[word]].detach().cpu() for word in words}


def copy_parts(model: LoadedModel, spec: PersonalizeSpec) -> TrainingParts:
    """Training copies of `model`'s UNet, text encoder and tokenizer with the spec's words given rows. A resident
    model with loaded LoRAs holds peft layers: the copies drop them, so training starts from the base weights."""
    unet, text_encoder = copy.deepcopy(model.unet).float(), copy.deepcopy(model.text_encoder).float()
    for module in (unet, text_encoder):
        if getattr(module, "peft_config", None):
            recurse_remove_peft_layers(module)
            del module.peft_config
        module.requires_grad_(False)
    parts = TrainingParts(unet, text_encoder, copy.deepcopy(model.tokenizer), model.vae, dict(model.scheduler_config))
    for word, class_word in zip(spec.words, spec.class_words):
        give_row(parts, word, class_word, own_row=spec.method in OWN_ROW_METHODS)
    return parts


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


@torch.no_grad()
def give_row(parts: TrainingParts, word: str, class_word: str, own_row: bool) -> None:
    """Record `word`'s rows; a word without a single token of its own gets a new token when `own_row` (or when the
    tokenizer reads it as unknown), and a word's own row starts as the class word's (mean) embedding."""
    tokenizer = parts.tokenizer
    ids = _ids(tokenizer, word)
    unknown = tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids
    if (own_row and len(ids) != 1) or unknown:
        tokenizer.add_tokens([word])
        parts.text_encoder.resize_token_embeddings(len(tokenizer))
        ids = _ids(tokenizer, word)
        parts.added_words += (word,)
    if own_row or unknown:
        class_rows = parts.embeddings.weight[_ids(tokenizer, class_word)]
        parts.embeddings.weight[ids] = class_rows.mean(0)
    parts.token_ids[word] = ids


@dataclass
class Trainee:
    """What a method trains: the modules holding trainable parameters (prepared by accelerate), the parameters, what
    runs after each optimiser step, and how its files are written."""

    modules: dict[str, nn.Module]
    parameters: list[nn.Parameter]
    save: Callable[[Path, int], list[Path]]  # (folder, step) -> files written
    after_step: Callable[[], None] = lambda: None


def _keep_other_rows(parts: TrainingParts, words: tuple[str, ...]) -> Callable[[], None]:
    """Put every embedding row but the words' back after an optimiser step (diffusers' textual_inversion.py)."""
    weight = parts.embeddings.weight
    original = weight.detach().clone()
    frozen = torch.ones(len(weight), dtype=torch.bool)
    for word in words:
        frozen[parts.token_ids[word]] = False

    @torch.no_grad()
    def restore() -> None:
        weight[frozen] = original[frozen].to(weight)

    return restore


def _train_rows(parts: TrainingParts, words: tuple[str, ...]) -> tuple[list[nn.Parameter], Callable[[], None]]:
    parts.embeddings.weight.requires_grad_(True)
    return [parts.embeddings.weight], _keep_other_rows(parts, words)


def _added_embeddings(parts: TrainingParts, folder: Path, step: int) -> list[Path]:
    return files.write_embeddings(folder, parts.word_embeddings(parts.added_words), step) if parts.added_words else []


def textual_inversion(parts: TrainingParts, spec: PersonalizeSpec) -> Trainee:
    parameters, restore = _train_rows(parts, spec.words)
    return Trainee({"text_encoder": parts.text_encoder}, parameters,
                   lambda folder, step: files.write_embeddings(folder, parts.word_embeddings(spec.words), step), restore)


def lora(parts: TrainingParts, spec: PersonalizeSpec) -> Trainee:
    config = dict(r=spec.rank, lora_alpha=spec.rank, init_lora_weights="gaussian")
    parts.unet.add_adapter(LoraConfig(**config, target_modules=list(UNET_LORA_TARGETS[spec.lora_layers])))
    modules = {"unet": parts.unet}
    if spec.train_text_encoder:
        # peft itself: transformers' add_adapter asks for a newer peft than diffusers does
        inject_adapter_in_model(LoraConfig(**config, target_modules=list(TEXT_ENCODER_LORA_TARGETS)), parts.text_encoder)
        modules["text_encoder"] = parts.text_encoder
    parameters = [p for module in modules.values() for p in module.parameters() if p.requires_grad]

    def save(folder: Path, step: int) -> list[Path]:
        text_lora = get_peft_model_state_dict(parts.text_encoder) if spec.train_text_encoder else None
        written = files.write_lora(folder, spec.concept, get_peft_model_state_dict(parts.unet), text_lora, alpha=spec.rank)
        return written + _added_embeddings(parts, folder, step)

    return Trainee(modules, parameters, save)


def dreambooth(parts: TrainingParts, spec: PersonalizeSpec) -> Trainee:
    parts.unet.requires_grad_(True)
    return Trainee({"unet": parts.unet}, list(parts.unet.parameters()),
                   lambda folder, step: files.write_dreambooth(folder, parts.unet) + _added_embeddings(parts, folder, step))


def cross_attention_kv(unet: nn.Module) -> dict[str, nn.Parameter]:
    """The cross-attention key/value projection weights by UNet parameter name (`...attn2.to_k.weight`)."""
    return {name: parameter for name, parameter in unet.named_parameters()
            if ".attn2.to_k." in name or ".attn2.to_v." in name}


def custom_diffusion(parts: TrainingParts, spec: PersonalizeSpec) -> Trainee:
    kv = cross_attention_kv(parts.unet)
    for parameter in kv.values():
        parameter.requires_grad_(True)
    rows, restore = _train_rows(parts, spec.words)

    def save(folder: Path, step: int) -> list[Path]:
        return files.write_custom_diffusion(folder, {name: p.detach().cpu() for name, p in kv.items()},
                                            parts.word_embeddings(spec.words))

    return Trainee({"unet": parts.unet, "text_encoder": parts.text_encoder}, [*kv.values(), *rows], save, restore)


METHOD_TRAINEES: dict[str, Callable[[TrainingParts, PersonalizeSpec], Trainee]] = {
    "textual-inversion": textual_inversion, "lora": lora, "dreambooth": dreambooth, "custom-diffusion": custom_diffusion,
}
