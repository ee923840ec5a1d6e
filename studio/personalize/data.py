"""A personalization run's training images and their captions: rendered from the shapes world, or the user's own.

Rendered images carry full captions with the concept word in the shape slot ("a big red <my-star> on the left on a
blue background"), so the word is learned as a shape that composes with every other word; a user's images are
captioned "a <word>", as Textual Inversion and DreamBooth caption theirs.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.errors import InvalidInputError
from studio.images import ImageInput, prepare_image
from studio.personalize.spec import MAX_IMAGES, MIN_IMAGES
from studio.shapes.render import Scene, caption, make_object, render
from studio.shapes.vocabulary import POSITIONS, RESERVED_SHAPES

# Training pictures avoid the colours and backgrounds the measurements ask for ("a red star on a blue background"),
# so a judged star there is composition, not a copy of a training image.
TRAINING_COLOURS = ("yellow", "green", "white", "orange", "purple")
TRAINING_BACKGROUNDS = ("black", "purple", "green", "white", "orange")
# Big only by default: the embedded model's VAE (16x16 latents) gives a small star back as a round blob (the pixel
# judge named 7 of 7 big reconstructed stars, 0 of 9 small ones), so small pictures would teach the word a blob.
TRAINING_SIZES = ("big",)


@dataclass(frozen=True)
class TrainingImage:
    image: Image.Image  # RGB at the model's native size
    caption: str
    word: str  # the concept it teaches (Custom Diffusion trains two)


def render_concept_images(shape: str, count: int, seed: int = 0, colours: Sequence[str] = TRAINING_COLOURS,
                          backgrounds: Sequence[str] = TRAINING_BACKGROUNDS, word: str | None = None,
                          sizes: Sequence[str] = TRAINING_SIZES) -> list[tuple[Image.Image, str]]:
    """`count` pictures of a reserved shape, one object each in varied size, colour, position and background (the
    object's colour never the background's), with full captions naming it `word` (default: the shape's own word)."""
    if shape not in RESERVED_SHAPES:
        raise InvalidInputError(f"The renderer draws concept images of {', '.join(RESERVED_SHAPES)}, not {shape!r}.")
    rng = np.random.default_rng([seed, 18])
    positions = list(POSITIONS)
    pictures = []
    for i in range(count):
        background = backgrounds[i % len(backgrounds)]
        choices = [c for c in colours if c != background]
        colour = choices[int(rng.integers(len(choices)))]
        obj = make_object(shape, colour, sizes[int(rng.integers(len(sizes)))], positions[int(rng.integers(len(positions)))], rng)
        scene = Scene(background, (obj,))
        text = caption(scene)
        if word is not None and word != shape:
            text = text.replace(shape, word)
        pictures.append((Image.fromarray(render(scene).image), text))
    return pictures


ImageWithCaption = tuple[ImageInput, str]


def training_images(images: Sequence[ImageInput | ImageWithCaption], word: str, size: int,
                    notices: list[str]) -> list[TrainingImage]:
    """The run's images of `word`, each RGB `size` x `size` (converted and resized by studio.images.prepare_image;
    what changed is appended to `notices`); an image given with a caption keeps it, others are captioned "a <word>".
    Raises InvalidInputError for fewer than MIN_IMAGES or more than MAX_IMAGES."""
    if len(images) < MIN_IMAGES:
        given = "no images" if not images else f"only {len(images)} image{'s' * (len(images) > 1)}"
        raise InvalidInputError(
            f"{word!r}: {given}; give {MIN_IMAGES} to {MAX_IMAGES} pictures of the concept (or render them from the "
            "shapes world for a reserved shape)."
        )
    if len(images) > MAX_IMAGES:
        raise InvalidInputError(f"{word!r}: {len(images)} images; give at most {MAX_IMAGES} (a few good ones teach it).")
    prepared = []
    for index, item in enumerate(images, 1):
        image, text = item if isinstance(item, tuple) else (item, f"a {word}")
        ready = prepare_image(image, size)
        if ready.changes:
            notices.append(f"Image {index} of {word!r}: {ready.note}.")
        prepared.append(TrainingImage(ready.image, text, word))
    return prepared


CAPTION_KEEP = 0.8  # the base model's attribute dropout: each size/colour/position/background phrase kept with 0.8
_SHAPES_CAPTION = re.compile(
    r"^(?P<article>an?) (?:(?P<size>small|big) )?(?:(?P<colour>[a-z]+) )?(?P<word>\S+)"
    r"(?: (?P<position>on the (?:top |bottom )?(?:left|right|top|bottom)|in the center))?"
    r"(?: on (?:a|an) (?P<background>[a-z]+) background)?$"
)


def caption_variants(text: str, word: str) -> list[tuple[str, float]]:
    """A one-object shapes-world caption of `word` with each of its size / colour / position / background phrases
    kept or dropped, and each variant's probability when every phrase is kept with CAPTION_KEEP (the attribute
    dropout the base model trained with, so "a red star on a blue background" reads as it did in training); any
    other caption is its only variant."""
    match = _SHAPES_CAPTION.match(text)
    if match is None or match["word"] != word:
        return [(text, 1.0)]
    phrases = [name for name in ("size", "colour", "position", "background") if match[name]]
    variants = []
    for kept in itertools.product((True, False), repeat=len(phrases)):
        keep = dict(zip(phrases, kept))
        adjectives = [match[name] for name in ("size", "colour") if keep.get(name)]
        words = [*adjectives, word]
        variant = f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
        if keep.get("position"):
            variant += f" {match['position']}"
        if keep.get("background"):
            background = match["background"]
            variant += f" on {'an' if background[0] in 'aeiou' else 'a'} {background} background"
        variants.append((variant, math.prod(CAPTION_KEEP if k else 1 - CAPTION_KEEP for k in kept)))
    return variants


def class_captions(instances: Sequence[TrainingImage], concept: str, class_word: str) -> list[str]:
    """DreamBooth's class prompts: each instance caption with the class word where the concept word is."""
    return [image.caption.replace(concept, class_word) for image in instances]

