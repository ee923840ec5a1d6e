"""Prompt -> token ids -> text embeddings, and the map between prompt words and token positions.

Prompts are checked before any model work: words the tokenizer cannot represent (the shapes
model's word-level tokenizer maps them to <|unk|>, or drops an emoji without a token) raise UnknownWordError
naming them; prompts longer than the text encoder reads, or longer than specs.MAX_PROMPT_CHARS before any
tokenizing, and prompts of punctuation only raise InvalidInputError -- never silently truncated or emptied.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from studio.errors import InvalidInputError, UnknownWordError
from studio.specs import MAX_PROMPT_CHARS, check_text

if TYPE_CHECKING:  # a type only: conditioning does not import the structure runtime
    from studio.structure.runtime import ControlInput

WORD = re.compile(r"\S+")
PUNCTUATION = ".,;:!?\"'()[]{}"


@dataclass(frozen=True)
class Tokens:
    """A prompt as the text encoder reads it, padded to the tokenizer's max length."""

    ids: list[int]  # (T,) with start, end and padding tokens
    attention_mask: list[int]  # (T,) 1 for prompt tokens, 0 for padding
    words: list[str]  # the prompt's words that produced tokens, in order
    word_tokens: list[list[int]]  # for each word, its token positions in `ids`
    # SDXL's second tokenizer: the same tokens, padded with its own pad token; None for one-encoder models
    ids_2: list[int] | None = None

    def word_of_token(self, position: int) -> int | None:
        """Index into `words` of the word that produced token `position`; None for special tokens."""
        return next((w for w, positions in enumerate(self.word_tokens) if position in positions), None)


@dataclass(frozen=True)
class Cond:
    """One text condition for the denoiser (guiders hold the weights that mix several)."""

    embeddings: torch.Tensor  # (1, T, D) text encoder's last hidden state (SDXL: both encoders', concatenated)
    tokens: Tokens
    pooled: torch.Tensor | None = None  # (1, P) SDXL's pooled text embedding (added conditioning); else None
    # Structure channels (studio.structure.runtime attaches them per step): control maps for ControlNets and
    # T2I-Adapters, and the IP-Adapter image embedding with its lambda (Ye et al. 2023 eq. 5) for this condition.
    controls: tuple[ControlInput, ...] = ()
    image_embeds: torch.Tensor | None = None  # (1, E) image encoder embedding; zeros = the null image
    image_scale: float = 0.0  # lambda; 0: this condition's image attention adds nothing

    @property
    def words(self) -> list[str]:
        return self.tokens.words


def tokenize(tokenizer: PreTrainedTokenizerBase, prompt: str, model_name: str = "this model",
             tokenizer_2: PreTrainedTokenizerBase | None = None, expansions: Mapping[str, str] | None = None) -> Tokens:
    """Token ids for `prompt` padded like StableDiffusionPipeline does, with each word's positions
    (and SDXL's second tokenizer's ids when `tokenizer_2` is given). `expansions` spell a word as several tokens
    (a multi-vector embedding's "<w>" as "<w> <w>_1 <w>_2", as diffusers' maybe_convert_prompt does): the word
    keeps its one place in `words`, with all its tokens' positions."""
    check_text("The prompt", prompt, MAX_PROMPT_CHARS)
    max_length = tokenizer.model_max_length
    words = [match.span() for match in WORD.finditer(prompt)]
    if words and all(_punctuation_only(prompt[lo:hi]) for lo, hi in words):
        raise InvalidInputError(f"The prompt {prompt.strip()[:40]!r} is only punctuation: describe the image in words.")
    text, spans = _expanded(prompt, words, expansions or {})
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    if len(encoded.input_ids) > max_length:
        raise InvalidInputError(
            f"The prompt is {len(encoded.input_ids)} tokens long but {model_name} reads at most {max_length} "
            "(start and end tokens included): shorten it."
        )
    word_tokens: dict[int, list[int]] = {}
    unknown: list[str] = []
    for position, (token_id, special, (start, _)) in enumerate(
        zip(encoded.input_ids, encoded.special_tokens_mask, encoded.offset_mapping)
    ):
        if special:
            continue
        word_index = next((i for i, (lo, hi) in enumerate(spans) if lo <= start < hi), None)
        if word_index is None:  # no prompt word produced this token (not seen in practice): no label
            continue
        word_tokens.setdefault(word_index, []).append(position)
        # CLIP's BPE never needs <unk> for text; a word-level vocabulary does for unseen words.
        if tokenizer.unk_token_id is not None and token_id == tokenizer.unk_token_id:
            unknown.append(_word_text(prompt, words[word_index]))
    # a word-level vocabulary's pre-tokenizer drops what it has no token for (an emoji): unknown too, not ignored
    unknown += [prompt[lo:hi] for index, (lo, hi) in enumerate(words)
                if index not in word_tokens and not _punctuation_only(prompt[lo:hi])]
    if unknown:
        raise UnknownWordError(list(dict.fromkeys(unknown)), model_name)
    padded = tokenizer(text, padding="max_length", max_length=max_length, truncation=True)
    ordered = sorted(word_tokens)
    ids_2 = None
    if tokenizer_2 is not None:
        ids_2 = tokenizer_2(text, padding="max_length", max_length=tokenizer_2.model_max_length, truncation=True).input_ids
    return Tokens(
        ids=padded.input_ids,
        attention_mask=padded.attention_mask,
        words=[_word_text(prompt, words[i]) for i in ordered],
        word_tokens=[word_tokens[i] for i in ordered],
        ids_2=ids_2,
    )


def _punctuation_only(text: str) -> bool:
    """Whether a word is punctuation alone (",", "...", "--"): no letter, digit or symbol a model could read."""
    return all(unicodedata.category(character).startswith("P") for character in text)


def _expanded(prompt: str, spans: list[tuple[int, int]], expansions: Mapping[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """`prompt` with each word of `expansions` spelled out, and every word's span in that text."""
    if not expansions:
        return prompt, spans
    pieces: list[str] = []
    moved: list[tuple[int, int]] = []
    end = 0
    for lo, hi in spans:
        pieces.append(prompt[end:lo])
        start = sum(map(len, pieces))
        word = prompt[lo:hi]
        core = _word_text(prompt, (lo, hi))
        pieces.append(word.replace(core, expansions[core], 1) if core in expansions else word)
        moved.append((start, start + len(pieces[-1])))
        end = hi
    pieces.append(prompt[end:])
    return "".join(pieces), moved


def prompt_words(prompt: str) -> list[str]:
    """The prompt's words as `tokenize` names them (whitespace-separated, outer punctuation stripped)."""
    return [_word_text(prompt, match.span()) for match in WORD.finditer(prompt)]


def _word_text(prompt: str, span: tuple[int, int]) -> str:
    text = prompt[span[0] : span[1]]
    return text.strip(PUNCTUATION) or text


@torch.no_grad()
def encode(text_encoder: CLIPTextModel, tokens: Tokens, text_encoder_2: nn.Module | None = None) -> Cond:
    """Embed tokens exactly as StableDiffusionPipeline.encode_prompt does (no clip skip, no LoRA); with
    SDXL's `text_encoder_2`, as StableDiffusionXLPipeline does: both encoders' penultimate hidden states
    side by side, and the second encoder's pooled, projected embedding."""
    if text_encoder_2 is not None:
        return _encode_sdxl(text_encoder, text_encoder_2, tokens)
    device = text_encoder.device
    ids = torch.tensor([tokens.ids], device=device)
    # SD 1.x/2.x text encoders attend to padding; a few models ask for a mask in their config.
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = torch.tensor([tokens.attention_mask], device=device)
    embeddings = text_encoder(ids, attention_mask=attention_mask)[0]
    return Cond(embeddings=embeddings.to(dtype=text_encoder.dtype), tokens=tokens)


def _encode_sdxl(text_encoder: CLIPTextModel, text_encoder_2: nn.Module, tokens: Tokens) -> Cond:
    hidden = []
    for encoder, ids in ((text_encoder, tokens.ids), (text_encoder_2, tokens.ids_2)):
        output = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])  # SDXL reads the penultimate layer of both
    pooled = output.text_embeds  # (1, P) from the second encoder's projection
    embeddings = torch.cat(hidden, dim=-1)  # (1, T, D1 + D2)
    return Cond(embeddings=embeddings.to(dtype=text_encoder_2.dtype), tokens=tokens, pooled=pooled)


def zeroed(cond: Cond) -> Cond:
    """The all-zero unconditional embedding SDXL uses for an empty negative prompt
    (its pipeline's `force_zeros_for_empty_prompt`)."""
    pooled = None if cond.pooled is None else torch.zeros_like(cond.pooled)
    return Cond(embeddings=torch.zeros_like(cond.embeddings), tokens=cond.tokens, pooled=pooled)
