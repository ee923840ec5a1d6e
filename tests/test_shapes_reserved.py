"""The reserved shapes (star, heart): the renderer draws them, base training never samples them, and the pixel
judge names every shape of the world from its outline."""

import numpy as np
import pytest

from studio.shapes.judge import judge_concept_shape, judge_pixels, shape_features
from studio.shapes.render import Scene, make_object, render, sample_scene
from studio.shapes.vocabulary import RESERVED_SHAPES, SHAPES

COLOUR_PAIRS = (("red", "blue"), ("yellow", "black"), ("white", "green"), ("purple", "orange"))


@pytest.mark.parametrize("shape", SHAPES + RESERVED_SHAPES)
def test_judge_names_every_shape_in_sizes_colours_and_positions(shape):
    rng = np.random.default_rng(7)
    for size in ("small", "big"):
        for position in ("left", "center", "top right", "bottom"):
            for colour, background in COLOUR_PAIRS:
                rendering = render(Scene(background, (make_object(shape, colour, size, position, rng),)))
                assert judge_concept_shape(rendering.masks[0]) == shape, (size, position, colour)
                judged = judge_pixels(rendering.image, concept_shapes=True).objects
                assert [(o.shape, o.colour) for o in judged] == [(shape, colour)], (size, position, background)


def test_star_and_heart_outlines_differ_from_the_convex_shapes():
    star = shape_features(render(Scene("blue", (make_object("star", "red", "big", "center"),))).masks[0])
    heart = shape_features(render(Scene("blue", (make_object("heart", "red", "big", "center"),))).masks[0])
    assert star["solidity"] < 0.7 and star["deep_defects"] == 5 and star["vertices"] == 10
    assert 0.85 < heart["solidity"] < 0.97 and heart["deep_defects"] in (1, 2)


def test_base_training_scenes_never_hold_a_reserved_shape():
    rng = np.random.default_rng(0)
    shapes = {o.shape for _ in range(300) for o in sample_scene(rng).objects}
    assert shapes == set(SHAPES)


def test_the_default_judge_is_the_base_models_three_shapes():
    """judge_pixels without concept_shapes is the judge every earlier measurement used: it never says star."""
    rendering = render(Scene("blue", (make_object("star", "red", "big", "center"),)))
    assert judge_pixels(rendering.image).objects[0].shape in SHAPES
