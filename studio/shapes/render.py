"""Procedural scenes of the shapes world: sampling, drawing, captions, ground truth.

Every rendered image comes with its ground truth (per-object masks, boxes, attributes), so the
model's fidelity and every later edit can be measured exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from studio.shapes.vocabulary import COLOURS, POSITIONS, SHAPES, SIZES

IMAGE_SIZE = 128
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges like a real image
HALF_EXTENT = {"small": 0.12, "big": 0.21}  # object half-width as a fraction of the canvas
SIZE_JITTER = 0.1  # relative
POSITION_JITTER = 0.03  # fraction of the canvas

# (object colour, shape, background colour) triples never rendered in training: generalisation test.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "blue"),
    ("orange", "circle", "purple"),
    ("yellow", "square", "black"),
    ("green", "triangle", "white"),
    ("blue", "circle", "yellow"),
    ("purple", "square", "green"),
    ("white", "circle", "red"),
    ("black", "triangle", "orange"),
)


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str
    center: tuple[float, float]  # pixels (x, y)
    half_extent: float  # pixels

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels, clipped to the canvas."""
        x, y, r = *self.center, self.half_extent
        return (max(0, int(x - r)), max(0, int(y - r)), min(IMAGE_SIZE, math.ceil(x + r)), min(IMAGE_SIZE, math.ceil(y + r)))


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeObject, ...]


@dataclass(frozen=True)
class Rendering:
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (n_objects, H, W) bool, visible pixels of each object (later objects on top)
    scene: Scene


def make_object(shape: str, colour: str, size: str, position: str, rng: np.random.Generator | None = None) -> ShapeObject:
    """An object with its nominal geometry, jittered when rng is given."""
    fx, fy = POSITIONS[position]
    half = HALF_EXTENT[size]
    if rng is not None:
        fx, fy = fx + rng.uniform(-POSITION_JITTER, POSITION_JITTER), fy + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        half *= 1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    return ShapeObject(shape, colour, size, position, (fx * IMAGE_SIZE, fy * IMAGE_SIZE), half * IMAGE_SIZE)


def boxes_overlap(a: ShapeObject, b: ShapeObject, margin: float = 2.0) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    reach = a.half_extent + b.half_extent + margin
    return abs(ax - bx) < reach and abs(ay - by) < reach


def is_held_out(scene: Scene) -> bool:
    return any((o.colour, o.shape, scene.background) in HELD_OUT for o in scene.objects)


def sample_scene(rng: np.random.Generator, max_objects: int = 2, allow_held_out: bool = False) -> Scene:
    """A random scene of 1..max_objects non-overlapping objects; object colours differ from the background."""
    colours, positions = list(COLOURS), list(POSITIONS)
    while True:
        background = colours[rng.integers(len(colours))]
        objects: list[ShapeObject] = []
        n_objects = 1 + int(rng.integers(max_objects))
        for _ in range(20 * n_objects):
            if len(objects) == n_objects:
                break
            colour = colours[rng.integers(len(colours))]
            if colour == background:
                continue
            candidate = make_object(
                SHAPES[rng.integers(len(SHAPES))], colour, SIZES[rng.integers(len(SIZES))],
                positions[rng.integers(len(positions))], rng,
            )
            if all(candidate.position != o.position and not boxes_overlap(candidate, o) for o in objects):
                objects.append(candidate)
        scene = Scene(background, tuple(objects))
        if len(objects) == n_objects and (allow_held_out or not is_held_out(scene)):
            return scene


def _star_outline(inner: float = 0.45) -> tuple[tuple[float, float], ...]:
    """A 5-point star pointing up, outer radius 1, its box's centre at the origin (the points reach y = -1 and
    y = cos 36 deg, so it is shifted down by half the difference); `inner` is the inner radius."""
    shift = (1 - math.cos(math.pi / 5)) / 2
    return tuple(
        ((1 if k % 2 == 0 else inner) * math.sin(k * math.pi / 5),
         -(1 if k % 2 == 0 else inner) * math.cos(k * math.pi / 5) + shift)
        for k in range(10)
    )


def _heart_outline(points: int = 64) -> tuple[tuple[float, float], ...]:
    """The classic heart curve x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t, scaled into the
    square [-1, 1]^2 (lobes up, point down)."""
    curve = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
             for t in (2 * math.pi * i / points for i in range(points))]
    top, bottom = min(y for _, y in curve), max(y for _, y in curve)
    half = max(16, (bottom - top) / 2)
    middle = (top + bottom) / 2
    return tuple((px / half, (py - middle) / half) for px, py in curve)


STAR_OUTLINE = _star_outline()
HEART_OUTLINE = _heart_outline()


def _outline(obj: ShapeObject, scale: float) -> tuple[str, list[tuple[float, float]]]:
    x, y, r = obj.center[0] * scale, obj.center[1] * scale, obj.half_extent * scale
    if obj.shape == "circle":
        return "ellipse", [(x - r, y - r), (x + r, y + r)]
    if obj.shape == "square":
        return "polygon", [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if obj.shape == "triangle":  # upright, base and height 2r, centred on its box
        return "polygon", [(x, y - r), (x + r, y + r), (x - r, y + r)]
    if obj.shape == "star":
        return "polygon", [(x + dx * r, y + dy * r) for dx, dy in STAR_OUTLINE]
    if obj.shape == "heart":
        return "polygon", [(x + dx * r, y + dy * r) for dx, dy in HEART_OUTLINE]
    raise ValueError(f"The shapes world cannot draw {obj.shape!r}.")


def render(scene: Scene) -> Rendering:
    big = IMAGE_SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(canvas)
    coverage = np.zeros((len(scene.objects), big, big), dtype=bool)
    for i, obj in enumerate(scene.objects):
        kind, points = _outline(obj, SUPERSAMPLE)
        layer = Image.new("L", (big, big), 0)
        getattr(ImageDraw.Draw(layer), kind)(points, fill=255)
        getattr(draw, kind)(points, fill=COLOURS[obj.colour])
        coverage[i] = np.asarray(layer) > 0
        coverage[:i] &= ~coverage[i]  # later objects hide earlier ones
    image = np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
    # a pixel belongs to an object when at least half of its sub-pixels do
    masks = coverage.reshape(len(scene.objects), IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(2, 4)) >= 0.5
    return Rendering(image, masks, scene)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def describe_object(obj: ShapeObject, size: bool = True, colour: bool = True, position: bool = True) -> str:
    words = [w for w, keep in ((obj.size, size), (obj.colour, colour)) if keep] + [obj.shape]
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if position:
        phrase += " in the center" if obj.position == "center" else f" on the {obj.position}"
    return phrase


def caption(scene: Scene, rng: np.random.Generator | None = None, keep: float = 1.0) -> str:
    """The scene's caption in the fixed grammar:
    `a {size} {colour} {shape} {on the {position} | in the center} [and a ...] on a {colour} background`.
    With rng, each size/colour/position/background phrase is kept with probability `keep`
    (attribute dropout: the model learns to sample what a prompt leaves out)."""

    def kept() -> bool:
        return rng is None or rng.random() < keep

    phrases = [describe_object(o, size=kept(), colour=kept(), position=kept()) for o in scene.objects]
    text = " and ".join(phrases)
    if kept():
        text += f" on {_article(scene.background)} {scene.background} background"
    return text
