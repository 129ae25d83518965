"""adabldm-run: options -> JobConfig -> run_job, the summary line and the exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import adabldm_engine.job as job
from adabldm_engine.cli import main


@pytest.fixture
def run_cli():
    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_help(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    for option in ("--batch", "--num", "--out", "--images", "--masks", "--resolution"):
        assert option in result.output
    assert "Exit codes" in result.output


def test_without_batch_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("--out", tmp_path / "out", "--num", 1)
    assert result.exit_code == 2
    assert "choose a mode: --batch" in result.output
    assert not (tmp_path / "out").exists()


def test_batch_without_out_is_a_usage_error(run_cli):
    result = run_cli("--batch", "--num", 1)
    assert result.exit_code == 2 and "--batch needs --out" in result.output


@pytest.mark.parametrize("value", ["1.2", "a,b", "1.2,0.9", "0,1"])
def test_bad_scale_range_is_a_usage_error(run_cli, tmp_path, value):
    result = run_cli("--batch", "--out", tmp_path / "out", "--scale-range", value)
    assert result.exit_code == 2 and "LOW" in result.output


def test_bad_procedural_kind_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("--batch", "--out", tmp_path / "out", "--procedural", "blob,dent")
    assert result.exit_code == 2 and "blob, scratch, crack" in result.output


def test_bad_setting_is_an_error(run_cli, tmp_path):
    result = run_cli("--batch", "--out", tmp_path / "out", "--batch-size", 0)
    assert result.exit_code == 1
    assert "error: --batch-size 0: expected at least 1" in result.output


@pytest.mark.parametrize("option, value", [("--adapt-lr", 0), ("--adapt-iters", -1), ("--preservation", -1)])
def test_bad_adaptation_setting_is_an_error(run_cli, tmp_path, option, value):
    result = run_cli("--batch", "--out", tmp_path / "out", option, value)
    assert result.exit_code == 1 and "error: adaptation" in result.output
    assert not (tmp_path / "out").exists()


def test_adaptation_learning_rate_reaches_the_run_record(run_cli, tmp_path, tiny_args):
    out = tmp_path / "out"
    result = run_cli("--batch", "--out", out, "--num", 1, *tiny_args, "--adapt-lr", "2e-4")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "runs" / "defect.json").read_text())
    assert record["settings"]["adapt"]["lr"] == 2e-4


def test_tiny_batch_run(run_cli, tmp_path, tiny_args):
    out = tmp_path / "out"
    result = run_cli("--batch", "--out", out, "--num", 2, "--defect", "scratch", *tiny_args)
    assert result.exit_code == 0, result.output
    assert "2/2 samples" in result.output and "(2 new, 0 resumed)" in result.output
    assert sorted(p.name for p in (out / "test" / "scratch").iterdir()) == ["0000.png", "0001.png"]
    assert len(list((out / "ground_truth" / "scratch").glob("*_mask.png"))) == 2
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["settings"]["defect"] for e in entries] == ["scratch", "scratch"]

    again = run_cli("--batch", "--out", out, "--num", 2, "--defect", "scratch", *tiny_args)
    assert again.exit_code == 0 and "(0 new, 2 resumed)" in again.output

    other = run_cli("--batch", "--out", out, "--num", 2, "--defect", "scratch", *tiny_args, "--seed", 1)
    assert other.exit_code == 1 and "error:" in other.output and str(out) in other.output


def test_missing_images_folder_is_an_error(run_cli, tmp_path, tiny_args):
    missing = tmp_path / "no_such_images"
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, "--images", missing, *tiny_args)
    assert result.exit_code == 1
    assert "error:" in result.output and str(missing) in result.output


def test_one_corrupt_image_exits_3(run_cli, tmp_path, tiny_args, make_image):
    images = tmp_path / "images"
    make_image(images / "good.png", 70, 90)
    (images / "zz_corrupt.png").write_bytes(np.random.default_rng(0).bytes(400))
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, "--images", images, *tiny_args)
    assert result.exit_code == 3, result.output
    assert "1/1 samples" in result.output and "1 input(s) skipped" in result.output


def test_interrupt_exits_130(run_cli, tmp_path, tiny_args, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "write_sample", ctrl_c)
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, *tiny_args)
    assert result.exit_code == 130
    assert "0/1 samples" in result.output


def test_bf16_adaptation_is_a_run_of_its_own_close_to_fp32(run_cli, tmp_path, tiny_args):
    from PIL import Image

    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert run_cli("--batch", "--out", fp32, "--num", 1, *tiny_args).exit_code == 0
    result = run_cli("--batch", "--out", bf16, "--num", 1, *tiny_args, "--adapt-precision", "bf16")
    assert result.exit_code == 0, result.output
    assert json.loads((bf16 / "runs" / "defect.json").read_text())["backend"] == "reference+adapt-bf16"
    a, b = (np.asarray(Image.open(d / "test" / "defect" / "0000.png"), dtype=np.float64) for d in (fp32, bf16))
    psnr = 10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12))
    assert 30.0 < psnr < 200.0  # bf16 changes the last bits of the adapted image, not the image
    blended = [(d / "extra" / "defect" / "0000_blended.png").read_bytes() for d in (fp32, bf16)]
    assert blended[0] == blended[1]  # only adaptation runs in bf16
    mixed = run_cli("--batch", "--out", fp32, "--num", 1, *tiny_args, "--adapt-precision", "bf16")
    assert mixed.exit_code == 1 and "holds a run with other backend" in mixed.output
