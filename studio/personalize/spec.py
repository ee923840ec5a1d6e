"""What a personalization run is: the method, the concept word, the budget, and the checks on them (one place).

The defaults are each method's recipe for the embedded shapes model on a 2-core CPU, measured by bench/personalize.py
(bench/results/personalize.md: 8 rendered big pictures, "a red star on a blue background" over 8 seeds, the pixel
judge): the LoRA recipe adapts the ResNet convolutions (lora_layers "convolutions"), 500 steps at 5e-3, and draws a
judged star in 5 of 8 seeds after 32-50 s of training, where the base model draws none; on the attention projections
alone (Hu et al.'s form, the first recipe) the same budget gave 0 of 8 (red blobs), on both 1 of 8. Textual Inversion,
300 steps at 5e-2 (13 s), 0 of 8: an embedding alone does not make a UNet that never drew five points draw them. The
issue's goal (a star in under 3 minutes) is met by LoRA, not by Textual Inversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from studio.errors import InvalidInputError
from studio.shapes.vocabulary import BOS, EOS, RESERVED_SHAPES, UNK, vocabulary
from studio.specs import MAX_WORD_CHARS, Range, check_ranges, check_text

METHODS = ("textual-inversion", "lora", "dreambooth", "custom-diffusion")
# the UNet layers a LoRA adapts (studio.personalize.methods.UNET_LORA_TARGETS): Hu et al.'s attention projections, the
# ResNet blocks' 3x3 convolutions (kohya's conv_dim / LoCon), or both
LORA_LAYERS = ("attention", "convolutions", "attention+convolutions")
MIN_IMAGES, MAX_IMAGES = 3, 10

RANGES: dict[str, Range] = {
    "steps": Range(1, 5000, 1, "Steps"),
    "learning_rate": Range(1e-6, 1e-1, 1e-6, "Learning rate"),
    "rank": Range(1, 128, 1, "LoRA rank"),
    "prior_weight": Range(0.0, 10.0, 0.1, "Prior weight"),
    "class_images": Range(1, 200, 1, "Class images"),
    "batch_size": Range(1, 32, 1, "Batch size"),
    "sample_every": Range(0, 5000, 1, "Sample every"),
    "checkpoint_every": Range(1, 5000, 1, "Checkpoint every"),
    "gradient_accumulation": Range(1, 64, 1, "Gradient accumulation"),
    "seed": Range(0, 2**32 - 1, 1, "Seed"),
}

# Each method's recipe on the embedded model (2 CPU cores; see the module docstring); what differs from the defaults below.
RECIPES: dict[str, dict[str, Any]] = {
    "textual-inversion": {"steps": 300, "learning_rate": 5e-2},
    "lora": {"steps": 500, "learning_rate": 5e-3, "rank": 8, "lora_layers": "convolutions"},
    "dreambooth": {"steps": 150, "learning_rate": 2e-4},
    "custom-diffusion": {"steps": 200, "learning_rate": 2e-3, "second_concept": "heart"},
}


@dataclass(frozen=True)
class PersonalizeSpec:
    """One run. `concept` is the word that will mean the new thing; `class_word` the word of what it resembles
    (its embedding initialises a new word's row, and DreamBooth's class prompts use it). Custom Diffusion trains
    `second_concept` (images passed beside the first concept's) jointly with `concept` (Kumari et al. 2023, 3.2)."""

    method: str = "textual-inversion"
    concept: str = "star"
    class_word: str = "circle"
    steps: int = 300
    learning_rate: float = 5e-2  # the defaults are Textual Inversion's recipe
    rank: int = 8  # LoRA's r; lora_alpha = r, so the update's scale alpha/r is 1 (Hu et al. 2021, eq. 3)
    lora_layers: str = "attention"  # LoRA: one of LORA_LAYERS
    train_text_encoder: bool = False  # LoRA: also the text encoder's attention projections
    prior_preservation: bool = True  # DreamBooth: Ruiz et al. 2023, eq. 2
    prior_weight: float = 1.0  # lambda of the class-prior loss
    class_images: int = 8  # DreamBooth: class images the model draws itself, once per run
    batch_size: int = 4
    gradient_accumulation: int = 1
    sample_every: int = 50  # steps between preview samples (0: none)
    checkpoint_every: int = 100  # steps between concept files written
    seed: int = 0
    second_concept: str | None = None
    second_class_word: str | None = None  # default: class_word
    mixed_precision: str = "no"  # accelerate's: no, fp16, bf16

    @classmethod
    def recipe(cls, method: str, **overrides: Any) -> PersonalizeSpec:
        """The spec of `method`'s recipe (RECIPES), with `overrides`."""
        if method not in METHODS:
            raise InvalidInputError(f"Unknown personalization method {method!r}; one of {', '.join(METHODS)}.")
        return cls(method=method, **{**RECIPES[method], **overrides})

    @property
    def words(self) -> tuple[str, ...]:
        return (self.concept,) if self.second_concept is None else (self.concept, self.second_concept)

    @property
    def class_words(self) -> tuple[str, ...]:
        return (self.class_word,) if self.second_concept is None else (self.class_word, self.second_class_word or self.class_word)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"Unknown personalization method {self.method!r}; one of {', '.join(METHODS)}.")
        check_ranges(self, RANGES)
        if self.lora_layers not in LORA_LAYERS:
            raise InvalidInputError(f"LoRA layers must be one of {', '.join(LORA_LAYERS)}, got {self.lora_layers!r}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InvalidInputError(f"Mixed precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        if self.second_concept is not None and self.method != "custom-diffusion":
            raise InvalidInputError("Two concepts at once train with custom-diffusion only; leave the second concept empty.")
        if self.second_concept is not None and self.second_concept == self.concept:
            raise InvalidInputError(f"The two concepts must be different words, both are {self.concept!r}.")
        for label, word in (("The concept word", self.concept), ("The second concept word", self.second_concept),
                            ("The class word", self.class_word), ("The second class word", self.second_class_word)):
            if word is not None:
                check_text(label, word, MAX_WORD_CHARS)  # before it is echoed in a message or tokenized
        for word in self.words:
            if not word or word != word.strip() or " " in word:
                raise InvalidInputError(f"A concept word is one word without spaces, got {word!r}.")


def drawn_words(tokenizer: PreTrainedTokenizerBase) -> frozenset[str]:
    """The words a shapes-world model already draws (its vocabulary less the reserved shapes and special tokens);
    empty for other models, whose vocabularies are open."""
    words = set(tokenizer.get_vocab())
    shapes_words = set(vocabulary())
    # the shapes tokenizer: its word-level vocabulary (plus any tokens concepts added), not an open BPE one
    if not shapes_words <= words or len(words) > 4 * len(shapes_words):
        return frozenset()
    return frozenset(shapes_words - set(RESERVED_SHAPES) - {BOS, EOS, UNK})


def check_concept_word(word: str, tokenizer: PreTrainedTokenizerBase, method: str) -> None:
    """The concept word rules: a word the model already draws is refused (training would change it in every
    prompt); Textual Inversion and Custom Diffusion need a row of their own, so on an open vocabulary the word
    must not be a token already."""
    if word.lower() in drawn_words(tokenizer):
        raise InvalidInputError(
            f"{word!r} is a word the model already draws: training would change it in every prompt; pick a new word "
            f"such as '<my-{word.lower()}>' or a reserved one: {', '.join(RESERVED_SHAPES)}."
        )
    if method in ("textual-inversion", "custom-diffusion") and not drawn_words(tokenizer) and word in tokenizer.get_vocab():
        raise InvalidInputError(
            f"{word!r} is already a token of this model's tokenizer; {method} learns a new token: pick a word it does "
            f"not have, such as '<{word}>'."
        )
