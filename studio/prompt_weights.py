"""Prompt weighting syntax users know from other Stable Diffusion front ends, as per-word weights.

    "a (red:1.5) circle"        red x 1.5
    "a (big red:0.5) circle"    big and red x 0.5
    "a (red) circle"            red x 1.1 (a bare parenthesis, the common default)
    "a (red:-1) circle"         negative weights are allowed (Hertz et al. 2022, "Attention Re-weighting")

A weight is a finite number within specs.WORD_WEIGHT (+-10), as P2P's re-weight table is: NaN, inf or 1e9 would
turn the attention softmax into NaN or saturate it, an all-black image reported as a success.

The weights become Prompt-to-Prompt's attention re-weighting (the column scale of the target's
cross-attention), not a change of the text embedding. Parentheses do not nest; anything else
unbalanced is refused with a message, never silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studio.conditioning import WORD, prompt_words
from studio.errors import InvalidInputError
from studio.specs import MAX_PROMPT_CHARS, WORD_WEIGHT, check_text

BARE_WEIGHT = 1.1  # "(word)" without a number, as in the common front ends
WEIGHTED = re.compile(r"\(([^()]*?)(?::\s*([^()]*))?\)")


@dataclass(frozen=True)
class WeightedPrompt:
    text: str  # the prompt with the syntax removed, as the tokenizer reads it
    word_weights: tuple[float, ...]  # one weight per whitespace-separated word of `text`

    def weights_of(self, words: list[str]) -> list[tuple[int, float]]:
        """(index into `words`, weight) for every weighted word, where `words` are the tokenized prompt's
        words (Tokens.words: the words of `text` that produced tokens, in order)."""
        spans = prompt_words(self.text)
        pairs, next_word = [], 0
        for span_text, weight in zip(spans, self.word_weights, strict=True):
            if next_word < len(words) and words[next_word] == span_text:
                if weight != 1.0:
                    pairs.append((next_word, weight))
                next_word += 1
        return pairs


def parse_weighted_prompt(prompt: str, label: str = "Prompt") -> WeightedPrompt:
    """Strip `(text:weight)` / `(text)` and return the plain prompt with a weight per word."""
    check_text(label, prompt, MAX_PROMPT_CHARS)  # before the regex scans it
    pieces: list[tuple[str, float]] = []
    position = 0
    for match in WEIGHTED.finditer(prompt):
        pieces.append((prompt[position : match.start()], 1.0))
        pieces.append((match.group(1), _weight(match.group(2), match.group(0), label)))
        position = match.end()
    pieces.append((prompt[position:], 1.0))
    text_parts, weights = [], []
    for text, weight in pieces:
        if "(" in text or ")" in text:
            raise InvalidInputError(
                f"{label}: unbalanced or nested parentheses in {prompt!r}; write a weight as (word:1.3)."
            )
        text_parts.append(text)
        weights += [weight] * len(WORD.findall(text))
    # joined pieces keep their spacing; a weighted group glued to a word ("a(red:2)") gets a space
    text = " ".join(part.strip() for part in text_parts if part.strip())
    return WeightedPrompt(text=text, word_weights=tuple(weights))


def _weight(number: str | None, group: str, label: str) -> float:
    if number is None:
        return BARE_WEIGHT
    try:
        weight = float(number)
    except ValueError:
        raise InvalidInputError(f"{label}: {group!r} has no number after the colon; write it as (word:1.3).") from None
    try:
        WORD_WEIGHT.check(group, weight)
    except InvalidInputError as error:
        raise InvalidInputError(f"{label}: the weight in {group!r}: {error}") from None
    return weight
