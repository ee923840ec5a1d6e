"""Control maps: the images a ControlNet (Zhang et al. 2023) or a T2I-Adapter (Mou et al. 2024) reads.

A control map is an (H, W, 3) uint8 RGB image of white (255) strokes or regions on black (0). Black
everywhere is the control channel's null, "a zero control map": what per-channel dropout trains the model to
read as "no structure given" (studio.structure.training), so it can be guided on its own.

    outline   each object's contour as 2 px white lines on black, as an artist's outline or scribble drawing
    layout    each object's region filled flat white on black: where each object goes (the text says its colour)

Ground truth comes from the renderer's masks (`control_map`); a user's picture is converted with OpenCV
(`outline_from_image`: Canny, as ControlNet's canny model; `layout_from_image` for shapes-world pictures), and a
canvas drawing in any stroke colour is normalised by `map_from_drawing`. Pure numpy/PIL/OpenCV, no torch.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from studio.errors import InvalidInputError
from studio.shapes.render import Rendering

CONTROL_KINDS = ("outline", "layout")
OUTLINE_WIDTH = 2  # pixels, inside each object's mask
# a pixel belongs to an object (or a stroke) when its colour is this far (RGB Euclidean) from the background's:
# the judge's threshold (studio.shapes.judge), which anti-aliased seams stay under
FOREGROUND_DISTANCE = 80.0
EMPTY_MAP_MESSAGE = "The control map is empty: draw an outline or layout, or upload an image."

_SQUARE_3X3 = np.ones((3, 3), np.uint8)


def _white_on_black(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W, 3) uint8, white where True."""
    return np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)


def _outline_of(mask: np.ndarray) -> np.ndarray:
    """The OUTLINE_WIDTH-pixel inner boundary of a (H, W) bool mask: the mask less its erosion."""
    eroded = cv2.erode(mask.astype(np.uint8), _SQUARE_3X3, iterations=OUTLINE_WIDTH, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask & ~eroded.astype(bool)


def control_map(rendering: Rendering, kind: str) -> np.ndarray:
    """The ground-truth control map of a rendered scene: each object's outline, or the union of its regions."""
    if kind == "layout":
        return _white_on_black(rendering.masks.any(axis=0))
    if kind == "outline":
        lines = np.zeros(rendering.image.shape[:2], dtype=bool)
        for mask in rendering.masks:
            lines |= _outline_of(mask)
        return _white_on_black(lines)
    raise InvalidInputError(f"Unknown control kind {kind!r}: choose one of {', '.join(CONTROL_KINDS)}.")


def _rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Any PIL image or array (gray, RGB, RGBA) -> (H, W, 3) uint8; transparent pixels become black."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "P", "PA") else image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array * 255 if array.max() <= 1.0 else array, 0, 255).round().astype(np.uint8)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255
        return (array[:, :, :3] * alpha).round().astype(np.uint8)
    return array[:, :, :3]


def _border_colour(image: np.ndarray) -> np.ndarray:
    """The most common colour of the outermost pixel ring: the background of a shapes picture or a canvas."""
    ring = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    colours, counts = np.unique(ring.reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()].astype(np.float32)


def _far_from_border_colour(image: np.ndarray) -> np.ndarray:
    distance = np.linalg.norm(image.astype(np.float32) - _border_colour(image), axis=-1)
    return distance > FOREGROUND_DISTANCE


def outline_from_image(image: np.ndarray | Image.Image, low: int = 100, high: int = 200) -> np.ndarray:
    """OpenCV Canny edges of any picture (hysteresis thresholds low/high, as ControlNet's canny preprocessor), found
    in each RGB channel and OR-ed: on the grey image alone, colours of equal luminance show no edge (the shapes
    palette's red and blue are both grey 87)."""
    rgb = _rgb_array(image)
    edges = np.zeros(rgb.shape[:2], dtype=bool)
    for channel in range(3):
        edges |= cv2.Canny(np.ascontiguousarray(rgb[:, :, channel]), low, high) > 0
    return _white_on_black(edges)


def layout_from_image(image: np.ndarray | Image.Image) -> np.ndarray:
    """The layout map of a shapes-world picture: the background is the most common border colour, objects are the
    pixels far from it, and a 3x3 opening drops the anti-aliased seams between colours."""
    objects = _far_from_border_colour(_rgb_array(image)).astype(np.uint8)
    return _white_on_black(cv2.morphologyEx(objects, cv2.MORPH_OPEN, _SQUARE_3X3).astype(bool))


def map_from_drawing(rgb: np.ndarray | Image.Image) -> np.ndarray:
    """A canvas drawing (strokes of any colour on a white or black canvas, or on a transparent one) as white on
    black: every pixel far from the canvas colour (the most common border colour) is a stroke."""
    return _white_on_black(_far_from_border_colour(_rgb_array(rgb)))


def _mode_of(image: np.ndarray | Image.Image) -> str:
    """PIL's name of the image's mode; arrays by their channel count."""
    if isinstance(image, Image.Image):
        return image.mode
    array = np.asarray(image)
    return "L" if array.ndim == 2 else {1: "L", 3: "RGB", 4: "RGBA"}.get(array.shape[2], f"{array.shape[2]}-channel")


def _is_binary(image: np.ndarray) -> bool:
    return bool(np.isin(image, (0, 255)).all())


def prepare_control_map(image: np.ndarray | Image.Image | None, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """A control map as the model reads it: (height, width, 3) uint8 RGB, and a note for each change made.

    Other modes (RGBA, L, P, ...) are converted to RGB; another size is resized, nearest-neighbour for a binary
    map (its strokes stay pure white on black) and Lanczos for any other picture. None or an all-black map is
    refused: black everywhere is the null control, which a user never means to send."""
    if image is None:
        raise InvalidInputError(EMPTY_MAP_MESSAGE)
    notes = []
    mode = _mode_of(image)
    if mode != "RGB":
        notes.append(f"The control map was {mode}; converted to RGB.")
    array = _rgb_array(image)
    if not array.any():
        raise InvalidInputError(EMPTY_MAP_MESSAGE)
    if array.shape[:2] != (height, width):
        notes.append(f"The control map was {array.shape[1]}x{array.shape[0]}; resized to {width}x{height}.")
        resample = Image.Resampling.NEAREST if _is_binary(array) else Image.Resampling.LANCZOS
        array = np.asarray(Image.fromarray(array).resize((width, height), resample))
    return array, notes
