"""The demo few-shot set, rendered by code into OK texture crops, in the MVTec AD layout.

Three defect kinds that look different: a dark ``crack`` (a branching random-walk line),
a bright ``scratch`` (a long, nearly straight thin line) and a brown ``stain`` (a soft-edged
blob that tints the texture). The mask is exactly the painted pixels (0/255). Layout:
``ROOT/texture/train/good/NNN.png`` (OK crops), ``ROOT/texture/test/{defect}/NNN.png`` and
``ROOT/texture/ground_truth/{defect}/NNN_mask.png`` -- what a user gives adabldm-train -- and
``ROOT/texture/test/good/NNN.png``: held-out OK crops, the defect-free half of the test set
of ``adabldm-eval downstream``. They are drawn after everything else, so the other files are
the bytes the demo model was trained on.

``python -m adabldm_ref.demo.defects --out ROOT`` writes the set (seconds).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFECTS = ("crack", "scratch", "stain")
CATEGORY = "texture"


def ok_crop(texture: np.ndarray, rng: np.random.Generator, size: int = 256, region: int = 384) -> np.ndarray:
    """A random (size, size, 3) uint8 crop of the training square ``texture[:region, :region]``."""
    y, x = (int(v) for v in rng.integers(0, region - size + 1, 2))
    crop = np.rot90(texture[y:y + size, x:x + size], int(rng.integers(0, 4)))
    return np.repeat(np.ascontiguousarray(crop)[:, :, None], 3, axis=2)


def _walk(rng, size: int, n: int, step: float, turn: float, start=None, heading=None) -> list[tuple[float, float]]:
    p = np.array(start if start is not None else rng.uniform(0.3 * size, 0.7 * size, 2))
    a = rng.uniform(0, 2 * np.pi) if heading is None else heading
    pts = [tuple(p)]
    for _ in range(n):
        a += rng.normal(0, turn)
        p = np.clip(p + step * np.array([np.cos(a), np.sin(a)]), 4, size - 5)
        pts.append(tuple(p))
    return pts


def crack_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    trunk = _walk(rng, size, int(rng.integers(10, 16)), size / 22, 0.45)
    draw.line(trunk, fill=255, width=int(rng.integers(4, 7)), joint="curve")
    for _ in range(int(rng.integers(1, 3))):
        start = trunk[int(rng.integers(2, len(trunk) - 2))]
        draw.line(_walk(rng, size, int(rng.integers(3, 6)), size / 26, 0.5, start), fill=255, width=3)
    return np.asarray(img) >= 128


def scratch_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    a = rng.uniform(0, np.pi)
    c = rng.uniform(0.35 * size, 0.65 * size, 2)
    half = rng.uniform(0.25, 0.4) * size
    d = np.array([np.cos(a), np.sin(a)])
    pts = [tuple(c + t * half * d + rng.normal(0, 1.5, 2)) for t in np.linspace(-1, 1, 6)]
    ImageDraw.Draw(img).line(pts, fill=255, width=int(rng.integers(3, 6)), joint="curve")
    return np.asarray(img) >= 128


def stain_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    c = rng.uniform(0.35 * size, 0.65 * size, 2)
    r = rng.uniform(0.08, 0.16) * size
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rad = r * (1 + 0.25 * np.sin(ang * rng.integers(2, 5) + rng.uniform(0, 6)) + rng.normal(0, 0.06, 24))
    ImageDraw.Draw(img).polygon([tuple(c + q * np.array([np.cos(t), np.sin(t)])) for q, t in zip(rad, ang)], fill=255)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(2))) >= 128


def paint(kind: str, ok: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ok`` with the defect painted where ``mask``; pixels outside ``mask`` are unchanged."""
    x = ok.astype(np.float32)
    m = mask[:, :, None]
    if kind == "crack":  # dark, a little texture kept
        y = 10 + 0.15 * x + rng.normal(0, 4, x.shape)
    elif kind == "scratch":  # bright
        y = 235 + 0.08 * x + rng.normal(0, 4, x.shape)
    elif kind == "stain":  # brown tint of the texture
        y = x * np.array([0.85, 0.5, 0.25]) + np.array([40, 15, 0])
    else:
        raise ValueError(f"demo defect {kind!r}: expected one of {', '.join(DEFECTS)}")
    return np.where(m, np.clip(y, 0, 255), x).round().astype(np.uint8)


MASKS = {"crack": crack_mask, "scratch": scratch_mask, "stain": stain_mask}


def write_fewshot(root: Path, textures: dict[str, np.ndarray], shots: int = 12, goods: int = 4,
                  size: int = 256, seed: int = 0, test_goods: int = 4) -> Path:
    """Write the demo set under ``root/texture``; returns that category folder.

    ``goods`` OK crops per texture; ``shots`` defect images per type, on crops of the
    textures in turn; ``test_goods`` held-out OK crops per texture (``test/good``, drawn
    last from the same generator). Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    cat = Path(root) / CATEGORY
    names = list(textures)
    good = cat / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    for i in range(goods * len(names)):
        Image.fromarray(ok_crop(textures[names[i % len(names)]], rng, size)).save(good / f"{i:03d}.png")
    for kind in DEFECTS:
        (cat / "test" / kind).mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(shots):
            ok = ok_crop(textures[names[i % len(names)]], rng, size)
            mask = MASKS[kind](rng, size)
            Image.fromarray(paint(kind, ok, mask, rng)).save(cat / "test" / kind / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(cat / "ground_truth" / kind / f"{i:03d}_mask.png")
    test_good = cat / "test" / "good"
    test_good.mkdir(parents=True, exist_ok=True)
    for i in range(test_goods * len(names)):
        Image.fromarray(ok_crop(textures[names[i % len(names)]], rng, size)).save(test_good / f"{i:03d}.png")
    return cat


def main(argv: list[str] | None = None) -> None:
    import argparse

    from .base import texture_arrays

    p = argparse.ArgumentParser(prog="python -m adabldm_ref.demo.defects",
                                description="Write the demo few-shot set (MVTec AD layout) under OUT/texture.")
    p.add_argument("--out", required=True, help="root folder; the category folder OUT/texture is written")
    p.add_argument("--seed", type=int, default=0, help="0: the set the demo model was trained on")
    args = p.parse_args(argv)
    print(write_fewshot(Path(args.out), texture_arrays(), seed=args.seed))


if __name__ == "__main__":
    main()
