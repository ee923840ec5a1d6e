"""The shapes world's renderer, captions, tokenizer and pixel judge agree with the ground truth."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from studio.shapes.judge import judge_pixels
from studio.shapes.render import HELD_OUT, caption, is_held_out, render, sample_scene
from studio.shapes.vocabulary import COLOURS, RESERVED_SHAPES, UNK, build_tokenizer


@pytest.fixture(scope="module")
def renderings():
    rng = np.random.default_rng(7)
    return [render(sample_scene(rng)) for _ in range(150)]


def test_full_caption_names_every_object_and_the_background(renderings):
    for r in renderings:
        text = caption(r.scene)
        assert text.endswith(f"{r.scene.background} background")
        for obj in r.scene.objects:
            where = "in the center" if obj.position == "center" else f"on the {obj.position}"
            assert f"{obj.size} {obj.colour} {obj.shape} {where}" in text


def test_attribute_dropout_keeps_the_shape_and_drops_the_rest():
    scene = sample_scene(np.random.default_rng(0), max_objects=1)
    bare = caption(scene, np.random.default_rng(0), keep=0.0)
    assert bare == f"{'an' if scene.objects[0].shape[0] in 'aeiou' else 'a'} {scene.objects[0].shape}"


def test_masks_cover_exactly_the_pixels_of_each_objects_colour(renderings):
    for r in renderings:
        assert not (r.masks.sum(axis=0) > 1).any(), "objects overlap"
        for obj, mask in zip(r.scene.objects, r.masks):
            assert mask.sum() > 100
            inside = r.image[mask].astype(int)
            assert np.abs(inside - COLOURS[obj.colour]).max(axis=1).mean() < 20
        outside = r.image[~r.masks.any(axis=0)].astype(int)
        off_background = np.abs(outside - COLOURS[r.scene.background]).max(axis=1) > 10
        assert off_background.mean() < 0.03, "only anti-aliased edges may differ from the background"


def test_training_scenes_avoid_held_out_triples_reserved_shapes_and_background_colour():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        scene = sample_scene(rng)
        assert not is_held_out(scene)
        for obj in scene.objects:
            assert obj.shape not in RESERVED_SHAPES
            assert obj.colour != scene.background
    assert len(HELD_OUT) == 8


def test_pixel_judge_reads_ground_truth_renders_correctly(renderings):
    for r in renderings:
        judged = judge_pixels(r.image)
        assert judged.background == r.scene.background
        assert len(judged.objects) == len(r.scene.objects)
        for obj in r.scene.objects:
            match = [j for j in judged.objects if j.position == obj.position]
            assert match and (match[0].colour, match[0].shape) == (obj.colour, obj.shape)


def test_tokenizer_round_trips_through_auto_tokenizer_and_marks_unknown_words(tmp_path):
    build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("A big Red circle, on the left!").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[1:-1] == ["a", "big", "red", "circle", "on", "the", "left"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red dog").input_ids)[3] == UNK


def test_every_training_caption_is_in_the_vocabulary(renderings):
    tokenizer = build_tokenizer()
    rng = np.random.default_rng(3)
    for r in renderings:
        for keep in (1.0, 0.5):
            assert tokenizer.unk_token_id not in tokenizer(caption(r.scene, rng, keep)).input_ids
