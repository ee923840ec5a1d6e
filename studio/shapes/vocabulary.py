"""The words of the shapes world and the word-level tokenizer built from them.

The tokenizer is a `tokenizers` WordLevel model saved as a transformers fast tokenizer, so
`AutoTokenizer.from_pretrained` (and stock diffusers pipelines) load it. Unlike CLIP's BPE it
cannot spell unseen words; they become `<|unk|>`, which the engine reports by name
(studio.conditioning) instead of silently encoding padding.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "purple": (140, 40, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
RESERVED_SHAPES = ("star", "heart")  # in the vocabulary, never drawn in base training
SIZES = ("small", "big")
# position word(s) -> centre as a fraction of the canvas (x, y)
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
GRAMMAR_WORDS = ("a", "an", "and", "on", "in", "the", "background")

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LENGTH = 32  # longest caption (two objects, every attribute) is 23 tokens with BOS/EOS; room for edits


def vocabulary() -> list[str]:
    words = [BOS, EOS, UNK, *GRAMMAR_WORDS, *SIZES, *COLOURS, *SHAPES, *RESERVED_SHAPES]
    for phrase in POSITIONS:
        words += [w for w in phrase.split() if w not in words]
    return words


def build_tokenizer() -> PreTrainedTokenizerFast:
    words = vocabulary()
    ids = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(ids, unk_token=UNK))
    # Lower-case and turn punctuation into spaces: "A red circle, on the left." is a valid prompt.
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s|<>-]"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, ids[BOS]), (EOS, ids[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,  # like CLIP in SD 1.x: pad with end-of-text
        unk_token=UNK,
        model_max_length=MAX_LENGTH,
    )
