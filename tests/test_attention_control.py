"""Protects: Prompt-to-Prompt's alignment (swap, refine, reorder, different token lengths), the fused
map Ã = A_s R diag(s) + A_t diag(u) computed through SDPA with changed values equals the map
materialised and applied by hand, windows and re-weights land on the right columns, the (word:1.3)
syntax, and the P2P job's plumbing on the tiny model (processors restored, maps and masks streamed,
clear errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from studio.attention.controllers import (
    DegreeWord,
    PromptToPromptController,
    WordWindow,
    blend_latents,
    column_mapper,
    edit_plan,
    local_blend_mask,
    refine_alignment,
    swap_alignment,
)
from studio.conditioning import Tokens
from studio.editing.p2p import P2PSpec
from studio.errors import CancelledError, InvalidInputError, UnknownWordError
from studio.events import CancelToken, EditAttentionMaps, Mask, P2PResult, Progress
from studio.prompt_weights import parse_weighted_prompt


def tokens(word_lengths: list[int], words: list[str], length: int = 12) -> Tokens:
    """Tokens with a start token, each word taking `word_lengths[k]` positions, then end and padding."""
    positions, cursor = [], 1
    for n in word_lengths:
        positions.append(list(range(cursor, cursor + n)))
        cursor += n
    return Tokens(ids=list(range(length)), attention_mask=[1] * length, words=words, word_tokens=positions)


def test_refine_aligns_insertions_deletions_and_moved_words():
    assert refine_alignment(["a", "dog"], ["a", "brown", "dog"]) == [0, None, 1]
    assert refine_alignment(["a", "brown", "dog"], ["a", "dog"]) == [0, 2]
    assert refine_alignment(["a", "red", "big", "dog"], ["a", "big", "red", "dog"]) == [0, 2, 1, 3]


def test_swap_needs_the_same_word_count():
    assert swap_alignment(["a", "cat"], ["a", "dog"]) == [0, 1]
    with pytest.raises(InvalidInputError, match="refine"):
        swap_alignment(["a", "cat"], ["a", "big", "dog"])


def test_swap_of_words_with_different_token_counts_keeps_attention_mass():
    source = tokens([1, 1, 1], ["a", "cat", "sits"])  # cat: 1 token
    target = tokens([1, 2, 1], ["a", "tiger", "sits"])  # tiger: 2 tokens
    mapper, from_source = column_mapper(source, target, swap_alignment(source.words, target.words))
    assert torch.equal(mapper[:, 2], torch.eye(12)[:, 2] * 0.5) and torch.equal(mapper[:, 3], mapper[:, 2])
    assert mapper[3, 4] == 1  # "sits" follows, one position later in the target
    assert mapper[:, 2:4].sum() == 1  # cat's column shared by tiger's two tokens
    assert mapper[4, 5] == 1 and mapper[5, 6] == 1  # end token and padding map in order
    assert bool(from_source.all())


def test_new_words_keep_the_targets_own_attention():
    source = tokens([1, 1], ["a", "dog"])
    target = tokens([1, 1, 1], ["a", "brown", "dog"])
    _, from_source = column_mapper(source, target, refine_alignment(source.words, target.words))
    assert from_source[2] == 0 and from_source[1] == 1 and from_source[3] == 1


def test_windows_reweights_and_degree_words_are_per_step_column_weights():
    source = tokens([1, 1, 1], ["a", "cute", "dog"])
    target = tokens([1, 1, 1, 1], ["a", "very", "cute", "dog"])
    equalizer = torch.ones(12)
    equalizer[4] = -1.0  # "dog" negative
    plan = edit_plan(source, target, refine_alignment(source.words, target.words), steps=5, cross_window=(0.0, 0.5),
                     self_window=(0.0, 0.25), word_windows=[WordWindow("dog", 0.0, 1.0)], equalizer=equalizer,
                     degree_words=[DegreeWord("very", "cute", boost=0.5, eta=0.4)])
    # steps 0..2 inside the cross window (progress 0, .25, .5), 3..4 outside, except "dog" always
    assert plan.source_weights[:3, 1].tolist() == [1, 1, 1] and plan.source_weights[3:, 1].tolist() == [0, 0]
    assert plan.target_weights[3:, 1].tolist() == [1, 1]
    assert plan.source_weights[:, 4].tolist() == [-1] * 5
    assert plan.mapper[2, 2] == 1 and plan.mapper[2, 3] == 1  # "very" takes cute's source column
    assert plan.source_weights[0, 2] == pytest.approx(0.4) and plan.source_weights[0, 3] == pytest.approx(1.5)
    assert plan.self_replace.tolist() == [True, True, False, False, False]


def test_fused_attention_through_values_equals_the_materialised_map():
    torch.manual_seed(0)
    heads, n, length, dim = 2, 16, 12, 8
    query = torch.randn(4, heads, n, dim)
    key = torch.randn(4, heads, length, dim)
    value = torch.randn(4, heads, length, dim)
    source, target = tokens([1, 2, 1], ["a", "big", "dog"]), tokens([1, 1, 1, 1], ["a", "big", "brown", "dog"])
    plan = edit_plan(source, target, [0, None, None, 2], steps=2, cross_window=(0.0, 1.0), self_window=(0.0, 0.0),
                     equalizer=torch.linspace(0.5, 2.0, 12), style_alpha=0.3)
    controller = PromptToPromptController(plan, source_index=2, target_index=3, latent_size=(4, 4))
    controller.begin_step(0, torch.tensor(999))
    layer = torch.nn.Module()
    layer.scale = dim**-0.5
    output = controller._cross(layer, query, key, value)
    probabilities = (query @ key.transpose(-1, -2) * layer.scale).softmax(-1)  # (4, H, N, T)
    fused = probabilities[2] @ (plan.mapper * plan.source_weights[0]) + probabilities[3] * plan.target_weights[0]
    torch.testing.assert_close(output[3], fused @ value[3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output[:3], F.scaled_dot_product_attention(query, key, value)[:3])
    assert controller.step_maps(torch.ones(2, 12)).shape == (2, 4, 4)
    source_means, target_means = controller.means()  # the maps shown: head means of the source's map and the fused one
    torch.testing.assert_close(source_means[(4, 4)], probabilities[2].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target_means[(4, 4)], fused.mean(0), atol=1e-5, rtol=1e-5)


def test_steps_outside_the_edit_windows_attend_as_usual():
    torch.manual_seed(0)
    query, key, value = torch.randn(4, 2, 16, 8), torch.randn(4, 2, 12, 8), torch.randn(4, 2, 12, 8)
    source, target = tokens([1, 2, 1], ["a", "big", "dog"]), tokens([1, 3, 1], ["a", "big", "cat"])
    plan = edit_plan(source, target, [0, 1, None], steps=4, cross_window=(0.0, 0.4), self_window=(0.0, 0.0))
    controller = PromptToPromptController(plan, source_index=2, target_index=3, latent_size=(4, 4))
    layer = torch.nn.Module()
    layer.scale = 8**-0.5
    plain = F.scaled_dot_product_attention(query, key, value)
    controller.begin_step(0, torch.tensor(999))
    assert not torch.allclose(controller._cross(layer, query, key, value)[3], plain[3])  # edited in the window
    controller.begin_step(3, torch.tensor(9))
    torch.testing.assert_close(controller._cross(layer, query, key, value), plain)


def test_local_blend_keeps_the_source_outside_the_mask():
    maps = torch.zeros(2, 8, 8)
    maps[0, 2, 2] = 1.0
    maps[1, 5, 5] = 2.0
    soft, binary = local_blend_mask(maps, threshold=0.5)
    assert binary[1:4, 1:4].all() and binary[4:7, 4:7].all() and binary.sum() == 18  # both places, dilated
    x = torch.randn(2, 4, 8, 8)
    blended = blend_latents(x, binary)
    assert torch.equal(blended[1][:, ~binary], x[0][:, ~binary]) and torch.equal(blended[1][:, binary], x[1][:, binary])
    assert torch.equal(blended[0], x[0])


def test_weight_syntax_maps_words_to_weights():
    weighted = parse_weighted_prompt("a (big red:0.5) (circle) on a (blue:-1) background")
    assert weighted.text == "a big red circle on a blue background"
    pairs = weighted.weights_of(["a", "big", "red", "circle", "on", "a", "blue", "background"])
    assert pairs == [(1, 0.5), (2, 0.5), (3, 1.1), (6, -1.0)]
    for bad in ("a (red circle", "a (red:x) circle", "a ((red:2)) circle"):
        with pytest.raises(InvalidInputError):
            parse_weighted_prompt(bad, "Target prompt")


# ---------------------------------------------------------------------------------------------
# The job on the tiny random model: plumbing only

SOURCE = "a big red circle on a blue background"


def run(engine, **changes):
    spec = P2PSpec(**{"source_prompt": SOURCE, "target_prompt": "a big red square on a blue background",
                      "edit": "word swap", "seed": 1, "steps": 4, "maps_every": 2, **changes})
    return list(engine.p2p(spec))


def test_p2p_streams_both_maps_and_the_blend_mask_and_restores_processors(tiny_engine):
    before = dict(tiny_engine.model.unet.attn_processors)
    events = run(tiny_engine, blend_words=("circle", "square"), blend_start=0.0)
    assert tiny_engine.model.unet.attn_processors == before
    maps = [e for e in events if isinstance(e, EditAttentionMaps)]
    assert [m.step for m in maps] == [2, 4]
    assert maps[-1].source.tokens == SOURCE.split() and maps[-1].target.tokens[3] == "square"
    assert maps[-1].target.maps.shape == (8, 16, 16) and 0 <= maps[-1].target.maps.min() <= maps[-1].target.maps.max() <= 1
    masks = [e for e in events if isinstance(e, Mask)]
    assert [m.step for m in masks] == [2, 4] and masks[-1].binary.shape == (128, 128)  # with the maps
    result = events[-1]
    assert isinstance(result, P2PResult) and len(result.images) == 2 and result.unet_evaluations == 4
    assert np.array_equal(result.mask, masks[-1].binary)


def test_p2p_generates_the_pair_at_the_size_asked(tiny_engine):
    events = run(tiny_engine, size=64, blend_words=("circle", "square"), blend_start=0.0)
    result = events[-1]
    assert [image.size for image in result.images] == [(64, 64), (64, 64)] and result.mask.shape == (64, 64)


def test_identical_prompts_without_weights_give_identical_images(tiny_engine):
    result = run(tiny_engine, target_prompt=SOURCE)[-1]
    np.testing.assert_allclose(result.pixels[0], result.pixels[1], atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_prompt": "a big red circle " * 8 + "on a blue background and a big red square on the left"}, "Target prompt"),
        ({"reweights": (("green", 2.0),)}, "not a word of the target prompt"),
        ({"target_prompt": "a big red square on a blue background on the left"}, "refine"),
        ({"blend_words": ("triangle",)}, "neither"),
        ({"source_prompt": "a (red:2) circle"}, "belong in the target prompt"),
        ({"cross_start": 0.9, "cross_stop": 0.2}, "must not be after"),
        ({"size": 100}, "multiple of 8"),
        ({"size": 4096}, "between 64 and 2048"),
    ],
)
def test_bad_input_gets_a_clear_error_before_model_work(tiny_engine, changes, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_engine.p2p(P2PSpec(**{"source_prompt": SOURCE, "target_prompt": "a big red square on a blue background",
                                   "edit": "word swap", **changes}))


def test_unknown_target_word_is_named(tiny_engine):
    with pytest.raises(UnknownWordError, match="dog"):
        tiny_engine.p2p(P2PSpec(SOURCE, "a big red dog on a blue background", edit="word swap"))


def test_cancel_stops_between_steps_and_restores_processors(tiny_engine):
    before = dict(tiny_engine.model.unet.attn_processors)
    cancel = CancelToken()
    events = tiny_engine.p2p(P2PSpec(SOURCE, "a big red square on a blue background", edit="word swap", seed=1, steps=4),
                             cancel=cancel)
    with pytest.raises(CancelledError):
        for event in events:
            if isinstance(event, Progress) and event.step == 1:
                cancel.cancel()
    assert tiny_engine.model.unet.attn_processors == before
    assert isinstance(run(tiny_engine)[-1], P2PResult)  # the engine is free for the next job


def test_refine_style_and_degree_word_runs_report_the_alignment(tiny_engine):
    refine = run(tiny_engine, source_prompt="a red circle", target_prompt="a big red circle", edit="refine",
                 degree_words=(DegreeWord("big", "red"),))[-1]
    assert refine.alignment == [("a", "a"), ("big", ""), ("red", "red"), ("circle", "circle")]
    style = run(tiny_engine, source_prompt="a red circle", target_prompt="a red circle on a blue background",
                edit="style", style_alpha=0.5)[-1]
    assert style.alignment[-1] == ("background", "") and len(style.images) == 2
