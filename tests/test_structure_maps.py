"""Control maps: ground truth from the renderer, maps from pictures and drawings, and preparing a user's map."""

import cv2
import numpy as np
import pytest
from PIL import Image

from studio.errors import InvalidInputError
from studio.shapes.render import Scene, make_object, render, sample_scene
from studio.structure.maps import (
    CONTROL_KINDS,
    OUTLINE_WIDTH,
    control_map,
    layout_from_image,
    map_from_drawing,
    outline_from_image,
    prepare_control_map,
)


@pytest.fixture(scope="module")
def renderings():
    rng = np.random.default_rng(3)
    return [render(sample_scene(rng)) for _ in range(6)]


def white(image: np.ndarray) -> np.ndarray:
    return image[..., 0] == 255


def test_maps_are_white_on_black_rgb(renderings):
    for rendering in renderings:
        for kind in CONTROL_KINDS:
            image = control_map(rendering, kind)
            assert image.shape == (128, 128, 3) and image.dtype == np.uint8
            assert set(np.unique(image)) <= {0, 255}
            assert (image == image[..., :1]).all()  # grey: the same in every channel


def test_layout_is_the_union_of_the_masks(renderings):
    for rendering in renderings:
        assert np.array_equal(white(control_map(rendering, "layout")), rendering.masks.any(axis=0))


def test_outline_lies_on_the_mask_boundaries(renderings):
    for rendering in renderings:
        lines = white(control_map(rendering, "outline"))
        union = rendering.masks.any(axis=0)
        assert (lines <= union).all()  # inside the objects
        # within OUTLINE_WIDTH pixels of the background: nothing deep inside an object
        background_distance = cv2.distanceTransform(union.astype(np.uint8), cv2.DIST_C, 3)
        assert background_distance[lines].max() <= OUTLINE_WIDTH
        # and every boundary pixel of every object is drawn
        for mask in rendering.masks:
            boundary = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert lines[boundary].all()
        assert lines.sum() < 0.5 * union.sum()


def test_unknown_kind_is_refused(renderings):
    with pytest.raises(InvalidInputError, match="outline, layout"):
        control_map(renderings[0], "depth")


def test_canny_finds_a_rendered_squares_edges():
    rendering = render(Scene("black", (make_object("square", "white", "big", "center"),)))
    edges = white(outline_from_image(rendering.image))
    x0, y0, x1, y1 = rendering.scene.objects[0].box
    assert edges.sum() > 0.8 * 4 * (x1 - x0)  # all four sides
    ys, xs = np.nonzero(edges)
    near_a_side = (np.minimum(abs(xs - x0), abs(xs - x1)) <= 2) | (np.minimum(abs(ys - y0), abs(ys - y1)) <= 2)
    assert near_a_side.all()
    assert not white(outline_from_image(np.full((64, 64, 3), 90, np.uint8))).any()  # a flat picture has no edges


def test_canny_sees_colours_of_equal_grey():
    """Red and blue of the shapes palette have the same luminance: a grey-only Canny found none of this circle."""
    rendering = render(Scene("blue", (make_object("circle", "red", "big", "center"),)))
    mask = rendering.masks[0]
    boundary = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    near_edges = cv2.dilate(outline_from_image(rendering.image)[..., 0], np.ones((5, 5), np.uint8)) > 0
    assert near_edges[boundary].mean() > 0.9


def test_layout_from_a_shapes_picture_matches_its_masks(renderings):
    for rendering in renderings:
        found = white(layout_from_image(rendering.image))
        truth = rendering.masks.any(axis=0)
        assert (found & truth).sum() / (found | truth).sum() > 0.93


@pytest.mark.parametrize("canvas, stroke", [((255, 255, 255), (0, 0, 0)), ((0, 0, 0), (255, 255, 255)),
                                            ((255, 255, 255), (220, 30, 30)), ((0, 0, 0), (40, 90, 250))])
def test_a_drawing_on_white_or_black_normalises(canvas, stroke):
    drawing = np.full((96, 80, 3), canvas, np.uint8)
    cv2.circle(drawing, (40, 48), 20, stroke, 3)
    normalised = map_from_drawing(drawing)
    assert normalised.shape == (96, 80, 3)
    expected = np.zeros((96, 80), np.uint8)
    cv2.circle(expected, (40, 48), 20, 255, 3)
    assert np.array_equal(white(normalised), expected > 0)


def test_a_drawing_on_a_transparent_canvas_normalises():
    drawing = np.zeros((64, 64, 4), np.uint8)
    drawing[20:30, 10:50] = (200, 40, 40, 255)
    assert white(map_from_drawing(Image.fromarray(drawing, "RGBA"))).sum() == 10 * 40


def test_prepare_resizes_a_binary_map_nearest_with_a_note(renderings):
    layout = control_map(renderings[0], "layout")
    big = np.asarray(Image.fromarray(layout).resize((256, 256), Image.Resampling.NEAREST))
    prepared, notes = prepare_control_map(big, 128, 128)
    assert notes == ["The control map was 256x256; resized to 128x128."]
    assert prepared.shape == (128, 128, 3) and set(np.unique(prepared)) <= {0, 255}
    assert np.array_equal(prepared, layout)


def test_prepare_converts_modes_with_a_note(renderings):
    layout = control_map(renderings[0], "layout")
    for image, mode in [(Image.fromarray(layout[..., 0], "L"), "L"), (Image.fromarray(layout).convert("RGBA"), "RGBA"),
                        (Image.fromarray(layout).convert("P"), "P"), (layout[..., 0], "L")]:
        prepared, notes = prepare_control_map(image, 128, 128)
        assert notes == [f"The control map was {mode}; converted to RGB."]
        assert np.array_equal(prepared, layout)
    prepared, notes = prepare_control_map(Image.fromarray(layout[..., 0], "L"), 64, 96)
    assert prepared.shape == (96, 64, 3) and len(notes) == 2


def test_prepare_keeps_a_picture_smooth_and_a_right_sized_map_untouched(renderings):
    prepared, notes = prepare_control_map(renderings[0].image, 64, 64)
    assert prepared.shape == (64, 64, 3) and len(notes) == 1
    layout = control_map(renderings[0], "layout")
    prepared, notes = prepare_control_map(layout, 128, 128)
    assert np.array_equal(prepared, layout) and notes == []


@pytest.mark.parametrize("empty", [None, np.zeros((128, 128, 3), np.uint8), Image.new("L", (64, 64)),
                                   np.zeros((32, 32, 4), np.uint8)])
def test_prepare_refuses_an_empty_map(empty):
    with pytest.raises(InvalidInputError, match="The control map is empty: draw an outline or layout, or upload an image."):
        prepare_control_map(empty, 128, 128)
