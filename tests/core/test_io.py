"""adabldm_core.io: checked image reads (every error names the file) and atomic writes."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from adabldm_core import io
from adabldm_core.io import (
    LOCK_NAME,
    InputError,
    append_line,
    folder_lock,
    list_images,
    read_gray,
    read_image,
    write_png,
    write_text,
)
from PIL import Image


@pytest.fixture
def gradient():
    """(40, 56) uint8 with every value 0..255 present."""
    return (np.arange(40 * 56).reshape(40, 56) % 256).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Reads


def test_read_gray_png(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "g.png")
    array = read_image(tmp_path / "g.png")
    assert array.dtype == np.uint8 and array.shape == (40, 56)
    np.testing.assert_array_equal(array, gradient)


def test_read_rgb_and_rgba_png(tmp_path, gradient):
    rgb = np.stack([gradient, 255 - gradient, gradient // 2], axis=-1)
    rgba = np.concatenate([rgb, np.full((40, 56, 1), 200, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    got_rgb, got_rgba = read_image(tmp_path / "rgb.png"), read_image(tmp_path / "rgba.png")
    assert got_rgb.dtype == got_rgba.dtype == np.uint8
    assert got_rgb.shape == (40, 56, 3) and got_rgba.shape == (40, 56, 4)
    np.testing.assert_array_equal(got_rgb, rgb)
    np.testing.assert_array_equal(got_rgba, rgba)


def test_read_palette_png_gives_its_colours(tmp_path, gradient):
    rgb = np.stack([gradient, 255 - gradient, gradient // 2], axis=-1)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("RGB"))
    array = read_image(tmp_path / "p.png")
    assert array.dtype == np.uint8 and array.shape == (40, 56, 3)
    np.testing.assert_array_equal(array, expected)


def test_read_16bit_png_scales_to_8bit(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(8, axis=0).repeat(4, axis=1)
    Image.fromarray(values).save(tmp_path / "i16.png")  # (8, 16)
    with Image.open(tmp_path / "i16.png") as im:
        assert im.mode == "I;16"
    array = read_image(tmp_path / "i16.png")
    assert array.dtype == np.uint8 and array.shape == (8, 16)
    np.testing.assert_array_equal(array[0, ::4], [0, 1, 128, 255])


def test_read_gray_of_colour_mask_is_2d(tmp_path):
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    gray = read_gray(tmp_path / "m.png")
    assert gray.shape == (32, 32) and gray.dtype == np.uint8
    assert gray[10, 10] == 255 and gray[0, 0] == 0 and int((gray == 255).sum()) == 64


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(np.random.default_rng(0).bytes(600))
    with pytest.raises(InputError, match="not a readable image") as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_truncated_png_names_the_path(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nothing_here.png"
    with pytest.raises(InputError, match="file not found") as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_too_small_image_is_refused(tmp_path):
    Image.fromarray(np.zeros((4, 20), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match="at least 8x8") as exc:
        read_image(tmp_path / "tiny.png")
    assert "tiny.png" in str(exc.value)


def _with_orientation(path, array, orientation: int, format: str) -> None:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation  # EXIF Orientation
    image.save(path, format=format, exif=exif)


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    """A phone JPEG stored sideways with "rotate 90 CW" (orientation 6) reads as viewers show it."""
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:, :12] = 255  # left half white as stored
    _with_orientation(tmp_path / "ok.jpg", stored, 6, "JPEG")
    array = read_image(tmp_path / "ok.jpg")
    assert array.shape == (24, 16, 3)  # rotated 90 degrees clockwise: top half white
    assert array[:10].mean() > 240 and array[14:].mean() < 15
    mask = np.zeros((16, 24), np.uint8)
    mask[:, :4] = 255  # a bar along the stored left edge
    _with_orientation(tmp_path / "m.png", mask, 6, "PNG")
    gray = read_gray(tmp_path / "m.png")
    np.testing.assert_array_equal(gray, np.rot90(mask, -1))  # along the top edge once rotated


def test_image_without_orientation_is_read_as_stored(tmp_path, gradient):
    _with_orientation(tmp_path / "one.png", gradient, 1, "PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "one.png"), gradient)


def test_empty_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty file") as exc:
        read_image(path)
    assert str(exc.value) == f"{path}: empty file (0 bytes)"


def test_list_images_of_a_file_says_it_is_a_file(tmp_path, gradient):
    path = tmp_path / "one.png"
    Image.fromarray(gradient).save(path)
    with pytest.raises(InputError, match="is a file") as exc:
        list_images(path, "OK image")
    assert str(path) in str(exc.value) and "not found" not in str(exc.value)


def test_list_images_sorted_and_filtered(tmp_path, gradient):
    for name in ("b.png", "a.PNG", "c.jpg"):
        Image.fromarray(gradient).save(tmp_path / name, format="PNG" if "png" in name.lower() else "JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path, "OK image")] == ["a.PNG", "b.png", "c.jpg"]


def test_list_images_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="holds no image") as exc:
        list_images(tmp_path, "OK image")
    assert str(tmp_path) in str(exc.value)


def test_list_images_missing_folder(tmp_path):
    folder = tmp_path / "absent"
    with pytest.raises(InputError, match="not found") as exc:
        list_images(folder, "defect mask")
    assert str(folder) in str(exc.value) and "defect mask" in str(exc.value)


# ---------------------------------------------------------------------------------------
# Atomic writes


def test_write_png_round_trip_and_leaves_no_temp(tmp_path, gradient):
    path = tmp_path / "deep" / "er" / "x.png"
    write_png(path, gradient)
    np.testing.assert_array_equal(read_image(path), gradient)
    assert os.listdir(path.parent) == ["x.png"]


def test_written_files_get_the_usual_permissions(tmp_path, gradient):
    mask = os.umask(0o022)
    os.umask(mask)
    write_png(tmp_path / "x.png", gradient)
    write_text(tmp_path / "x.txt", "hello\n")
    for name in ("x.png", "x.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_png_write_keeps_old_file(tmp_path, gradient, monkeypatch, error):
    path = tmp_path / "x.png"
    write_png(path, gradient)
    old = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise error("disk on fire")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(error):
        write_png(path, 255 - gradient)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["x.png"]


def test_failed_text_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_text(path, "old\n")

    def broken_fsync(fd):
        raise OSError("no space left on device")

    monkeypatch.setattr(io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="no space"):
        write_text(path, "new and much longer\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["run.json"]
    write_text(path, "new\n")
    assert path.read_text() == "new\n"


def test_append_line_appends_whole_lines(tmp_path):
    path = tmp_path / "manifest.jsonl"
    append_line(path, '{"index": 0}')
    append_line(path, '{"index": 1}\n')  # a trailing newline is not doubled
    append_line(path, "third")
    assert path.read_text() == '{"index": 0}\n{"index": 1}\nthird\n'
    assert path.read_text().splitlines() == ['{"index": 0}', '{"index": 1}', "third"]


# ---------------------------------------------------------------------------------------
# The output-folder lock


def test_folder_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out):
        with pytest.raises(InputError, match=f"pid {os.getpid()}") as exc:
            with folder_lock(out):
                pass
        message = str(exc.value)
        assert str(out) in message and "started 20" in message
    with folder_lock(out):  # released on leaving: taken again
        pass
    assert not out.exists()  # made for the lock, nothing else in it: removed again


def test_folder_lock_keeps_a_folder_with_content_and_removes_its_file(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out):
        (out / "manifest.jsonl").write_text("")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"]


def test_folder_lock_on_a_file_says_so(tmp_path):
    path = tmp_path / "out"
    path.write_text("not a folder")
    with pytest.raises(InputError, match="is a file: expected a folder"):
        with folder_lock(path):
            pass


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    """The holder is SIGKILLed: its lock file stays, its flock goes with it."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys, time; from adabldm_core.io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"pid {child.pid}"):
            with folder_lock(out):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (out / LOCK_NAME).exists()  # stale file left by the killed run
    with folder_lock(out):
        assert f'"pid": {os.getpid()}' in (out / LOCK_NAME).read_text()
