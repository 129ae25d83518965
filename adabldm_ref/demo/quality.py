"""Figures of a synthesis run's output folder: is the background the source, is the defect visible?

Per sample (uint8 images): background PSNR of the output against the source outside M,
and defect strength = mean |output - source| inside M / the same outside M (1: nothing
stands out; the issue's target is >= 5).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from adabldm_core.metrics import masked_psnr
from PIL import Image


def sample_figures(image: np.ndarray, source: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """image, source (H, W, 3) uint8; mask (H, W) bool (the defect M)."""
    diff = np.abs(image.astype(np.float64) - source.astype(np.float64)).mean(axis=2)
    inside, outside = diff[mask].mean(), diff[~mask].mean()
    return {"bg_psnr": masked_psnr(image, source, ~mask), "strength": float(inside / max(outside, 1e-6)),
            "change_inside": float(inside), "change_outside": float(outside)}


def run_figures(out: Path, defect: str) -> dict:
    """Per-sample figures and their means for an adabldm-run output folder (the run root),
    its samples found by their manifest lines (image, mask and source paths)."""
    out = Path(out)
    entries = {}
    for manifest in sorted(out.glob("manifest*.jsonl")):
        for line in manifest.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("defect") == defect:
                entries[entry["index"]] = entry
    rows = []
    for i, entry in sorted(entries.items()):
        image = np.asarray(Image.open(out / entry["image"]).convert("RGB"))
        source = np.asarray(Image.open(out / entry["extra"]["source"]).convert("RGB"))
        mask = np.asarray(Image.open(out / entry["mask"])) >= 128
        rows.append({"sample": f"{i:04d}", **sample_figures(image, source, mask)})
    if not rows:
        raise ValueError(f"no samples of {defect!r} in the manifests of {out}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("bg_psnr", "strength", "change_inside", "change_outside")}
    return {"samples": rows, "mean": mean}
