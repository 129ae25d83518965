"""Image quality figures recorded per sample: PSNR, over all pixels or a region.

One formula, in float64: 10 log10(peak^2 / MSE), inf for identical images. ``peak`` is the
range of the values: 255 for uint8 images, 2 for images in [-1, 1].
"""
from __future__ import annotations

import numpy as np


def _float64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device and of any dtype (bf16 too)
        x = x.detach().cpu().double()
    return np.asarray(x, dtype=np.float64)


def psnr(a, b, peak: float = 255.0) -> float:
    """PSNR (dB) of two images (numpy arrays or torch tensors) of one shape, over all
    their values; inf if they are identical."""
    a, b = _float64(a), _float64(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes {a.shape} and {b.shape} do not match")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def masked_psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray, peak: float = 255.0) -> float:
    """PSNR (dB) of uint8 images (H, W, C) over the pixels where ``region`` (H, W) is True.

    Returns inf for identical regions and nan for an empty region.
    """
    if a.shape != b.shape or a.shape[:2] != region.shape:
        raise ValueError(f"shapes {a.shape}, {b.shape} and region {region.shape} do not match")
    if not region.any():
        return float("nan")
    return psnr(a[region], b[region], peak)
