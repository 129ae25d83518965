"""Image quality figures recorded per sample."""
from __future__ import annotations

import numpy as np


def masked_psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray, peak: float = 255.0) -> float:
    """PSNR (dB) of uint8 images (H, W, C) over the pixels where ``region`` (H, W) is True.

    Returns inf for identical regions and nan for an empty region.
    """
    if a.shape != b.shape or a.shape[:2] != region.shape:
        raise ValueError(f"shapes {a.shape}, {b.shape} and region {region.shape} do not match")
    if not region.any():
        return float("nan")
    diff = a[region].astype(np.float64) - b[region].astype(np.float64)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))
