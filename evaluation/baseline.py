"""The classic synthetic baseline: defects pasted through the synthetic set's own masks.

Sample k (mask M from the synthetic set, its OK source image) alternates two kinds:

- ``cutpaste`` (CutPaste, Li et al., CVPR 2021): inside M, the pixels of another region of
  another OK image (random offset and dihedral turn), brightness scaled by U(0.8, 1.2);
- ``noise`` (DRAEM, Zavrtanik et al., ICCV 2021, without its DTD textures): inside M,
  beta * source + (1 - beta) * a smooth random colour pattern (Gaussian-filtered noise at a
  random scale, stretched to [0, 255]), beta ~ U(0.1, 0.6).

Outside M every pixel is the source's. Deterministic in (seed, k).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .data import Pairs

KINDS = ("cutpaste", "noise")


def cut_paste(source: np.ndarray, mask: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = source.shape[0]
    turned = np.rot90(donor, int(rng.integers(0, 4)))
    shift = rng.integers(size // 4, 3 * size // 4, 2)
    patch = np.roll(turned, tuple(int(v) for v in shift), axis=(0, 1)).astype(np.float64) * rng.uniform(0.8, 1.2)
    return np.where(mask[:, :, None], np.clip(patch, 0, 255), source).round().astype(np.uint8)


def noise_pattern(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float in [0, 255]: smooth coloured noise at a random scale."""
    sigma = rng.uniform(1.0, 6.0)
    field = ndimage.gaussian_filter(rng.normal(size=(*shape, 3)), sigma=(sigma, sigma, 0))
    lo, hi = field.min(axis=(0, 1)), field.max(axis=(0, 1))
    return (field - lo) / np.maximum(hi - lo, 1e-9) * 255.0


def noise_blend(source: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    beta = rng.uniform(0.1, 0.6)
    blended = beta * source.astype(np.float64) + (1 - beta) * noise_pattern(mask.shape, rng)
    return np.where(mask[:, :, None], blended, source).round().astype(np.uint8)


def baseline_pairs(sources: np.ndarray, masks: np.ndarray, donors: np.ndarray, seed: int) -> Pairs:
    """(N, S, S, 3) sources and (N, S, S) masks -> the baseline's N pairs; ``donors``: OK
    images to cut from (a donor other than the source where there are two or more)."""
    images = []
    for k, (source, mask) in enumerate(zip(sources, masks)):
        rng = np.random.default_rng([seed, k, 7])
        if KINDS[k % 2] == "cutpaste":
            choices = [d for d in donors if not np.array_equal(d, source)] or list(donors)
            images.append(cut_paste(source, mask, choices[int(rng.integers(len(choices)))], rng))
        else:
            images.append(noise_blend(source, mask, rng))
    names = tuple(f"baseline:{KINDS[k % 2]}/{k:04d}" for k in range(len(images)))
    return Pairs(names, np.stack(images), masks.copy())
