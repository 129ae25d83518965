"""File input and output of the batch job: checked reads, atomic writes.

Every read error names the file and what was expected; every write goes to a temporary
file in the same folder and is renamed into place, so a killed run never leaves a
half-written image or line.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class InputError(ValueError):
    """A user-supplied file or folder that cannot be used."""


def list_images(folder: str | Path, what: str) -> list[Path]:
    """Sorted image files directly in ``folder`` (error if it is missing or has none)."""
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"{what} folder {folder} is a file: expected a folder of images")
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if _is_image_name(p.name) and p.is_file())
    if not files:
        hint = _subfolder_hint(folder)
        raise InputError(f"{what} folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}){hint}")
    return files


def _is_image_name(name: str) -> bool:
    """An image suffix, and not macOS's AppleDouble metadata ('._NAME.png', beside each file
    copied from a Mac to another filesystem): never an image, each one was skipped with a
    warning and made every run exit 3."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("._")


def _subfolder_hint(folder: Path) -> str:
    """Where the images are if ``folder`` is one level too high (MVTec's test/ instead of
    test/<defect>): its subfolders that hold images, so the user sees which to pass."""
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir()))
    if not subs:
        return ""
    shown = ", ".join(subs[:8]) + (f" and {len(subs) - 8} more" if len(subs) > 8 else "")
    return f"; its subfolders {shown} do: pass one of them (e.g. {folder / subs[0]})"


def _white(mode: str, a: np.ndarray) -> float:
    """The value of white in a 16-bit, 32-bit integer or float image: 65535 for 16 bits (or
    values past 255), 1 for a float image within [0, 1] (the float convention; taken as
    0..255 it read as black), else 255."""
    if mode.startswith("I;16") or a.max() > 255:
        return 65535.0
    return 1.0 if mode == "F" and a.max() <= 1.0 else 255.0


log = logging.getLogger("adabldm")
TWELVE_BIT_MAX = 4095


def _warn_if_12_bit(path: Path, image: Image.Image) -> None:
    """A 16-bit gray image whose values stop at 4095 is most likely a 12-bit camera's data:
    scaled against 65535, as 16 bits are, it reads nearly black. Say so; rescaling is the
    user's call (a dark 16-bit image is possible too)."""
    if image.mode.startswith("I;16"):
        peak = int(np.asarray(image).max())
        if 0 < peak <= TWELVE_BIT_MAX:
            log.warning("%s: a 16-bit image whose values stop at %d (12-bit data?) reads nearly black scaled"
                        " to 16 bits; multiply it by 16 first if it is 12-bit", path, peak)


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("L", "RGB", "RGBA"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(a / _white(image.mode, a) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")


def read_image(path: str | Path) -> np.ndarray:
    """uint8 (H, W) gray or (H, W, 3|4) RGB(A) array of an image file, turned as its EXIF
    orientation says (as viewers show it)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            _warn_if_12_bit(path, im)
            array = np.asarray(_to_8bit(ImageOps.exif_transpose(im)))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:  # not an OSError: it escaped as a traceback
        raise InputError(f"{path}: too large to read safely ({exc}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 8:
        raise InputError(f"{path}: image of shape {array.shape}, expected at least 8x8 pixels")
    return np.ascontiguousarray(array)


def read_gray(path: str | Path) -> np.ndarray:
    """uint8 (H, W) of a mask file: colour masks as luminance, masks with alpha as
    luminance x alpha, or as the alpha where the colour is flat (:func:`mask_of_rgba`)."""
    array = read_image(path)
    if array.ndim == 3:
        gray = np.asarray(Image.fromarray(array[:, :, :3]).convert("L"))
        array = mask_of_rgba(gray, array[:, :, 3]) if array.shape[2] == 4 else gray
    return array


def mask_of_rgba(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A mask file with alpha: ``gray`` over black (:func:`over_black`), or the alpha itself
    where the colour is one flat value and only the alpha varies (a stencil exported as
    black with the defect in alpha read as no defect at all)."""
    if gray.min() == gray.max() and alpha.min() != alpha.max():
        return alpha.copy()
    return over_black(gray, alpha)


def over_black(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 ``gray`` composited over black by ``alpha``: a transparent pixel of a mask is
    unpainted. Editors often keep white (or any colour) under alpha 0, which taken as it
    is made a mask painted on a transparent layer cover the whole image; opaque pixels
    keep their value exactly."""
    return ((gray.astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)


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


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically write an array as .npy (no pickle)."""
    _atomic(Path(path), lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


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


LOCK_NAME = ".adabldm.lock"


@contextmanager
def folder_lock(folder: str | Path, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block;
    ``name``: the lock file (a shard of a job locks its own part of the folder).

    A second holder, in this process or another, is refused with an InputError naming
    the first one's pid, host and start time. The lock is ``flock`` on ``folder/.adabldm.lock``:
    the system releases it when its process dies, so a killed run never blocks the next.
    On leaving, the lock file is removed, and so are the folders made for it if nothing
    else was written into them.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file: expected a folder (or a path to make one)")
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _lock(folder / name)
    except OSError as exc:  # read-only or not permitted: the user's --out, not a bug; no traceback
        _remove_empty(made)
        raise InputError(f"{folder}: cannot write there ({exc.strerror or exc}): choose another --out") from None
    try:
        yield folder
    finally:
        try:
            (folder / name).unlink(missing_ok=True)  # still ours: nobody else can hold it
        finally:
            os.close(fd)  # releases the lock
        _remove_empty(made)


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders made for a lock, innermost first; stops at the first with content."""
    for path in made:
        try:
            path.rmdir()
        except OSError:
            break


def _lock(path: Path) -> int:
    """An open descriptor of ``path`` holding its flock, the holder's details written in."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(
                f"{path.parent} is in use by another run ({holder}): wait for it to finish,"
                " or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its holder removed on leaving: lock the current one
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (info + "\n").encode(), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is just starting"


EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with room for the graph itself


def save_graph(model, path: Path) -> Path:
    """Save an ONNX model, with one external-data file ``<path>.data`` near or past 2 GB."""
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if _weight_bytes(model) > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def _weight_bytes(model) -> int:
    """Bytes of the initializers (ModelProto.ByteSize() itself fails past 2 GB)."""
    import numpy as np

    return sum(len(t.raw_data) or int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
