"""Procedural defect masks (blobs, scratches, cracks) for users without real masks.

Each generator is a pure function of a numpy Generator and a size and returns a uint8
(size, size) mask with values 0 / 255, the format of a real few-shot mask.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

KINDS = ("blob", "scratch", "crack")


def blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular stain: thresholded smooth noise inside a random ellipse."""
    r = size * rng.uniform(0.06, 0.16)
    yy, xx = np.mgrid[:size, :size] - size / 2
    a, b = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    ellipse = 1.0 - (u / a) ** 2 - (v / b) ** 2
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=max(1.0, r / 3))
    field = ellipse + 0.6 * noise / (noise.std() + 1e-8)
    mask = field > 0
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the largest piece: one defect, not a scatter
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    if not mask.any():
        mask[size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = True
    return mask.astype(np.uint8) * 255


def _polyline(rng: np.random.Generator, size: int, length: float, wiggle: float, start=None):
    """A random walk of ~12 segments with slowly turning heading."""
    x, y = start if start is not None else rng.uniform(0.3, 0.7, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    for _ in range(12):
        heading += rng.normal(0, wiggle)
        x += np.cos(heading) * length / 12
        y += np.sin(heading) * length / 12
        points.append((x, y))
    return points


def scratch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin, gently curved line, 1-3 px wide."""
    image = Image.new("L", (size, size), 0)
    pts = _polyline(rng, size, size * rng.uniform(0.25, 0.6), wiggle=0.08)
    ImageDraw.Draw(image).line(pts, fill=255, width=int(rng.integers(1, 4)))
    return np.asarray(image)


def crack(rng: np.random.Generator, size: int) -> np.ndarray:
    """A jagged line with one or two branches, 1-2 px wide."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    trunk = _polyline(rng, size, size * rng.uniform(0.25, 0.5), wiggle=0.5)
    draw.line(trunk, fill=255, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(1, 3))):
        start = trunk[int(rng.integers(2, len(trunk) - 2))]
        branch = _polyline(rng, size, size * rng.uniform(0.08, 0.2), wiggle=0.6, start=start)
        draw.line(branch, fill=255, width=1)
    return np.asarray(image)


GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "blob": blob,
    "scratch": scratch,
    "crack": crack,
}


def procedural_mask(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A uint8 (size, size) defect mask of the given kind ('blob', 'scratch', 'crack')."""
    if kind not in GENERATORS:
        raise ValueError(f"procedural defect kind {kind!r}: expected one of {', '.join(KINDS)}")
    return GENERATORS[kind](rng, size)
