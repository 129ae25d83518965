"""adabldm-run with a user's own inputs and option values: each bad one is a clear error
with the documented exit code, and nothing is written for a usage error."""
from __future__ import annotations

import struct
import zlib

import adabldm_engine.job as job
import numpy as np
import pytest
from adabldm_core.io import InputError, list_images, read_gray, read_image
from adabldm_engine.cli import main
from click.testing import CliRunner
from PIL import Image

from adabldm_ref.config import AdaptConfig, GenerationConfig, MaskConfig, SamplerConfig
from adabldm_ref.masks import PlacementError
from adabldm_ref.pipeline import OkImage, RealMasks, plan_sample


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("option, value", [
    ("--guidance", "nan"), ("--control-scale", "inf"), ("--rotate", "nan"), ("--rotate", "inf"),
    ("--adapt-lr", "inf"), ("--preservation", "nan"), ("--scale-range", "inf,inf"), ("--scale-range", "1,inf"),
])
def test_non_finite_option_is_a_usage_error_that_writes_nothing(tmp_path, option, value):
    """nan passes every range check and inf passes the lower bounds: they used to reach the
    job, which wrote its run record and then crashed (OverflowError drawing a rotation) or
    stopped on a record that is not JSON, exit 1."""
    result = run_cli("--batch", "--model", "tiny", "--out", tmp_path / "out", option, value)
    assert result.exit_code == 2, result.output
    assert "finite" in result.output and value.split(",")[-1] in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", [
    lambda: SamplerConfig(guidance=float("nan")),
    lambda: SamplerConfig(control_scale=float("-inf")),
    lambda: MaskConfig(rotate=float("inf")),
    lambda: MaskConfig(scale=(0.5, float("nan"))),
    lambda: MaskConfig(scale=(1.2, 0.9)),
    lambda: MaskConfig(rotate=-1.0),
    lambda: AdaptConfig(lr=float("inf")),
    lambda: AdaptConfig(preservation=float("nan")),
])
def test_configurations_refuse_values_that_would_fail_late(make):
    with pytest.raises(ValueError, match="expected"):
        make()


def _png_header_only(path, width: int, height: int):
    """A PNG that claims width x height gray pixels and holds almost none (a few hundred
    bytes): Pillow refuses it at open when the size is past its decompression-bomb limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_image_past_the_decompression_bomb_limit_is_an_input_error(tmp_path):
    """Pillow's DecompressionBombError is no OSError: it escaped read_image as a traceback
    and ended the whole run (exit 1) instead of skipping the one image."""
    path = _png_header_only(tmp_path / "huge.png", 20000, 10000)
    with pytest.raises(InputError, match=r"huge\.png: too large to read safely .*200000000 pixels"):
        read_image(path)


def test_mask_painted_on_a_transparent_layer_is_read_as_painted(tmp_path):
    """White kept under alpha 0 (as editors save a layer) read as a mask over the whole
    image: every sample's defect was the whole image, silently."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[8:16, 4:20, 3] = 255
    rgba[20, 20, 3] = 128  # half-transparent: half the value
    Image.fromarray(rgba).save(tmp_path / "m.png")
    gray = read_gray(tmp_path / "m.png")
    assert int((gray >= 200).sum()) == 8 * 16 and gray[20, 20] == 128 and gray[0, 0] == 0
    Image.fromarray(np.stack([rgba[..., 3]] * 3 + [np.full((32, 32), 255, np.uint8)], -1)).save(tmp_path / "o.png")
    np.testing.assert_array_equal(read_gray(tmp_path / "o.png"), rgba[..., 3])  # opaque: as it is
    Image.fromarray(np.stack([rgba[..., 0], rgba[..., 3]], -1), "LA").save(tmp_path / "la.png")
    assert int((read_gray(tmp_path / "la.png") >= 200).sum()) == 8 * 16


def test_zero_one_masks_are_skipped_naming_their_largest_value(tmp_path, job_config, make_image):
    """0/1 masks (a common export) were skipped as 'no pixel >= 200 (no defect)' alone."""
    masks, fg, images = tmp_path / "masks", tmp_path / "fg", tmp_path / "images"
    make_image(images / "a.png")
    ones = np.zeros((64, 64), np.uint8)
    ones[10:30, 10:30] = 1
    for folder in (masks, fg):
        folder.mkdir()
        Image.fromarray(ones).save(folder / "a.png")
    Image.fromarray(ones * 255).save(masks / "b.png")
    skipped = []
    source = job.load_mask_source(job_config(tmp_path / "out", masks=masks), skipped)
    assert [name for name, _ in source.masks] == [str(masks / "b.png")]
    assert len(skipped) == 1 and str(masks / "a.png") in skipped[0]
    assert "no pixel >= 200 (largest value 1; a 0/1 mask: scale it to 0/255" in skipped[0]
    with pytest.raises(InputError, match="none of the OK images"):
        job.load_ok_images(job_config(tmp_path / "out", images=images, foreground=fg), skipped)
    assert "foreground mask for" in skipped[1] and "largest value 1; a 0/1 mask" in skipped[1]


def test_mask_thinner_than_a_pixel_at_the_resolution_is_resampled_not_lost(tmp_path, job_config):
    """A 2 px scratch of a 1024 px mask vanished in the resize to 64 px: every sample
    drawing it failed with 'defect mask has no pixel >= the binarisation threshold',
    naming no file (exit 3, or 1 when it was the only mask)."""
    masks = tmp_path / "masks"
    masks.mkdir()
    thin = np.zeros((1024, 1024), np.uint8)
    thin[500:502, 100:900] = 255
    Image.fromarray(thin).save(masks / "scratch.png")
    blob = np.zeros((100, 100), np.uint8)
    blob[30:70, 30:70] = 255
    Image.fromarray(blob).save(masks / "zblob.png")
    cfg = job_config(tmp_path / "out", masks=masks)
    source = job.load_mask_source(cfg, skipped := [])
    assert skipped == []
    (_, scratch), (_, kept) = source.masks
    np.testing.assert_array_equal(kept, blob)  # a mask that survives the resize: as read (run key)
    assert scratch.shape == (64, 64) and set(np.unique(scratch)) == {0, 255}
    rows, cols = np.nonzero(scratch)
    assert set(rows) == {31} and cols.min() == 100 // 16 and cols.max() == 899 // 16
    ok = OkImage("ok", np.full((64, 64, 3), 128, np.uint8))
    only = RealMasks(source.masks[:1])
    plan = plan_sample(0, cfg.generation, [ok], only)
    assert plan.mask.sum() == len(cols) and plan.mask_source == str(masks / "scratch.png")


def test_defect_that_fits_nowhere_names_its_mask_and_image():
    """'sample 0002 skipped: defect of 64x64 px ... fits nowhere' left the user to guess
    which mask file (of a folder) and which OK image to fix."""
    fg = np.zeros((64, 64), bool)
    fg[10:40, 10:40] = True
    ok = OkImage("images/bottle_3.png", np.full((64, 64, 3), 128, np.uint8), fg)
    masks = RealMasks((("masks/all_white.png", np.full((64, 64), 255, np.uint8)),))
    with pytest.raises(PlacementError, match=r"^masks/all_white\.png on images/bottle_3\.png: defect of 64x64 px"):
        plan_sample(0, GenerationConfig(resolution=64), [ok], masks)


@pytest.mark.parametrize("defect", ["../../escape", "a/b", "", ".", " crack"])
def test_defect_that_is_no_folder_name_is_a_usage_error_that_writes_nothing(tmp_path, defect):
    """--defect ../../escape wrote runs/../../escape.json and extra/../../escape/ outside
    --out; '' and '.' put the images straight into test/ (no MVTec defect folder)."""
    result = run_cli("--batch", "--model", "tiny", "--out", tmp_path / "out", "--defect", defect)
    assert result.exit_code == 2, result.output
    assert f"--defect {defect!r}: expected a folder name" in result.output
    assert list(tmp_path.iterdir()) == []


def test_defect_with_a_space_is_a_folder_name():
    assert job.check_defect("broken large") == "broken large"


@pytest.mark.parametrize("out", [".", "out_in_images/.."])
def test_out_that_is_the_images_folder_is_a_usage_error_that_writes_nothing(tmp_path, make_image, out):
    """--images X --out X wrote the run's files among the OK images; the next run took its
    contact sheet for an OK image and refused to resume ('other settings: inputs ...')."""
    images = tmp_path / "images"
    make_image(images / "a.png")
    before = sorted(images.iterdir())
    result = run_cli("--batch", "--model", "tiny", "--images", images, "--out", images / out)
    assert result.exit_code == 2, result.output
    assert f"--images {images} is inside what --out" in result.output
    assert sorted(images.iterdir()) == before


def test_inputs_beside_the_outputs_are_fine_inside_them_not(tmp_path):
    root = tmp_path / "data"
    job.check_inputs_apart(root, "bottle", {"--images": root / "good", "--masks": root / "masks", "--foreground": None})
    job.check_inputs_apart(root / "synth", "bottle", {"--images": root})  # --out inside an input folder
    for inside in (root, root / "bottle" / "test" / "crack", root / "extra", root / "runs"):
        with pytest.raises(ValueError, match="is inside what --out"):
            job.check_inputs_apart(root, "bottle", {"--masks": inside})


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, make_image, sigterm_when):
    """kill / timeout / a scheduler send SIGTERM: the run died with 143, without its closing
    line or contact sheet. Now as Ctrl-C: exit 130, finished samples kept."""
    make_image(tmp_path / "images" / "a.png")
    out = tmp_path / "out"
    args = ["--batch", "--model", "tiny", "--resolution", "64", "--steps", "4", "--adapt-iters", "2", "--quiet",
            "--images", str(tmp_path / "images"), "--num", "200", "--out", str(out)]
    code = "import sys; from adabldm_engine.cli import main; main(sys.argv[1:])"
    manifest = out / "manifest.jsonl"
    returncode, output = sigterm_when(["-c", code, *args], lambda: manifest.is_file() and manifest.read_text() != "")
    assert returncode == 130, output
    assert "interrupted: finished samples are kept" in output
    lines = manifest.read_text().splitlines()
    assert 1 <= len(lines) < 200 and (out / "contact_sheet_defect.png").is_file()
    assert not list(out.rglob("*.tmp")) and not (out / ".adabldm.lock").exists()


def test_macos_appledouble_files_are_not_images(tmp_path, make_image):
    """'._a.png' (AppleDouble metadata from a Mac) was read, skipped with a warning, and the
    run exited 3 every time."""
    make_image(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    assert [p.name for p in list_images(tmp_path, "OK image")] == ["a.png"]


def test_mask_marking_most_of_its_image_is_used_with_a_warning(tmp_path, job_config, caplog):
    """An inverted mask (black defect on white) became a defect over nearly the whole
    image without a word."""
    inverted = np.full((64, 64), 255, np.uint8)
    inverted[20:30, 20:30] = 0
    (tmp_path / "masks").mkdir()
    Image.fromarray(inverted).save(tmp_path / "masks" / "inv.png")
    with caplog.at_level("WARNING", logger="adabldm"):
        source = job.load_mask_source(job_config(tmp_path / "out", masks=tmp_path / "masks"), skipped := [])
    assert skipped == [] and len(source.masks) == 1
    assert "inv.png marks 98% of its image as defect: if its defect is the dark part, invert it" in caplog.text


def test_float_image_within_0_1_is_read_with_1_as_white(tmp_path):
    """A float TIFF in [0, 1] was scaled as 0..255: an all-black OK image (or empty mask)."""
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    array = read_image(tmp_path / "f.tif")
    assert array[0, 0] == 0 and array[-1, -1] == 255 and abs(int(array[32, 0]) - 128) <= 1
    Image.fromarray(ramp * 255).save(tmp_path / "f255.tif")  # a float image in 0..255: as it is
    assert read_image(tmp_path / "f255.tif")[-1, -1] == 255 and read_image(tmp_path / "f255.tif")[0, 0] == 0


@pytest.mark.parametrize("content", [b'{"file": "x.png", "label": 1}\n{"file": "y.png", "label": 0}\n',
                                     b"\x89PNG\r\n\x1a\n\xff\xfe binary"])
def test_another_tools_manifest_in_out_is_refused_and_kept(tmp_path, content):
    """A manifest.jsonl of another tool in --out was 'dropped ... unreadable line(s)' and
    rewritten without them (the user's file lost); a binary one raised UnicodeDecodeError
    naming no file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_bytes(content)
    layout = job.Layout(out, "texture", "defect")
    with pytest.raises(InputError, match=r"manifest\.jsonl is not an adabldm manifest .*choose another --out"):
        job.open_run(layout, {"run_key": "0123456789abcdef"}, 1, [])
    assert (out / "manifest.jsonl").read_bytes() == content
    assert [p.name for p in out.iterdir()] == ["manifest.jsonl"]


def test_an_elongated_image_is_used_with_a_warning_that_it_is_squashed(tmp_path, job_config, make_image, caplog):
    make_image(tmp_path / "images" / "strip.png", height=40, width=400)
    make_image(tmp_path / "images" / "square.png", height=64, width=70)
    with caplog.at_level("WARNING", logger="adabldm"):
        images = job.load_ok_images(job_config(tmp_path / "out", images=tmp_path / "images"), skipped := [])
    assert skipped == [] and len(images) == 2
    assert "strip.png: 400x40 is squashed to 64x64 (aspect 10.0:1)" in caplog.text
    assert "square.png" not in caplog.text


def test_twelve_bit_data_in_a_16_bit_image_is_read_with_a_warning(tmp_path, caplog):
    """12-bit camera data in a 16-bit PNG is scaled against 65535 and reads nearly black:
    it is read as it is (a dark 16-bit image is possible) but the user is told."""
    values = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "twelve.png")
    Image.fromarray(values * 16).save(tmp_path / "sixteen.png")
    with caplog.at_level("WARNING", logger="adabldm"):
        dark = read_image(tmp_path / "twelve.png")
        full = read_image(tmp_path / "sixteen.png")
    assert dark.max() <= 16 and full.max() == 255
    assert "twelve.png: a 16-bit image whose values stop at 4095 (12-bit data?)" in caplog.text
    assert "sixteen.png" not in caplog.text


def test_a_mask_drawn_only_in_its_alpha_is_read_from_the_alpha(tmp_path):
    """Black everywhere, the defect in alpha (a stencil export): over black it read as no
    defect at all and was skipped."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[10:20, 30:40, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "stencil.png")
    mask = read_gray(tmp_path / "stencil.png")
    assert mask[10:20, 30:40].min() == 255 and mask.sum() == 100 * 255
    painted = np.zeros((64, 64, 4), np.uint8)  # white strokes with alpha: still the painted layer
    painted[..., :3], painted[5:9, 5:9, 3] = 255, 255
    painted[5:9, 5:9, :3] = 255
    Image.fromarray(painted, "RGBA").save(tmp_path / "painted.png")
    assert read_gray(tmp_path / "painted.png").sum() == 16 * 255
