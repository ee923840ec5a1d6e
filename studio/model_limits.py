"""What the resident model can draw, for the UI to show and warn about before a run.

    limits = engine.model_limits
    prompt_warnings(limits, "a big red star")   # ['"star" is in shapes-sd's vocabulary but ... never drawn ...']
    size_warning(limits, 256, 256)              # 'shapes-sd was trained at 128x128 px: at 256x256 ...'

Words a model cannot represent at all are refused by the tokenizer (studio.conditioning.tokenize raises
UnknownWordError); these are the softer limits: words it knows but was never trained to draw, and sizes
it was not trained at. Measured on the embedded model (DDIM 25 steps, guidance 5, seed 0, four one-object
prompts x 2 images, studio.shapes.judge): at 128 px 8 of 8 images show the one object asked for; at 192 px
6 of 8 draw it twice; at 256 px 7 of 8 draw it two or three times, and squares turn into triangles.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerBase

from studio.conditioning import prompt_words
from studio.shapes.vocabulary import RESERVED_SHAPES, vocabulary

CARD_NAME = "README.md"  # a model folder's model card, as on the Hugging Face hub
NEVER_DRAWN = "in the vocabulary, never drawn in base training"
# why shapes-sd's reserved shapes are in its vocabulary (its model card): for personalization to teach them
RESERVED_FOR = "reserved for personalization"


@dataclass(frozen=True)
class ModelLimits:
    """The limits of one model, as the UI shows them (studio.engine.Engine.model_limits)."""

    model_name: str
    native_size: int  # pixels per side the UNet was built for (sample_size x size_multiple)
    size_multiple: int  # pixels per latent cell: width and height must be multiples of it
    trained_sizes: tuple[tuple[int, int], ...]  # (width, height) it was trained at
    max_prompt_tokens: int  # tokens the text encoder reads, start and end tokens included
    # every word a word-level tokenizer knows; None: no word limit (CLIP's BPE spells any word)
    vocabulary: tuple[str, ...] | None = None
    reserved_words: dict[str, str] = field(default_factory=dict)  # known words never drawn in training -> why kept
    card_path: Path | None = None  # the model folder's README.md, when it has one
    card_text: str | None = None  # its text without the YAML front matter


def model_limits(model_name: str, tokenizer: PreTrainedTokenizerBase, native_size: int, size_multiple: int,
                 folder: Path | None = None) -> ModelLimits:
    """The limits of a model from its tokenizer, sizes and folder (None: no local folder, e.g. a single file)."""
    words = _word_level_vocabulary(tokenizer)
    reserved = {}
    if words is not None and set(words) == set(_shapes_words()):  # trained in the shapes world (studio.shapes)
        reserved = {word: RESERVED_FOR for word in RESERVED_SHAPES}
    card = folder / CARD_NAME if folder is not None and (folder / CARD_NAME).is_file() else None
    return ModelLimits(
        model_name=model_name,
        native_size=native_size,
        size_multiple=size_multiple,
        trained_sizes=((native_size, native_size),),
        max_prompt_tokens=tokenizer.model_max_length,
        vocabulary=words,
        reserved_words=reserved,
        card_path=card,
        card_text=_without_front_matter(card.read_text(encoding="utf-8")) if card is not None else None,
    )


def prompt_warnings(limits: ModelLimits, prompt: str, taught: Collection[str] = ()) -> list[str]:
    """Plain-words warnings for the words of `prompt` the model knows but was never trained to draw, once each;
    `taught`: the words a concept the job uses teaches it (a trained star is no warning).
    Give the prompt as the tokenizer reads it (after any (word:1.3) weight syntax is taken out).
    (shapes-sd draws "a big red star on a blue background" as a red square in 4 of 4 seeds.)"""
    return [
        f'"{word}" is in {limits.model_name}\'s vocabulary but was never drawn in its training '
        f"({limits.reserved_words[word]}): expect another shape or none."
        for word in dict.fromkeys(word.lower() for word in prompt_words(prompt))
        if word in limits.reserved_words and word not in taught
    ]


def size_warning(limits: ModelLimits, width: int, height: int) -> str | None:
    """What to expect at width x height when the model was not trained at that size; None at a trained size."""
    if (width, height) in limits.trained_sizes:
        return None
    trained = " or ".join(f"{w}x{h}" for w, h in limits.trained_sizes)
    if width > limits.native_size or height > limits.native_size:
        outcome = "it tends to draw objects twice or more and to bend their shapes"
    else:
        outcome = "objects may not form, and small ones may vanish"
    return (f"{limits.model_name} was trained at {trained} px: at {width}x{height} {outcome}. "
            f"Use {trained} for images that follow the prompt.")


def vocabulary_text(limits: ModelLimits) -> str:
    """One short paragraph for the UI: the native size and the words the model knows."""
    size = (f"{limits.model_name} draws {limits.native_size}x{limits.native_size} px images "
            f"(sizes are multiples of {limits.size_multiple}).")
    if limits.vocabulary is None:
        return f"{size} Prompts may use any words, up to {limits.max_prompt_tokens} tokens."
    drawn = [word for word in limits.vocabulary if word not in limits.reserved_words]
    text = f"{size} The only words it knows: {', '.join(drawn)}."
    if limits.reserved_words:
        text += f" Also {', '.join(limits.reserved_words)}: {NEVER_DRAWN}."
    return f"{text} Any other word is refused."


def _word_level_vocabulary(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...] | None:
    """The words of a word-level tokenizer (special tokens left out) in id order; None for subword tokenizers,
    which can spell any word."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, WordLevel):
        return None
    special = set(tokenizer.all_special_tokens)
    ordered = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return tuple(word for word, _ in ordered if word not in special)


def _shapes_words() -> list[str]:
    return [word for word in vocabulary() if not word.startswith("<|")]


def _without_front_matter(text: str) -> str:
    """A model card's text without its leading `---` YAML block (the hub's metadata, not for reading)."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[end + len("\n---"):].lstrip("\n")
    return text
