"""Contact sheet: one row per sample (source | trimap | blended | adapted | mask)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

TILE = 160  # px per tile: small enough for hundreds of rows, large enough to judge a defect
PAD = 4
HEADER = 18


def _rgb_tile(array: np.ndarray, size: int) -> Image.Image:
    image = Image.fromarray(array).convert("RGB")
    return image.resize((size, size), Image.NEAREST if array.ndim == 2 else Image.BILINEAR)


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str], row_names: Sequence[str], tile: int = TILE
) -> np.ndarray:
    """(H, W, 3) uint8 grid of uint8 images; column labels on top, row names at left."""
    cols = len(labels)
    name_w = 44
    width = name_w + cols * (tile + PAD) + PAD
    height = HEADER + len(rows) * (tile + PAD) + PAD
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((name_w + PAD + c * (tile + PAD), 3), label, fill=(230, 230, 230))
    for r, (images, name) in enumerate(zip(rows, row_names)):
        y = HEADER + r * (tile + PAD)
        draw.text((4, y + tile // 2 - 6), name, fill=(230, 230, 230))
        for c, array in enumerate(images):
            sheet.paste(_rgb_tile(array, tile), (name_w + PAD + c * (tile + PAD), y))
    return np.asarray(sheet)
