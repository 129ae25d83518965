"""The training data of one (object, defect type): OK images, real defects, the split.

Defect images and masks are paired by name as MVTec AD names them (``NNN.png`` with
``NNN_mask.png``, or equal names), so an MVTec category's ``test/<defect>`` and
``ground_truth/<defect>`` work as they are. The field's protocol (ALGORITHM.md,
"Training") trains on the first third of a defect type's real images in name order and
evaluates on the rest: the held-out files are paired by name (so the split is well
defined and recorded) but never read.

Every error names the file and what was expected (InputError).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from adabldm_core.io import InputError, list_images, read_gray, read_image
from PIL import Image

from .masks import foreground_mask, resize_gray
from .pairs import Background, Shot
from .pipeline import prepare_ok_image

log = logging.getLogger(__name__)

MASK_SUFFIX = "_mask"
FOREGROUND_AT = 128  # a foreground mask file is object where >= 128


@dataclass(frozen=True)
class ShotFile:
    """A real defect image and its mask file; ``name`` is the image's stem."""

    name: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Split:
    """The few-shot split: which real defects train, which are held out for evaluation."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]
    rule: str  # how the split was made, for the record

    def to_dict(self) -> dict:
        return {"train": list(self.train), "held_out": list(self.held_out), "rule": self.rule}


def _mask_key(path: Path) -> str:
    stem = path.stem
    return stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem


def pair_files(defects: Path, masks: Path) -> list[ShotFile]:
    """Defect images paired with their masks by name, in name order.

    ``NNN.*`` pairs with ``NNN_mask.*`` or ``NNN.*`` in the mask folder (which may be the
    image folder, then ``*_mask`` files are the masks). Any unpaired file is an error.
    """
    images = list_images(defects, "defect image")
    mask_files = list_images(masks, "defect mask")
    if Path(defects).resolve() == Path(masks).resolve():
        images = [p for p in images if not p.stem.endswith(MASK_SUFFIX)]
        mask_files = [p for p in mask_files if p.stem.endswith(MASK_SUFFIX)]
    by_key: dict[str, Path] = {}
    for m in mask_files:
        key = _mask_key(m)
        if key in by_key:
            raise InputError(f"defect masks {by_key[key]} and {m} both belong to an image named {key}")
        by_key[key] = m
    stems = {p.stem for p in images}
    for key, m in sorted(by_key.items()):
        if key not in stems:
            raise InputError(f"defect mask {m} has no defect image named {key}.* in {defects}")
    files = []
    for p in images:
        if p.stem not in by_key:
            raise InputError(f"defect image {p} has no mask {p.stem}{MASK_SUFFIX}.* or {p.stem}.* in {masks}")
        files.append(ShotFile(p.stem, p, by_key[p.stem]))
    if len({f.name for f in files}) != len(files):
        raise InputError(f"defect images in {defects} share a name with different suffixes")
    return files


def default_shots(total: int) -> int:
    """The field's protocol: the first third of the real defects (at least one)."""
    return max(1, total // 3)


def split_files(files: Sequence[ShotFile], shots: int | None, where: Path) -> tuple[list[ShotFile], Split]:
    """The first ``shots`` files (name order) train; the rest are held out."""
    k = default_shots(len(files)) if shots is None else shots
    rule = f"first {k} of {len(files)} in name order" + (" (default: a third)" if shots is None else "")
    if k < 1:
        raise InputError(f"--shots {k}: expected at least 1")
    if k > len(files):
        raise InputError(f"--shots {k}: only {len(files)} defect image(s) with masks in {where}")
    split = Split(tuple(f.name for f in files[:k]), tuple(f.name for f in files[k:]), rule)
    return list(files[:k]), split


def low_mask_hint(mask: np.ndarray) -> str:
    """Why a mask with pixels set but none at the threshold is empty: label maps saved as
    0/1 (or 0..k) look black and are a common way to bring masks; say so and how to fix."""
    top = int(mask.max())
    if top == 0:
        return ""
    return f"; its largest value is {top}: masks are 0 (good) / 255 (defect), e.g. a 0/1 mask times 255"


def load_shot(file: ShotFile, resolution: int, threshold: int) -> Shot:
    """A real defect at the working resolution: image bicubic, mask bilinear then >= threshold
    (as generation resizes masks), so training trimaps are as crisp as generation's."""
    rgb, mask = read_image(file.image), read_gray(file.mask)
    if mask.shape != rgb.shape[:2]:
        raise InputError(
            f"defect mask {file.mask} ({mask.shape[1]}x{mask.shape[0]}) does not match"
            f" its image {file.image} ({rgb.shape[1]}x{rgb.shape[0]})"
        )
    if not (mask >= threshold).any():
        raise InputError(f"defect mask {file.mask} has no pixel >= {threshold} (no defect){low_mask_hint(mask)}")
    small = resize_gray(mask, resolution) >= threshold
    if not small.any():
        raise InputError(f"defect mask {file.mask}: its defect vanishes at {resolution} px (thinner than a pixel)")
    return Shot(file.name, prepare_ok_image(rgb, resolution), small)


def _foreground_file(image: Path, candidates: Sequence[Path]) -> Path:
    names = (image.stem, f"{image.stem}{MASK_SUFFIX}")
    found = [p for p in candidates if p.stem in names]
    if not found:
        raise InputError(f"{image}: no foreground mask named {names[0]}.* or {names[1]}.* in {candidates[0].parent}")
    return found[0]


def load_backgrounds(
    images: Path, resolution: int, foreground: Path | None = None, mode: str = "full",
    skipped: list[str] | None = None,
) -> list[Background]:
    """OK images at the working resolution with their foregrounds (a file per image from
    ``foreground``, else :func:`foreground_mask` in ``mode``).

    An OK image that cannot be used (unreadable, or its foreground mask missing, of another
    size or empty) is skipped with a warning naming it, its reason appended to ``skipped``,
    as adabldm-run skips it: one damaged file among many OK images should not stop a
    training. None usable is an InputError.
    """
    paths = list_images(images, "OK image")
    fg_files = list_images(foreground, "foreground mask") if foreground is not None else []
    out = []
    for path in paths:
        try:
            out.append(_load_background(path, resolution, fg_files, mode))
        except InputError as exc:
            log.warning("skipped: %s", exc)
            if skipped is not None:
                skipped.append(str(exc))
    if not out:
        raise InputError(f"none of the {len(paths)} OK image(s) in {images} could be used (see the warnings)")
    return out


def _load_background(path: Path, resolution: int, fg_files: Sequence[Path], mode: str) -> Background:
    """One OK image and its foreground; an InputError names what is wrong with it."""
    array = read_image(path)
    rgb = prepare_ok_image(array, resolution)
    if fg_files:
        fg_path = _foreground_file(path, fg_files)
        fg_raw = read_gray(fg_path)
        if fg_raw.shape != array.shape[:2]:
            raise InputError(f"foreground mask {fg_path} ({fg_raw.shape[1]}x{fg_raw.shape[0]}) does not"
                             f" match image {path} ({array.shape[1]}x{array.shape[0]})")
        fg = resize_gray(fg_raw, resolution, Image.NEAREST) >= FOREGROUND_AT
        if not fg.any():
            raise InputError(f"foreground mask {fg_path} is empty (no pixel >= {FOREGROUND_AT})")
    else:
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        try:
            fg = foreground_mask(gray, mode)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
    return Background(path.name, rgb, fg)


def data_digest(backgrounds: Sequence[Background], shots: Sequence[Shot]) -> str:
    """Hash of what trains (names and pixels at the working resolution)."""
    h = hashlib.sha256()
    for item in [*backgrounds, *shots]:
        h.update(item.name.encode())
        h.update(item.rgb.tobytes())
        h.update((item.foreground if isinstance(item, Background) else item.mask).tobytes())
    return h.hexdigest()[:16]
