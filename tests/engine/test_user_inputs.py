"""adabldm-run with a user's own inputs and option values: each bad one is a clear error
with the documented exit code, and nothing is written for a usage error."""
from __future__ import annotations

import struct
import zlib

import pytest
from adabldm_core.io import InputError, read_image
from adabldm_engine.cli import main
from click.testing import CliRunner

from adabldm_ref.config import AdaptConfig, MaskConfig, SamplerConfig


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
