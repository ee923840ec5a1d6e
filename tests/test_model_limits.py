"""Protects: the model's limits the UI shows — native size, the embedded model's vocabulary with its reserved
shapes flagged, no word limit for a CLIP tokenizer, the model card — and the warnings for reserved words and
sizes the model was not trained at (unknown words stay refused by the tokenizer)."""

from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from studio.architectures import CLIP_TOKENIZER_DIR
from studio.errors import UnknownWordError
from studio.model_limits import model_limits, prompt_warnings, size_warning, vocabulary_text
from studio.models import EMBEDDED_MODEL_DIR
from studio.shapes.vocabulary import RESERVED_SHAPES, build_tokenizer


@pytest.fixture(scope="module")
def shapes_limits():
    return model_limits("shapes-sd", build_tokenizer(), 128, 8, EMBEDDED_MODEL_DIR)


def test_the_embedded_model_shows_its_vocabulary_with_the_reserved_shapes_flagged(shapes_limits):
    assert (shapes_limits.native_size, shapes_limits.size_multiple) == (128, 8)
    assert shapes_limits.trained_sizes == ((128, 128),)
    assert {"red", "circle", "background", "left"} <= set(shapes_limits.vocabulary)
    assert "<|unk|>" not in shapes_limits.vocabulary and "at" not in shapes_limits.vocabulary
    assert set(shapes_limits.reserved_words) == set(RESERVED_SHAPES) == {"star", "heart"}
    text = vocabulary_text(shapes_limits)
    assert "128x128" in text and "circle" in text and "star, heart: in the vocabulary, never drawn" in text


def test_the_model_card_is_the_folders_readme_without_its_metadata(shapes_limits):
    assert shapes_limits.card_path == EMBEDDED_MODEL_DIR / "README.md"
    assert shapes_limits.card_text.startswith("# shapes-sd") and "license: mit" not in shapes_limits.card_text
    assert model_limits("other", build_tokenizer(), 128, 8, None).card_path is None


def test_a_clip_tokenizer_has_no_word_limit_and_nothing_reserved():
    limits = model_limits("sd15", CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, model_max_length=77), 512, 8)
    assert limits.vocabulary is None and limits.reserved_words == {} and limits.max_prompt_tokens == 77
    assert prompt_warnings(limits, "a star in the night sky") == []
    assert "any words" in vocabulary_text(limits)


def test_reserved_words_are_warned_about_once_in_plain_words(shapes_limits):
    warnings = prompt_warnings(shapes_limits, "A big red Star, and a star; and a heart.")
    assert len(warnings) == 2 and warnings[0].startswith('"star" is in shapes-sd') and '"heart"' in warnings[1]
    assert "never drawn" in warnings[0]
    assert prompt_warnings(shapes_limits, "a big red circle on a blue background") == []


def test_unknown_words_stay_refused_by_the_tokenizer(engine):
    with pytest.raises(UnknownWordError, match="'at'"):
        engine.tokenize("a red circle at the top")
    assert engine.model_limits.reserved_words.keys() == {"star", "heart"}  # the engine's own limits


def test_sizes_off_the_trained_one_are_warned_about(shapes_limits):
    assert size_warning(shapes_limits, 128, 128) is None
    larger = size_warning(shapes_limits, 256, 256)
    assert "trained at 128x128" in larger and "twice or more" in larger and "256x256" in larger
    assert "may not form" in size_warning(shapes_limits, 64, 64)
    assert "twice or more" in size_warning(shapes_limits, 128, 192)
