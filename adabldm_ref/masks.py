"""Trimaps and masks (ALGORITHM.md, "The trimap" and the latent/pixel masks).

All arrays are numpy, (H, W); boolean masks are ``bool``, images ``uint8``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from .config import MaskConfig

BACKGROUND, OBJECT, DEFECT = 0, 127, 255  # trimap levels


class PlacementError(ValueError):
    """No position puts every defect pixel inside the foreground."""


@dataclass(frozen=True)
class Placement:
    """Where and how a defect mask was placed (recorded per sample in the manifest)."""

    top: int
    left: int
    height: int
    width: int
    angle: float
    scale: float
    tries: int
    # True when the rotated/scaled defect kept no pixel >= the threshold (a thin scratch
    # scaled down) and was resampled to keep every pixel it touches instead.
    thin_resampled: bool = False


def resize_gray(mask: np.ndarray, size: int, resample=Image.BILINEAR) -> np.ndarray:
    """Resize a uint8 (H, W) image to (size, size)."""
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), resample))


def touched_at(mask: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 0/255 of every output pixel a bool ``mask`` touches (area
    coverage > 0): a defect thinner than a pixel at ``size``, which a plain resize and the
    threshold would lose entirely, keeps at least one pixel of width."""
    return np.where(resize_gray(mask.astype(np.float32), size, Image.BOX) > 0, 255, 0).astype(np.uint8)


# Otsu components smaller than this fraction of the image are specks of lit background,
# not objects (a 256 px image: 327 px, about 18 x 18).
FOREGROUND_MIN_AREA = 0.005
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connected components


def foreground_mask(gray: np.ndarray, mode: str = "full", min_area: float = FOREGROUND_MIN_AREA) -> np.ndarray:
    """Object mask F of a uint8 (H, W) image: whole image (texture) or Otsu + 5x5 close.

    Otsu splits the image in two; the object is the class that touches the border less.
    Its components smaller than ``min_area`` (a fraction of the image) are dropped, the
    largest one always kept.
    """
    if mode == "full":
        return np.ones(gray.shape, dtype=bool)
    if mode != "otsu":
        raise ValueError(f"foreground mode {mode!r}: expected 'full' or 'otsu'")
    from skimage.filters import threshold_otsu

    bright = gray > threshold_otsu(gray) if gray.min() < gray.max() else np.ones_like(gray, bool)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    fg = bright if border.mean() <= 0.5 else ~bright
    fg = ndimage.binary_closing(fg, structure=np.ones((5, 5)), border_value=0) | fg
    if not fg.any():
        raise PlacementError("Otsu foreground is empty: supply a foreground mask or use 'full'")
    labels, n = ndimage.label(fg, structure=_EIGHT)
    if n > 1 and min_area > 0:
        areas = np.bincount(labels.ravel())[1:]
        keep = (areas >= min_area * fg.size) | (areas == areas.max())
        fg = np.concatenate([[False], keep])[labels]
    return fg


def component_sides(foreground: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(sides, areas) of the foreground's 8-connected components: side is the diameter of
    the largest disk inside the component (the image's side for a full foreground), the
    canvas a procedural mask is drawn on so that it fits the component."""
    labels, n = ndimage.label(foreground, structure=_EIGHT)
    if n == 0:
        return (), ()
    # Distance to the nearest background pixel, the image border counting as background.
    depth = ndimage.distance_transform_edt(np.pad(foreground, 1))[1:-1, 1:-1]
    index = np.arange(1, n + 1)
    sides = tuple(max(1, int(2 * d)) for d in ndimage.maximum(depth, labels, index))
    areas = tuple(int(a) for a in np.bincount(labels.ravel())[1:])
    return sides, areas


@dataclass(frozen=True)
class SizedToForeground:
    """A mask source drawn on the canvas of one foreground component instead of the whole
    image: procedural defects are sized relative to their canvas, so on an image-sized
    canvas they fit a texture and nowhere on a small object.

    The component is drawn with probability proportional to its area (no draw when there
    is one); ``source.draw(rng, side)`` then makes the mask, padded to the image size.
    """

    source: object  # a MaskSource (pipeline.py), e.g. ProceduralMasks
    sides: tuple[int, ...]
    areas: tuple[int, ...]

    def draw(self, rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
        k = 0 if len(self.sides) == 1 else int(rng.choice(len(self.sides), p=np.divide(self.areas, sum(self.areas))))
        side = min(self.sides[k], size)
        name, mask = self.source.draw(rng, side)
        if side == size:
            return name, mask
        canvas = np.zeros((size, size), dtype=np.uint8)
        canvas[:side, :side] = mask
        return name, canvas


def binarize(mask: np.ndarray, threshold: int = 200) -> np.ndarray:
    return mask >= threshold


def crop_to_content(mask: np.ndarray) -> np.ndarray:
    """Crop a bool mask to the bounding box of its True pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise PlacementError("defect mask has no pixel >= the binarisation threshold")
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def transform_defect(mask: np.ndarray, angle: float, scale: float, threshold: int) -> np.ndarray:
    """Rotate (expanded canvas) and scale a cropped bool mask, re-binarise, re-crop."""
    return _transform(mask, angle, scale, threshold)[0]


def _transform(mask: np.ndarray, angle: float, scale: float, threshold: int) -> tuple[np.ndarray, bool]:
    """(transformed mask, whether it was resampled as thin).

    Bilinear rotation and resize, re-binarised at ``threshold``. A defect thinner than a
    pixel after the transform (a 1 px scratch at scale 0.3 peaks near 77) keeps no pixel
    >= ``threshold``; it is then resampled to every output pixel it touches (area
    coverage > 0), so it keeps at least one pixel of width along its length.
    """
    m = _resample(mask.astype(np.uint8) * 255, angle, scale, Image.BILINEAR)
    kept = m >= threshold
    if kept.any():
        return crop_to_content(kept), False
    touched = _resample(mask.astype(np.float32), angle, scale, Image.BOX) > 0
    return crop_to_content(touched), True


def _resample(m: np.ndarray, angle: float, scale: float, resample) -> np.ndarray:
    if angle:
        m = ndimage.rotate(m, angle, reshape=True, order=1, mode="constant", cval=0)
    if scale != 1.0:
        h, w = m.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        m = np.asarray(Image.fromarray(m).resize(size, resample))
    return m


def valid_offsets(defect: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(N, 2) top-left offsets at which every defect pixel falls inside the foreground."""
    (h, w), (H, W) = defect.shape, foreground.shape
    if h > H or w > W:
        return np.zeros((0, 2), dtype=int)
    outside = (~foreground).astype(np.float64)
    # Count of defect pixels outside F for every offset (FFT correlation, exact after rounding).
    hits = signal.fftconvolve(outside, defect[::-1, ::-1].astype(np.float64), mode="valid")
    return np.argwhere(hits < 0.5)


def place_defect(
    source: np.ndarray, foreground: np.ndarray, cfg: MaskConfig, rng: np.random.Generator
) -> tuple[np.ndarray, Placement]:
    """Defect mask M (bool, foreground's shape) from a real uint8 mask of the same size.

    The real mask is binarised and cropped to its bounding box, optionally rotated and
    scaled, then put at a uniformly random offset that keeps it inside the foreground.
    """
    cropped = crop_to_content(binarize(source, cfg.binarize_at))
    lo, hi = cfg.scale
    for tries in range(1, cfg.max_tries + 1):
        angle = float(rng.uniform(0.0, cfg.rotate)) if cfg.rotate else 0.0
        scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        defect, thin = _transform(cropped, angle, scale, cfg.binarize_at)
        offsets = valid_offsets(defect, foreground)
        if len(offsets):
            top, left = (int(v) for v in offsets[rng.integers(len(offsets))])
            mask = np.zeros(foreground.shape, dtype=bool)
            mask[top : top + defect.shape[0], left : left + defect.shape[1]] = defect
            return mask, Placement(top, left, *defect.shape, angle, scale, tries, thin)
        if not cfg.rotate and hi <= lo:
            break  # deterministic transform: another try cannot fit either
    raise PlacementError(
        f"defect of {cropped.shape[0]}x{cropped.shape[1]} px (rotation <= {cfg.rotate} deg,"
        f" scale {lo}-{hi}) fits nowhere inside a foreground of {int(foreground.sum())} px"
        f" in {foreground.shape[0]}x{foreground.shape[1]} after {tries} tries"
    )


def make_trimap(foreground: np.ndarray, defect: np.ndarray) -> np.ndarray:
    """Trimap (H, W) uint8: 0 background, 127 object, 255 defect."""
    trimap = np.where(foreground, OBJECT, BACKGROUND).astype(np.uint8)
    trimap[defect] = DEFECT
    return trimap


def nearest_downsample(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest resize with OpenCV's INTER_NEAREST indexing (src = floor(dst * scale))."""
    rows = np.floor(np.arange(size) * image.shape[0] / size).astype(int)
    cols = np.floor(np.arange(size) * image.shape[1] / size).astype(int)
    return image[np.ix_(rows, cols)]


def latent_keep_mask(trimap: np.ndarray, stride: int, cfg: MaskConfig) -> np.ndarray:
    """m_keep (H/stride, W/stride) float32: 1 = keep the OK latent, 0 = generate.

    Defect cells are found by nearest resize (authors) or, with ``keep_thin``, by "any
    pixel of the cell is defect", so defects thinner than the stride are not lost; then
    dilated with a square of side ``latent_dilation``.
    """
    size = trimap.shape[0] // stride
    if cfg.keep_thin:
        h, w = trimap.shape
        blocks = trimap.reshape(h // stride, stride, w // stride, stride)
        defect = blocks.max(axis=(1, 3)) >= cfg.binarize_at
    else:
        defect = nearest_downsample(trimap, size) >= cfg.binarize_at
    if cfg.latent_dilation > 1:
        k = np.ones((cfg.latent_dilation, cfg.latent_dilation), dtype=bool)
        defect = ndimage.binary_dilation(defect, structure=k)
    return (~defect).astype(np.float32)
