"""Judges of what a shapes-world image shows: a plain pixel check, and the noisy-latent classifier.

Both return the same `Judgement`, so fidelity can be measured twice, independently: the pixel check
knows only the palette and geometry; the classifier is learned. Every later measurement (guidance
sweeps, edits, inversions) uses these.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from studio.shapes.classifier import BACKGROUND_NAMES, COLOUR_NAMES, SHAPE_NAMES, LatentClassifier
from studio.shapes.vocabulary import COLOURS, POSITIONS, SHAPES

PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (8, 3)
PALETTE_NAMES = tuple(COLOURS)
MIN_OBJECT_PIXELS = 80  # smaller blobs are noise, not objects (a small triangle covers ~450 px)
MIN_OBJECT_CELLS = 3


@dataclass(frozen=True)
class JudgedObject:
    colour: str
    shape: str
    position: str
    mask: np.ndarray  # (H, W) bool at the judge's resolution


@dataclass(frozen=True)
class Judgement:
    background: str
    objects: tuple[JudgedObject, ...]  # largest first


def nearest_position(cx: float, cy: float) -> str:
    """Position word whose nominal centre is nearest to (cx, cy), given as fractions of the canvas."""
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)


def _template(shape: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Ideal filled shape inscribed in the square around a box, as drawn by the renderer."""
    x, y, w, h = box
    cx, cy, r = x + w / 2, y + h / 2, max(w, h) / 2
    canvas = np.zeros(size, dtype=np.uint8)
    if shape == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), round(r), 1, -1)
    elif shape == "square":
        cv2.rectangle(canvas, (round(cx - r), round(cy - r)), (round(cx + r) - 1, round(cy + r) - 1), 1, -1)
    else:
        points = np.array([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], dtype=np.int32)
        cv2.fillPoly(canvas, [points], 1)
    return canvas.astype(bool)


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose ideal template overlaps the blob best (IoU)."""
    box = cv2.boundingRect(mask.astype(np.uint8))

    def iou(shape: str) -> float:
        template = _template(shape, box, mask.shape)
        return (template & mask).sum() / max(1, (template | mask).sum())

    return max(SHAPES, key=iou)


HEART_MAX_SOLIDITY = 0.97
DEEP_DEFECT = 0.08  # a concavity deeper than this fraction of the blob's extent is a notch, not a ragged edge
# A star's outline swings in and out five times around its centre. Measured amplitude of that fifth harmonic (relative
# to the mean radius): the renderer's stars 0.25-0.30, big ones after the VAE's round trip 0.22-0.24, fat generated stars
# with rounded points 0.12-0.18; every circle, square, triangle and heart, rendered or VAE-decoded, at most 0.06, and the
# base model's pictures and blobs of an untaught "star" at most 0.07.
STAR_MIN_FIVEFOLD = 0.1
OUTLINE_SAMPLES = 256  # points along the outline, evenly spaced by arc length
HARMONICS = 8


def outline_harmonics(contour: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Amplitudes of harmonics 1..HARMONICS of the outline's distance from its centre, sampled evenly along the
    outline, each relative to the mean distance: the centroid-distance Fourier descriptor (Zhang & Lu 2002), invariant
    to rotation, scale and the outline's starting point. A regular n-gon or n-pointed star peaks at harmonic n."""
    points = np.vstack([contour.reshape(-1, 2), contour.reshape(-1, 2)[:1]]).astype(np.float64)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    along = np.linspace(0.0, arc[-1], OUTLINE_SAMPLES, endpoint=False)
    sampled = np.stack([np.interp(along, arc, points[:, 0]), np.interp(along, arc, points[:, 1])], axis=1)
    distance = np.linalg.norm(sampled - np.asarray(centre), axis=1)
    spectrum = np.abs(np.fft.rfft(distance - distance.mean())) * 2 / OUTLINE_SAMPLES / max(distance.mean(), 1e-6)
    return spectrum[1:HARMONICS + 1]


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Geometry of a blob's outline: vertices of its approxPolyDP polygon (epsilon 4% of the perimeter), solidity
    (area / convex hull area), the number of deep convexity defects (notches between points or lobes), its strongest
    outline harmonic and the fifth harmonic's amplitude (outline_harmonics)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    vertices = len(cv2.approxPolyDP(contour, 0.04 * cv2.arcLength(contour, True), True))
    extent = max(cv2.boundingRect(contour)[2:])
    defects = cv2.convexityDefects(contour, cv2.convexHull(contour, returnPoints=False)) if len(contour) > 3 else None
    depths = np.zeros(0) if defects is None else defects.reshape(-1, 4)[:, 3] / 256.0  # fixed point, 8 fraction bits
    deep = int((depths > DEEP_DEFECT * extent).sum())
    moments = cv2.moments(contour)
    centre = (moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]) if moments["m00"] else \
        tuple(contour.reshape(-1, 2).mean(0))
    harmonics = outline_harmonics(contour, centre)
    return {"vertices": vertices, "solidity": cv2.contourArea(contour) / max(hull_area, 1.0), "deep_defects": deep,
            "harmonic": int(harmonics.argmax()) + 1, "fivefold": float(harmonics[4])}


def judge_concept_shape(mask: np.ndarray) -> str:
    """circle / square / triangle / star / heart from pixels: a star is an outline whose strongest harmonic is the
    fifth, at STAR_MIN_FIVEFOLD or more (five points, however rounded: a star's concavity measures fail on fat stars
    with rounded points, which fill over 80% of their hull); a heart a nearly convex outline with one or two notches
    (between its lobes, and where its sides meet the point); anything else one of the base shapes (classify_shape)."""
    features = shape_features(mask)
    if features["harmonic"] == 5 and features["fivefold"] >= STAR_MIN_FIVEFOLD:
        return "star"
    if features["solidity"] < HEART_MAX_SOLIDITY and 1 <= features["deep_defects"] <= 2:
        return "heart"
    return classify_shape(mask)


def judge_pixels(image: np.ndarray, concept_shapes: bool = False) -> Judgement:
    """Judge an (H, W, 3) uint8 RGB image by colours and geometry alone; with `concept_shapes` the shapes are
    told by judge_concept_shape (star and heart too), else by classify_shape (the base model's three)."""
    pixels = image.astype(np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - PALETTE[None, None], axis=-1)  # (H, W, 8)
    nearest = distances.argmin(-1)
    border = np.concatenate([nearest[:2].ravel(), nearest[-2:].ravel(), nearest[:, :2].ravel(), nearest[:, -2:].ravel()])
    background = int(np.bincount(border, minlength=len(PALETTE)).argmax())
    # object pixels: clearly away from the background colour; opening drops anti-aliased seams
    foreground = (distances[..., background] > 80).astype(np.uint8)
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    h, w = foreground.shape
    objects = []
    for i in sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA]):
        if stats[i, cv2.CC_STAT_AREA] < MIN_OBJECT_PIXELS:
            continue
        mask = labels == i
        colour = int(np.bincount(nearest[mask], minlength=len(PALETTE)).argmax())
        cx, cy = centroids[i]
        shape = judge_concept_shape(mask) if concept_shapes else classify_shape(mask)
        objects.append(JudgedObject(PALETTE_NAMES[colour], shape, nearest_position(cx / w, cy / h), mask))
    return Judgement(PALETTE_NAMES[background], tuple(objects))


@torch.no_grad()
def judge_latents(classifier: LatentClassifier, latents: torch.Tensor, t: int = 0) -> list[Judgement]:
    """Judge (B, 4, h, w) scaled latents with the noisy-latent classifier at timestep t."""
    logits = classifier(latents.float(), torch.tensor([t], device=latents.device))
    colours = logits["cell_colour"].argmax(1).cpu().numpy()
    shapes = logits["cell_shape"].argmax(1).cpu().numpy()
    backgrounds = logits["background"].argmax(1).cpu().numpy()
    judgements = []
    for colour_cells, shape_cells, background in zip(colours, shapes, backgrounds):
        h, w = colour_cells.shape
        count, labels, stats, centroids = cv2.connectedComponentsWithStats((colour_cells > 0).astype(np.uint8), connectivity=4)
        objects = []
        for i in sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA]):
            if stats[i, cv2.CC_STAT_AREA] < MIN_OBJECT_CELLS:
                continue
            mask = labels == i
            colour = np.bincount(colour_cells[mask], minlength=len(COLOUR_NAMES))[1:].argmax() + 1
            shape = np.bincount(shape_cells[mask], minlength=len(SHAPE_NAMES))[1:].argmax() + 1
            cx, cy = (centroids[i] + 0.5) / (w, h)
            objects.append(JudgedObject(COLOUR_NAMES[colour], SHAPE_NAMES[shape], nearest_position(cx, cy), mask))
        judgements.append(Judgement(BACKGROUND_NAMES[background], tuple(objects)))
    return judgements
