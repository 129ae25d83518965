"""Figures of a synthesis run's output folder: is the background the source, is the defect visible?

Per sample (uint8 images): background PSNR of the output against the source outside M,
and defect strength = mean |output - source| inside M / the same outside M (1: nothing
stands out; the issue's target is >= 5).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adabldm_core.metrics import masked_psnr


def sample_figures(image: np.ndarray, source: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """image, source (H, W, 3) uint8; mask (H, W) bool (the defect M)."""
    diff = np.abs(image.astype(np.float64) - source.astype(np.float64)).mean(axis=2)
    inside, outside = diff[mask].mean(), diff[~mask].mean()
    return {"bg_psnr": masked_psnr(image, source, ~mask), "strength": float(inside / max(outside, 1e-6)),
            "change_inside": float(inside), "change_outside": float(outside)}


def run_figures(out: Path, defect: str) -> dict:
    """Per-sample figures and their means for an adabldm-run output folder (MVTec layout)."""
    out = Path(out)
    rows = []
    for path in sorted((out / "test" / defect).glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        source = np.asarray(Image.open(out / "extra" / defect / f"{path.stem}_source.png").convert("RGB"))
        mask = np.asarray(Image.open(out / "ground_truth" / defect / f"{path.stem}_mask.png")) >= 128
        rows.append({"sample": path.stem, **sample_figures(image, source, mask)})
    if not rows:
        raise ValueError(f"no samples in {out / 'test' / defect}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("bg_psnr", "strength", "change_inside", "change_outside")}
    return {"samples": rows, "mean": mean}
