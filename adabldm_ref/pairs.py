"""Training pairs of a trimap ControlNet, made on the fly (ALGORITHM.md, "Training").

A pair is (target image, trimap, prompt): a real defect, cropped by its mask's bounding
box, rotated on an expanded canvas, scaled, re-binarised and pasted onto an OK image at
a uniformly random position with every defect pixel inside the foreground F. Pair
``index`` of optimiser step ``step`` depends on ``(seed, step, index)`` alone, so a
resumed run sees the same pairs as an uninterrupted one, whatever the batch layout.

Where the authors' builder differs (their accidents, not the method): it scales with
(height, width) swapped and the pre-rotation size, drops the last row and column of the
bounding box, thresholds the foreground at 127 and writes pairs at native resolution
(soft trimap edges after resizing). Here the crop is inclusive, the scale isotropic on
the rotated canvas, F is the project's foreground and the shots are brought to the
working resolution before the crop, so trimaps are crisp as at generation time.

Arrays are numpy: images (H, W, 3) uint8, masks (H, W) bool, trimaps (H, W) uint8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from .masks import PlacementError, make_trimap, valid_offsets


@dataclass(frozen=True)
class Shot:
    """One real defect at the working resolution: its image and binary mask (>= 200)."""

    name: str
    rgb: np.ndarray  # (R, R, 3) uint8
    mask: np.ndarray  # (R, R) bool, at least one pixel


@dataclass(frozen=True)
class Background:
    """An OK image at the working resolution with its foreground F (never None here)."""

    name: str
    rgb: np.ndarray  # (R, R, 3) uint8
    foreground: np.ndarray  # (R, R) bool


@dataclass(frozen=True)
class Augment:
    """The pair builder's randomness (the paper's augmentation)."""

    rotate: float = 360.0  # rotation uniform in [0, rotate] degrees, expanded canvas
    scale: tuple[float, float] = (0.85, 1.15)  # isotropic scale uniform in [low, high]
    binarize_at: int = 200  # the transformed mask is defect where >= this (0..255)
    max_tries: int = 20  # random transforms tried before the fallback: the defect as it is

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale range {lo},{hi}: expected 0 < low <= high")
        if not 0 <= self.rotate <= 360:
            raise ValueError(f"rotation {self.rotate}: expected 0..360 degrees")


@dataclass(frozen=True)
class Pair:
    """One training pair and how it was made (recorded for tests and inspection)."""

    target: np.ndarray  # (R, R, 3) uint8: OK pixels outside M, the shot's pixels inside
    trimap: np.ndarray  # (R, R) uint8: 0 outside F, 127 in F, 255 in M
    mask: np.ndarray  # (R, R) bool, M
    shot: str
    background: str
    top: int
    left: int
    angle: float
    scale: float
    tries: int  # random transforms drawn; max_tries + 1 means the fallback was used


def pair_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator of pair ``index`` at optimiser step ``step`` of a run seeded ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, step, index]))


def crop_shot(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask cropped to the mask's bounding box, last row and column included."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise PlacementError("defect mask is empty")
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return rgb[box], mask[box]


def transform_shot(
    rgb: np.ndarray, mask: np.ndarray, angle: float, scale: float, threshold: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate (expanded canvas, bilinear) and scale (bilinear) a cropped shot, re-binarise
    the mask at ``threshold`` and crop both to its new bounding box.

    The same geometry as :func:`adabldm_ref.masks.transform_defect` (generation time).
    The image is extended by its edge pixels so bilinear taps at the crop border read
    defect pixels, not black. Raises PlacementError if no mask pixel survives.
    """
    img, m = rgb.astype(np.float32), mask.astype(np.float32) * 255.0
    if angle:
        img = ndimage.rotate(img, angle, axes=(1, 0), reshape=True, order=1, mode="nearest")
        m = ndimage.rotate(m, angle, axes=(1, 0), reshape=True, order=1, mode="constant", cval=0.0)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    m = np.clip(np.rint(m), 0, 255).astype(np.uint8)
    if scale != 1.0:
        h, w = m.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        m = np.asarray(Image.fromarray(m).resize(size, Image.BILINEAR))
    return crop_shot(img, m >= threshold)


def paste(background: Background, rgb: np.ndarray, mask: np.ndarray, top: int, left: int):
    """(target, M, trimap): the defect's pixels over the OK image where its mask is set."""
    h, w = mask.shape
    full = np.zeros(background.foreground.shape, dtype=bool)
    full[top : top + h, left : left + w] = mask
    target = background.rgb.copy()
    region = target[top : top + h, left : left + w]
    region[mask] = rgb[mask]
    return target, full, make_trimap(background.foreground, full)


def fits(shot: Shot, background: Background) -> bool:
    """Whether ``shot`` as it is (the fallback) has a position inside ``background``'s F."""
    return len(valid_offsets(crop_shot(shot.rgb, shot.mask)[1], background.foreground)) > 0


def make_pair(
    seed: int,
    step: int,
    index: int,
    shots: Sequence[Shot],
    backgrounds: Sequence[Background],
    hosts: Sequence[Sequence[int]],
    aug: Augment,
) -> Pair:
    """Pair ``index`` of step ``step``: a uniformly drawn shot on one of its ``hosts``.

    ``hosts[k]`` lists the backgrounds that hold shot ``k`` as it is (see :func:`fits`;
    never empty), so a pair always exists: random transforms are tried up to
    ``aug.max_tries`` times (one may not fit, or may erase a thin defect), then the
    untransformed shot is placed (angle 0, scale 1, ``tries`` = max_tries + 1).
    """
    rng = pair_rng(seed, step, index)
    k = int(rng.integers(len(shots)))
    shot, bg = shots[k], backgrounds[hosts[k][int(rng.integers(len(hosts[k])))]]
    cropped = crop_shot(shot.rgb, shot.mask)
    lo, hi = aug.scale
    for tries in range(1, aug.max_tries + 2):
        if tries <= aug.max_tries:
            angle = float(rng.uniform(0.0, aug.rotate)) if aug.rotate else 0.0
            scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        else:
            angle, scale = 0.0, 1.0
        try:
            rgb, mask = transform_shot(*cropped, angle, scale, aug.binarize_at)
        except PlacementError:  # a thin defect can vanish when rotated or shrunk
            continue
        offsets = valid_offsets(mask, bg.foreground)
        if len(offsets):
            top, left = (int(v) for v in offsets[rng.integers(len(offsets))])
            target, full, trimap = paste(bg, rgb, mask, top, left)
            return Pair(target, trimap, full, shot.name, bg.name, top, left, angle, scale, tries)
    raise PlacementError(f"defect {shot.name} fits nowhere in {bg.name}, not even untransformed")


def make_pairs(
    seed: int,
    step: int,
    count: int,
    shots: Sequence[Shot],
    backgrounds: Sequence[Background],
    hosts: Sequence[Sequence[int]],
    aug: Augment,
    first: int = 0,
) -> list[Pair]:
    """Pairs ``first .. first+count-1`` of step ``step``."""
    return [make_pair(seed, step, i, shots, backgrounds, hosts, aug) for i in range(first, first + count)]


def host_table(shots: Sequence[Shot], backgrounds: Sequence[Background]) -> list[list[int]]:
    """For each shot, the indices of the backgrounds that can hold it (may be empty)."""
    return [[j for j, bg in enumerate(backgrounds) if fits(shot, bg)] for shot in shots]
