"""File input and output of the batch job: checked reads, atomic writes.

Every read error names the file and what was expected; every write goes to a temporary
file in the same folder and is renamed into place, so a killed run never leaves a
half-written image or line.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class InputError(ValueError):
    """A user-supplied file or folder that cannot be used."""


def list_images(folder: str | Path, what: str) -> list[Path]:
    """Sorted image files directly in ``folder`` (error if it is missing or has none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{what} folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("L", "RGB", "RGBA"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")


def read_image(path: str | Path) -> np.ndarray:
    """uint8 (H, W) gray or (H, W, 3|4) RGB(A) array of an image file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(_to_8bit(im))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 8:
        raise InputError(f"{path}: image of shape {array.shape}, expected at least 8x8 pixels")
    return np.ascontiguousarray(array)


def read_gray(path: str | Path) -> np.ndarray:
    """uint8 (H, W) of a mask file (colour masks are converted to luminance)."""
    array = read_image(path)
    if array.ndim == 3:
        array = np.asarray(Image.fromarray(array[:, :, :3]).convert("L"))
    return array


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0o600 hides outputs from others


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Atomically write a uint8 (H, W) or (H, W, 3) array as PNG."""
    _atomic(Path(path), lambda f: Image.fromarray(array).save(f, format="PNG"))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in chunks (graphs and weights run to gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_versioned_json(path: Path, version: int, what: str, redo: str, error: type[Exception] = ValueError) -> dict:
    """A JSON record with ``format_version`` == ``version``; ``error`` names the file, what
    is wrong, and ``redo`` (how to make it again)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}); {redo}") from None
    if not isinstance(data, dict) or data.get("format_version") != version:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise error(f"{path} has {what} format {found}, this adabldm reads {version}; {redo}")
    return data


def append_line(path: str | Path, line: str) -> None:
    """Append one line in a single write (O_APPEND) and sync it to disk."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
