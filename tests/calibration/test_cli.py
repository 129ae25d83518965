"""adabldm-calibrate: click -> CalibrateConfig -> calibrate, on the session's bundle."""
from __future__ import annotations

import json

from adabldm_calibration.capture import FOLDER
from adabldm_calibration.cli import main
from click.testing import CliRunner


def test_calibrate_writes_the_precision_map_into_the_bundle(calib_bundle):
    result = CliRunner().invoke(main, ["--bundle", str(calib_bundle), "--reuse-capture", "--precision-map",
                                       "--networks", "text_encoder"])
    assert result.exit_code == 0, result.output
    assert "text_encoder   FP16 rel. L2" in result.output and "FP32: none" in result.output
    written = json.loads((calib_bundle / FOLDER / "precision.json").read_text())
    entry = written["networks"]["text_encoder"]
    assert entry["keep_fp32"] == [] and 0 < entry["rel_l2_fp16"] < 1e-2
    assert isinstance(entry["onnxruntime_fp16"]["without_map"], float)
    capture = json.loads((calib_bundle / FOLDER / "capture.json").read_text())
    assert written["capture_sha256"] == capture["sha256"]


def test_calibrate_fails_clearly_on_a_missing_bundle(tmp_path):
    result = CliRunner().invoke(main, ["--bundle", str(tmp_path / "nowhere"), "--reuse-capture"])
    assert result.exit_code == 1 and "error: bundle not found" in result.output
    bad = CliRunner().invoke(main, ["--bundle", str(tmp_path), "--steps", "3"])
    assert bad.exit_code == 2 and "--steps" in bad.output and "3 is not in the range x>=5" in bad.output


def test_the_clis_step_floor_is_the_captures(tmp_path):
    from adabldm_calibration import cli as calibrate_cli
    from adabldm_calibration.capture import MIN_STEPS
    from adabldm_export import cli as export_cli

    assert calibrate_cli.MIN_STEPS == export_cli.MIN_STEPS == MIN_STEPS
    for args in (["--capture-steps", "2"], ["--opset", "3"], ["--trt-workspace", "0"]):
        bad = CliRunner().invoke(export_cli.main, ["--out", str(tmp_path / "b"), *args])
        assert bad.exit_code == 2 and args[0] in bad.output, bad.output
        assert not (tmp_path / "b").exists()


def test_export_captures_the_users_ok_images(ok_image_files, tmp_path):
    from adabldm_export.cli import main as export_main

    out = tmp_path / "bundle"
    result = CliRunner().invoke(export_main, ["--out", str(out), "--batch", "1", "--no-simplify", "--capture-steps", "5",
                                              "--ok-images", str(ok_image_files[0].parent)])
    assert result.exit_code == 0, result.output
    capture = json.loads((out / FOLDER / "capture.json").read_text())
    assert [o["name"] for o in capture["settings"]["ok_images"]] == ["a_brick.png", "b_gravel.png"]
    assert capture["networks"]["unet_control"]["feeds"] == 5 and capture["settings"]["config"]["steps"] == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(export_main, ["--out", str(tmp_path / "b2"), "--ok-images", str(empty)])
    assert bad.exit_code == 1 and "holds no image" in bad.output
