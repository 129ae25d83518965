"""Shared data of the evaluation tests: the demo few-shot set (written by its own code) and
a small synthetic crack set made from it by adabldm-run with the demo model (64 px, a few
steps: seconds), its masks drawn from the training third's masks only."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

SHOTS = 4  # the first third of the demo set's 12 defect images per type


@pytest.fixture(scope="session")
def fewshot(tmp_path_factory) -> Path:
    from adabldm_ref.demo.base import texture_arrays
    from adabldm_ref.demo.defects import write_fewshot

    return write_fewshot(tmp_path_factory.mktemp("demo"), texture_arrays())


@pytest.fixture(scope="session")
def synthetic(fewshot, tmp_path_factory) -> Path:
    from adabldm_engine.cli import main

    root = tmp_path_factory.mktemp("synthetic")
    masks = root / "train_masks"
    masks.mkdir()
    for p in sorted((fewshot / "ground_truth" / "crack").glob("*_mask.png"))[:SHOTS]:
        shutil.copy(p, masks / p.name)
    out = root / "out"
    result = CliRunner().invoke(main, [
        "--batch", "--model", "demo", "--defect", "crack", "--images", str(fewshot / "train" / "good"),
        "--masks", str(masks), "--num", "3", "--steps", "4", "--adapt-iters", "2", "--resolution", "64",
        "--device", "cpu", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out
