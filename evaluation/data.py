"""The data of the downstream protocol, at one square size: the real category (its OK
training images, the few-shot split of one defect type, the held-out test set) and the
synthetic set's pairs.

Images are resized bicubic to ``size``; masks bilinear, then >= 128 (as generation does).
Every error names the file or folder and what was expected (InputError: a usage error).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from adabldm_core.io import InputError, list_images, read_gray, read_image
from PIL import Image

from adabldm_ref.fewshot import (
    ShotFile,
    Split,
    data_digest,
    load_backgrounds,
    load_shot,
    pair_files,
    split_files,
)
from adabldm_ref.train_run import read_split

from .synthetic import SyntheticSample

MASK_AT = 128


@dataclass(frozen=True)
class Pairs:
    """Images with their masks at one size; OK images have an empty mask."""

    names: tuple[str, ...]
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) bool

    def __len__(self) -> int:
        return len(self.names)

    def __add__(self, other: Pairs) -> Pairs:
        return Pairs(self.names + other.names, np.concatenate([self.images, other.images]),
                     np.concatenate([self.masks, other.masks]))


@dataclass(frozen=True)
class RealData:
    train_defects: Pairs  # the split's training shots
    train_ok: Pairs  # train/good
    test: Pairs  # held-out defects, then test/good
    split: Split


def rgb_at(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 of an image file (gray repeated, alpha dropped)."""
    array = read_image(path)
    array = np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))


def check_defect_mask(mask: np.ndarray, path: Path) -> None:
    """Raise unless ``mask`` (uint8, as read) marks a defect at the >= MASK_AT threshold.

    A defect mask without such a pixel would silently become "no defect": a 0/1 mask (a
    common export) gave an all-normal test set and a failure in the metrics, after training."""
    if (mask >= MASK_AT).any():
        return
    peak = int(mask.max())
    hint = " (a 0/1 mask: scale it to 0/255)" if peak == 1 else ""
    raise InputError(f"mask {path} has no pixel >= {MASK_AT} (largest value {peak}){hint}: expected a defect"
                     " mask, 0 for background and 255 for the defect")


def mask_at(path: Path, size: int, shape: tuple[int, int] | None = None, image: Path | None = None) -> np.ndarray:
    """(size, size) bool of a defect mask file; ``shape``: its image's (H, W), which it must match."""
    mask = read_gray(path)
    if shape is not None and mask.shape != shape:
        raise InputError(f"mask {path} ({mask.shape[1]}x{mask.shape[0]}) does not match its image {image}"
                         f" ({shape[1]}x{shape[0]})")
    check_defect_mask(mask, path)
    small = np.asarray(Image.fromarray(mask).resize((size, size), Image.BILINEAR)) >= MASK_AT
    if not small.any():  # a thin defect averaged away: its image would count as defect-free
        raise InputError(f"mask {path}: its defect vanishes at {size} px (thinner than a pixel there);"
                         " use a larger --size")
    return small


def load_pair(image: Path, mask: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    shape = read_image(image).shape[:2]
    return rgb_at(image, size), mask_at(mask, size, shape, image)


def load_pairs(items: Sequence[tuple[str, Path, Path]], size: int) -> Pairs:
    loaded = [load_pair(img, msk, size) for _, img, msk in items]
    return Pairs(tuple(n for n, _, _ in items), np.stack([a for a, _ in loaded]), np.stack([m for _, m in loaded]))


def load_ok(folder: Path, size: int, what: str) -> Pairs:
    files = list_images(folder, what)
    images = np.stack([rgb_at(p, size) for p in files])
    return Pairs(tuple(p.name for p in files), images, np.zeros(images.shape[:3], dtype=bool))


def _same_data(record: dict, files: Sequence[ShotFile]) -> bool:
    """Whether the record's data digest is that of ``files``' training shots with the
    record's OK images (its images folder must still exist)."""
    from adabldm_ref.train import TrainConfig

    cfg = record.get("config", {})
    images = Path(cfg.get("images", ""))
    if not images.is_dir():
        return False
    tc = TrainConfig(images=images, defects=Path("."), defect_masks=Path("."), out=Path("."), object_name="x",
                     defect="x", rotate=cfg.get("rotate", 360.0), scale=tuple(cfg.get("scale", (0.85, 1.15))))
    train = [f for f in files if f.name in set(record["split"]["train"])]
    shots = [load_shot(f, int(cfg["resolution"]), tc.augment.binarize_at) for f in train]
    fg = cfg.get("foreground")
    backgrounds = load_backgrounds(images, int(cfg["resolution"]), Path(fg) if fg else None,
                                   cfg.get("foreground_mode", "full"))
    return data_digest(backgrounds, shots) == record.get("data", {}).get("digest")


def recorded_split(run_dir: Path, files: Sequence[ShotFile], defects: Path, defect: str) -> Split:
    """The split adabldm-train recorded in ``run_dir``, checked against this category."""
    split, record = read_split(run_dir)
    cfg = record.get("config", {})
    if cfg.get("defect") != defect:
        raise InputError(f"--split {run_dir} is a split of defect {cfg.get('defect')!r}, not {defect!r}")
    names = {f.name for f in files}
    if set(split.train) | set(split.held_out) != names or set(split.train) & set(split.held_out):
        raise InputError(f"--split {run_dir} names the defects {sorted(set(split.train) | set(split.held_out))},"
                         f" {defects} holds {sorted(names)}: a split of another category or folder")
    same_folder = Path(cfg.get("defects", "")).resolve() == defects.resolve()
    if not same_folder and not _same_data(record, files):
        raise InputError(f"--split {run_dir} was made on {cfg.get('defects')} (object {cfg.get('object_name')!r}),"
                         f" whose training data is not that of {defects}: a split of another category")
    return split


def load_real(category: Path, defect: str, size: int, split_dir: Path | None = None) -> RealData:
    """The real side of the protocol; the held-out defect images are read only into ``test``."""
    defects, masks = category / "test" / defect, category / "ground_truth" / defect
    for folder in (defects, masks, category / "train" / "good", category / "test" / "good"):
        if not folder.is_dir():
            raise InputError(f"--real {category}: no folder {folder.relative_to(category)} (expected an MVTec AD"
                             " category: train/good, test/good, test/<defect>, ground_truth/<defect>)")
    files = pair_files(defects, masks)
    split = recorded_split(split_dir, files, defects, defect) if split_dir else split_files(files, None, defects)[1]
    if not split.held_out:
        raise InputError(f"--real {category}: all {len(files)} {defect} image(s) train ({split.rule}); none is held"
                         " out to test on")
    by_name = {f.name: f for f in files}
    train = load_pairs([(n, by_name[n].image, by_name[n].mask) for n in split.train], size)
    held = load_pairs([(n, by_name[n].image, by_name[n].mask) for n in split.held_out], size)
    test_ok = load_ok(category / "test" / "good", size, "OK test image (test/good)")
    return RealData(train, load_ok(category / "train" / "good", size, "OK training image (train/good)"),
                    held + test_ok, split)


def load_synthetic(samples: Sequence[SyntheticSample], size: int) -> Pairs:
    return load_pairs([(f"synthetic:{s.defect}/{s.index:04d}", s.image, s.mask) for s in samples], size)


def pixel_hashes(pairs: Pairs) -> set[str]:
    return {hashlib.sha256(img.tobytes()).hexdigest() for img in pairs.images}


def check_no_leak(train: Pairs, test: Pairs, split: Split, samples: Sequence[SyntheticSample], held_masks: Sequence[Path]) -> None:
    """Raise if a held-out image reaches training: by name, by pixels, or as the mask a
    synthetic sample was made from (a bulk job given every real mask, held-out ones too)."""
    held = set(split.held_out)
    leaked = sorted(held & {n for n in train.names if not n.startswith("synthetic:")})
    same = pixel_hashes(train) & pixel_hashes(Pairs(test.names, test.images[: len(held)], test.masks[: len(held)]))
    if leaked or same:
        raise RuntimeError(f"held-out defects reach training: {leaked or f'{len(same)} identical image(s)'}")
    held_paths = {p.resolve() for p in held_masks}
    for s in samples:
        if s.mask_source and not s.mask_source.startswith("procedural:") and Path(s.mask_source).resolve() in held_paths:
            raise InputError(f"synthetic sample {s.defect}/{s.index:04d} was made from held-out mask {s.mask_source}:"
                             " generate with --masks holding the training shots' masks only")
