"""The Generate tab's pure pieces: form -> typed spec, heat-map overlay, word picker defaults."""

from __future__ import annotations

import numpy as np
import pytest

from studio.errors import InvalidInputError
from studio.ui import generate

FORM = dict(
    prompt="a red circle",
    negative_prompt=None,
    seed=42.0,
    random_seed=False,
    steps=10.0,
    guidance_scale=4.5,
    scheduler="euler",
    width=64.0,
    height=96.0,
    batch_size=2.0,
    show_attention=True,
)


def test_form_becomes_a_typed_spec():
    spec = generate.spec_from_form(**FORM)
    assert (spec.seed, spec.steps, spec.width, spec.height, spec.batch_size) == (42, 10, 64, 96, 2)
    assert all(isinstance(v, int) for v in (spec.seed, spec.steps, spec.width, spec.height, spec.batch_size))
    assert spec.negative_prompt == "" and spec.capture_attention and spec.scheduler == "euler"


def test_random_seed_leaves_the_seed_to_the_engine():
    assert generate.spec_from_form(**{**FORM, "random_seed": True, "seed": None}).seed is None


def test_missing_seed_without_random_is_an_input_error():
    with pytest.raises(InvalidInputError, match="Enter a seed"):
        generate.spec_from_form(**{**FORM, "seed": None})


def test_heatmap_overlay_upsamples_the_map_and_colours_the_hot_region():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[:, :4] = 1.0  # left half hot
    out = generate.heatmap_overlay(image, heat)
    assert out.shape == image.shape and out.dtype == np.uint8
    left, right = out[32, 4].astype(int), out[32, 60].astype(int)
    assert left[0] > left[2]  # hot: red over blue
    assert right[2] > right[0]  # cold: blue over red


def test_word_picker_starts_on_the_first_content_word_and_keeps_a_pick():
    state = {
        "tokens": ["a", "big", "red", "circle"],
        "maps": np.random.default_rng(0).random((4, 8, 8)).astype(np.float32),
        "image": np.zeros((64, 64, 3), np.uint8),
    }
    picker, overlay = generate.render_attention(state, None)
    assert picker["value"] == 1 and picker["choices"][3] == ("circle", 3)
    assert overlay.shape == (64, 64, 3)
    assert generate.render_attention(state, 3)[0]["value"] == 3
    assert generate.render_attention(None, 2)[1] is None
