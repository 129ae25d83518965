"""`adabldm-run --batch --bundle B --backend ...`: the batch job over exported networks."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from adabldm_core.metrics import psnr
from adabldm_engine.cli import main as run_main
from adabldm_export.cli import main as export_main
from click.testing import CliRunner
from PIL import Image

ARGS = ["--batch", "--num", "2", "--steps", "4", "--adapt-iters", "2", "--quiet"]


def run(*args):
    return CliRunner().invoke(run_main, [*ARGS, *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_batch_job_over_a_bundle(bundle_dir, tmp_path, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    out = tmp_path / backend
    result = run("--bundle", bundle_dir, "--backend", backend, "--out", out)
    assert result.exit_code == 0, result.output
    assert "2/2 samples" in result.output
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1]
    for i in range(2):
        mask = np.asarray(Image.open(out / "texture" / "ground_truth" / "defect" / f"{i:04d}_mask.png"))
        assert set(np.unique(mask)) == {0, 255}
        assert (out / "texture" / "test" / "defect" / f"{i:04d}.png").is_file()
    record = json.loads((out / "runs" / "defect.json").read_text())
    assert record["backend"] == f"{backend}+adapt-roi4" and record["bundle"] == str(bundle_dir)
    again = run("--bundle", bundle_dir, "--backend", backend, "--out", out)
    assert again.exit_code == 0 and "0 new, 2 resumed" in again.output


def test_bundle_runs_match_reference_runs(bundle_dir, tmp_path):
    assert run("--out", tmp_path / "ref").exit_code == 0
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        assert run("--bundle", bundle_dir, "--backend", backend, "--out", tmp_path / backend).exit_code == 0
        for i in range(2):
            a = np.asarray(Image.open(tmp_path / "ref" / "texture" / "test" / "defect" / f"{i:04d}.png")).astype(float)
            b = np.asarray(Image.open(tmp_path / backend / "texture" / "test" / "defect" / f"{i:04d}.png")).astype(float)
            db = psnr(a, b)
            assert db >= 40.0, (backend, db)


def test_switching_backend_on_an_existing_run_is_refused(bundle_dir, tmp_path):
    out = tmp_path / "o"
    assert run("--out", out).exit_code == 0
    result = run("--bundle", bundle_dir, "--backend", "onnxruntime", "--out", out)
    assert result.exit_code == 1 and "backend" in result.output


def test_bundle_for_another_resolution_is_refused(bundle_dir, tmp_path):
    result = run("--bundle", bundle_dir, "--backend", "onnxruntime", "--resolution", "128", "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "is for 256 px, not 128 px" in result.output and "adabldm-export --resolution 128" in result.output


def test_onnxruntime_backend_needs_a_bundle(tmp_path):
    result = run("--backend", "onnxruntime", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "needs --bundle" in result.output  # usage: options that do not go together
    assert not (tmp_path / "o").exists()


def test_export_cli_help_and_refusal_to_overwrite(bundle_dir):
    help_text = CliRunner().invoke(export_main, ["--help"]).output
    for option in ("--model", "--controlnet", "--resolution", "--batch", "--split-controlnet", "--dynamo"):
        assert option in help_text
    result = CliRunner().invoke(export_main, ["--out", str(bundle_dir)])
    assert result.exit_code == 1 and "already holds a bundle" in result.output
