"""Protects: prompts become padded token ids with each word's token positions (the token picker's labels)."""

from __future__ import annotations

from studio.conditioning import tokenize


def test_prompt_words_map_to_token_positions_and_back(tiny_engine):
    tokens = tokenize(tiny_engine.model.tokenizer, "A big red circle, on the left.")
    assert tokens.words == ["A", "big", "red", "circle", "on", "the", "left"]
    assert tokens.word_tokens == [[1], [2], [3], [4], [5], [6], [7]]  # position 0 is the start token
    assert [tokens.word_of_token(p) for p in (0, 1, 4, 8)] == [None, 0, 3, None]
    assert len(tokens.ids) == tiny_engine.model.tokenizer.model_max_length  # padded like the pipeline
