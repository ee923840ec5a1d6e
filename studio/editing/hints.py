"""What to change when an edit fails: the texts the editing tabs show beside a result, and the pure rules that
pick them from what the result measured (colours of its pixels, its mask, the inversion it edited).

    shown = hints.as_markdown(hints.p2p_hints(spec, result, inversion), fallback=hints.P2P_IF_FAILED)

No model work: every rule reads pixels and settings the result already has, in milliseconds. The thresholds
were measured on the embedded model's first edits (bench/first_edits.py, bench/results/first_edits.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.editing.diffedit import DiffEditSpec
from studio.editing.p2p import EDIT_PREFERENCE, P2PSpec
from studio.events import DiffEditResult, P2PResult
from studio.images import ImageInput, prepare_image
from studio.inversion.result import METHOD_LABELS, Inversion, InversionSpec

# An edit of an inversion keeps the inversion's guidance w, which pushes the whole image along
# (target - source prompt) x (w - 1) (Hertz et al. 2023 edit real images through Mokady et al. 2023's null-text
# inversion at w = 7.5 on SD; on the embedded model a red -> yellow swap turns the blue background purple at
# w >= 5 and keeps it blue at w = 3; InversionSpec's default is the w the edit bench ranks best).
INVERSION_GUIDANCE_LIMIT = 4.0
SUGGESTED_INVERSION_GUIDANCE = InversionSpec().guidance_scale
# Stage I masks outside this share of the image are almost always wrong (Couairon et al. 2023 threshold a map
# normalised to [0, 1]: a few stray cells pass a low threshold, or a prompt pair that differs in more than the
# object makes the whole map light up).
MASK_TOO_SMALL = 0.02
MASK_TOO_LARGE = 0.60
# Colour shifts, as the RMS of mean-RGB differences on 0..255: the shapes world's nearest palette colours
# (blue and purple) are 118 apart, the VAE's round trip moves a flat background by under 5.
BACKGROUND_SHIFT = 30.0  # the frame of the image changed colour by more than this: the background changed
ERASED_DISTANCE = 30.0  # a pixel this close to the background's colour is background
# The object was (partly) painted over with the background: the share of the mask's pixels of the background's colour
# grew by more than this. A red -> green edit of a null-text inversion (w = 3) of a big red circle on blue left a
# blue-and-green ghost with 0.31 of the mask blue, where the edits that worked left 0.00-0.04 (DiffEdit's defaults,
# the embedded model); the original's share is subtracted, so a mask spilling onto the background is not counted.
ERASED_SHARE = 0.15
UNCHANGED_DISTANCE = 20.0  # the masked region's colour moved less than this: the edit did not take
UNCHANGED_PIXELS = 2.0  # P2P: source and edited differ by less than this per pixel on average: no visible edit
FRAME_PIXELS = 4  # the border read as "the background" (objects of the shapes world keep off it)


@dataclass(frozen=True)
class Hint:
    """A symptom the user sees and what to change; `field` names the setting to change (a spec field, or
    "inversion guidance_scale" for the Inversion tab's w), so a UI may point at it."""

    symptom: str
    change: str
    field: str | None = None

    def markdown(self) -> str:
        return f"**{self.symptom}** {self.change}"


P2P_INVERSION_GUIDANCE = Hint(
    "Background changed colour?",
    "The edit keeps the inversion's guidance w, which pushes the whole image towards the target prompt by (w - 1): "
    f"invert again at a lower w ({SUGGESTED_INVERSION_GUIDANCE:g}) on the Inversion tab, or name the object in "
    "local blend.",
    "inversion guidance_scale",
)
# bench/results/edit_bench.md: P2P of null-text, negative-prompt and fixed-point inversions kept 24.0-24.5 dB of the
# background on 60 edits, the preferred inversion (p2p.EDIT_PREFERENCE) 27.8 dB at as many or more successes
P2P_INVERSION_METHOD = Hint(
    "Background moved?",
    f"Invert again with {METHOD_LABELS[EDIT_PREFERENCE[0]]} (the Inversion tab's default): of the inversions, its "
    "Prompt-to-Prompt edits keep the background best on the studio's edit bench.",
    "inversion method",
)
P2P_BACKGROUND = Hint(
    "Background changed?",
    "Name the edited object in local blend (e.g. circle): outside its attention the edit keeps the source's latents.",
    "blend_words",
)
P2P_UNCHANGED = Hint(
    "No visible change?",
    "Lower the cross-attention stop (the target prompt's own attention takes over sooner), or re-weight the new "
    "word more strongly, e.g. (yellow:3).",
    "cross_stop",
)
DIFFEDIT_MASK_SMALL = Hint(
    "The mask is (nearly) empty?",
    "Lower the mask threshold, or probe at more noise (raise 'Probe noise up to'); check that the target prompt "
    "changes the word for what should change.",
    "threshold",
)
DIFFEDIT_MASK_LARGE = Hint(
    "The mask covers most of the image?",
    "Raise the mask threshold, or change only the words for what should change (the rest of the two prompts "
    "the same).",
    "threshold",
)
DIFFEDIT_COMPOSITE = Hint(
    "Background tinted?",
    "Tick 'Paste original pixels outside the mask': the decoder lets a big edit shift pixels far from the mask.",
    "composite",
)
DIFFEDIT_ERASED = Hint(
    "Object erased, or a ghost of the new colour over the background's?",
    "Lower t_edit (the edit starts from less noise, so the object's outline survives) or raise the mask "
    "threshold; for an inversion, edit the image itself instead (untick the inversion: DiffEdit inverts it at w = 1 "
    "and edits at its own guidance), or invert at a lower w.",
    "edit_strength",
)
DIFFEDIT_UNCHANGED = Hint(
    "The masked object did not change?",
    "Raise t_edit or the guidance scale, or make the mask cover the whole object (lower the threshold).",
    "edit_strength",
)

P2P_IF_FAILED = "\n".join(f"- {hint.markdown()}" for hint in (P2P_INVERSION_GUIDANCE, P2P_INVERSION_METHOD,
                                                                  P2P_BACKGROUND, P2P_UNCHANGED))
DIFFEDIT_IF_FAILED = "\n".join(
    f"- {hint.markdown()}" for hint in (DIFFEDIT_COMPOSITE, DIFFEDIT_ERASED, DIFFEDIT_UNCHANGED, DIFFEDIT_MASK_SMALL,
                                        DIFFEDIT_MASK_LARGE)
)


# --------------------------------------------------------------------------------------------
# Measured facts


def _pixels(image: ImageInput) -> np.ndarray:
    """(H, W, 3) float64 RGB on 0..255."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float64)[..., :3]


def _colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two mean RGB colours (0..255)."""
    return float(np.linalg.norm(a - b))


def frame_shift(before: ImageInput, after: ImageInput, pixels: int = FRAME_PIXELS) -> float:
    """How far the mean colour of the image's border (its outer `pixels`) moved from `before` to `after`."""
    frame = np.ones(_pixels(before).shape[:2], bool)
    frame[pixels:-pixels, pixels:-pixels] = False
    return _colour_distance(_pixels(before)[frame].mean(0), _pixels(after)[frame].mean(0))


def background_share(image: ImageInput, mask: np.ndarray, pixels: int = FRAME_PIXELS) -> float:
    """The share of `mask`'s pixels within ERASED_DISTANCE of the background's colour (the mean of the image's
    border, its outer `pixels`); 0 for an empty mask."""
    if not mask.any():
        return 0.0
    image = _pixels(image)
    frame = np.ones(image.shape[:2], bool)
    frame[pixels:-pixels, pixels:-pixels] = False
    return float((np.linalg.norm(image[mask] - image[frame].mean(0), axis=1) < ERASED_DISTANCE).mean())


def pixel_change(before: ImageInput, after: ImageInput) -> float:
    """Mean absolute difference of two images (0..255), over every pixel and channel."""
    return float(np.abs(_pixels(before) - _pixels(after)).mean())


def mask_change(before: ImageInput, after: ImageInput, mask: np.ndarray) -> float | None:
    """How far the mean colour inside `mask` moved from `before` to `after`; None for an empty mask."""
    if not mask.any():
        return None
    return _colour_distance(_pixels(before)[mask].mean(0), _pixels(after)[mask].mean(0))


# --------------------------------------------------------------------------------------------
# Rules


def inversion_guidance_too_high(inversion: Inversion | None) -> bool:
    return inversion is not None and inversion.guidance_scale > INVERSION_GUIDANCE_LIMIT


def p2p_hints(spec: P2PSpec, result: P2PResult, inversion: Inversion | None = None) -> list[Hint]:
    """Hints for a Prompt-to-Prompt result (images: source, edited); `inversion` is the one it edited, if any."""
    source, edited = result.images[:2]
    found = []
    if frame_shift(source, edited) > BACKGROUND_SHIFT:
        if inversion_guidance_too_high(inversion):
            found.append(P2P_INVERSION_GUIDANCE)
        if inversion is not None and inversion.method != EDIT_PREFERENCE[0]:
            found.append(P2P_INVERSION_METHOD)
        if not spec.blend_words:
            found.append(P2P_BACKGROUND)
    elif pixel_change(source, edited) < UNCHANGED_PIXELS:
        found.append(P2P_UNCHANGED)
    return found


def mask_hints(mask_fraction: float) -> list[Hint]:
    """Hints for a DiffEdit mask covering `mask_fraction` of the image (Stage I's MaskResult or the edit's)."""
    if mask_fraction < MASK_TOO_SMALL:
        return [DIFFEDIT_MASK_SMALL]
    if mask_fraction > MASK_TOO_LARGE:
        return [DIFFEDIT_MASK_LARGE]
    return []


def diffedit_hints(spec: DiffEditSpec, result: DiffEditResult, inversion: Inversion | None = None,
                   original: ImageInput | None = None) -> list[Hint]:
    """Hints for a DiffEdit result; `original` is the image that was edited (default: the inversion's image)."""
    found = mask_hints(result.mask_fraction)
    edited = result.images[0]
    if original is None and inversion is not None:
        original = inversion.image
    if original is not None and _pixels(original).shape[:2] != (edited.height, edited.width):
        original = prepare_image(original, edited.width).image  # an upload of another size, as the engine saw it
    if original is not None and not spec.composite and frame_shift(original, edited) > BACKGROUND_SHIFT / 2:
        found.append(DIFFEDIT_COMPOSITE)
    if result.mask is None or not result.mask.any():
        return found
    before = background_share(original, result.mask) if original is not None else 0.0
    # erased: part of the mask that held the object took the background's colour
    if background_share(edited, result.mask) - before > ERASED_SHARE:
        found.append(DIFFEDIT_ERASED)
    elif original is not None and (mask_change(original, edited, result.mask) or 0.0) < UNCHANGED_DISTANCE:
        found.append(DIFFEDIT_UNCHANGED)
    return found


def as_markdown(found: list[Hint], fallback: str = "") -> str:
    """One "- **symptom** change" line per hint, or `fallback` when there is none."""
    return "\n".join(f"- {hint.markdown()}" for hint in found) if found else fallback
