"""adabldm-calibrate on options a user gets wrong: an unknown --networks name, --networks
without --precision-map, bad INT8 parity settings, a bundle whose capture is gone. Each is
one error line naming the value (exit 1; an option value out of its range: usage, exit 2),
never a traceback."""
from __future__ import annotations

import shutil

import pytest
from adabldm_calibration.calibrate import CalibrateConfig, check_networks
from adabldm_calibration.capture import FOLDER
from adabldm_calibration.cli import main
from click.testing import CliRunner


def run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def test_an_unknown_network_names_the_bundles_networks(calib_bundle):
    result = run("--bundle", calib_bundle, "--reuse-capture", "--precision-map", "--networks", "text_encoder,unet")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # not a KeyError
    assert "--networks unet: not in this bundle" in result.output
    assert "text_encoder, unet_control, vae_decoder, vae_encoder" in result.output
    check_networks(("vae_decoder",), ["vae_decoder", "vae_encoder"])  # known names pass


def test_networks_without_the_precision_map_is_refused(tmp_path):
    with pytest.raises(ValueError, match="only the precision map takes networks; add --precision-map"):
        CalibrateConfig(bundle=tmp_path, networks=("text_encoder",))
    result = run("--bundle", tmp_path, "--reuse-capture", "--networks", "text_encoder")
    assert result.exit_code == 1 and "add --precision-map" in result.output


def test_bad_int8_parity_settings_name_the_values(tmp_path):
    result = run("--bundle", tmp_path, "--reuse-capture", "--int8", "--parity-samples", "0")
    assert result.exit_code == 2, result.output  # a usage error, before the bundle is read
    assert "--parity-samples" in result.output and "0 is not in the range x>=1" in result.output
    from adabldm_calibration.int8 import Int8Config, Int8Error

    with pytest.raises(Int8Error, match="--parity-samples 0"):  # the API refuses it too, naming it
        Int8Config(parity_samples=0)


def test_a_missing_capture_says_how_to_capture_this_bundle_again(calib_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(calib_bundle, copy, ignore=shutil.ignore_patterns(FOLDER))
    result = run("--bundle", copy, "--reuse-capture", "--precision-map")
    assert result.exit_code == 1, result.output
    assert f"capture again: adabldm-calibrate --bundle {copy} without --reuse-capture" in result.output
