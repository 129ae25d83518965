"""adabldm-eval downstream: end to end on the demo set (small), the held-out split kept out
of training, and bad inputs refused with exit 2 and a message naming them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from adabldm_eval.baseline import baseline_pairs
from adabldm_eval.cli import main
from adabldm_eval.metrics import METRICS
from click.testing import CliRunner
from PIL import Image

SMALL = ["--size", "64", "--steps", "4", "--batch", "4", "--seeds", "1", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, ["downstream", *map(str, args)])


@pytest.mark.slow
def test_three_arms_end_to_end_on_the_demo_set(fewshot, synthetic, tmp_path):
    out = tmp_path / "report"
    result = run("--real", fewshot, "--synthetic", synthetic, "--defect", "crack", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "downstream.json").read_text())
    assert report["split"]["train"] == ["000", "001", "002", "003"]  # the first third by name
    assert report["test"] == {"defects": 8, "ok": 12}
    arms = report["arms"]
    assert list(arms) == ["real", "real+adabldm", "real+baseline"]
    assert [arms[a]["training_defects"] for a in arms] == [4, 7, 7]  # + the 3 synthetic samples, + 3 baseline
    for arm in arms.values():
        assert len(arm["per_seed"]) == 1
        assert all(0.0 <= arm["summary"][m]["mean"] <= 1.0 for m in METRICS)
        assert arm["summary"]["pixel_auroc"]["std"] == 0.0  # one seed
    table = (out / "downstream.md").read_text()
    assert all(f"| {a} |" in table for a in arms)
    assert Image.open(out / "pr_curves.png").size[0] > 100


def test_the_baseline_changes_only_pixels_inside_the_mask():
    rng = np.random.default_rng(0)
    sources = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[:, 10:20, 5:15] = True
    pairs = baseline_pairs(sources, masks, sources, seed=0)
    assert [n.split("/")[0] for n in pairs.names] == ["baseline:cutpaste", "baseline:noise"] * 2
    assert (pairs.images[~masks] == sources[~masks]).all()
    assert all((pairs.images[k][masks[k]] != sources[k][masks[k]]).mean() > 0.5 for k in range(4))
    again = baseline_pairs(sources, masks, sources, seed=0)
    assert (again.images == pairs.images).all()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_category_without_held_out_defects_is_refused(fewshot, synthetic, tmp_path):
    real = _copy(fewshot, tmp_path / "real")
    for p in sorted((real / "test" / "crack").iterdir())[1:]:
        p.unlink()
        (real / "ground_truth" / "crack" / f"{p.stem}_mask.png").unlink()
    result = run("--real", real, "--synthetic", synthetic, "--defect", "crack", *SMALL)
    assert result.exit_code == 2 and "none is held out" in result.output


def test_masks_that_do_not_pair_are_refused(fewshot, synthetic, tmp_path):
    real = _copy(fewshot, tmp_path / "real")
    (real / "ground_truth" / "crack" / "005_mask.png").unlink()
    result = run("--real", real, "--synthetic", synthetic, "--defect", "crack", *SMALL)
    assert result.exit_code == 2 and "005.png has no mask" in result.output
    real2 = _copy(fewshot, tmp_path / "real2")
    Image.new("L", (100, 80)).save(real2 / "ground_truth" / "crack" / "006_mask.png")
    result = run("--real", real2, "--synthetic", synthetic, "--defect", "crack", *SMALL)
    assert result.exit_code == 2 and "does not match its image" in result.output


def test_a_category_without_ok_test_images_is_refused(fewshot, synthetic, tmp_path):
    real = _copy(fewshot, tmp_path / "real")
    shutil.rmtree(real / "test" / "good")
    result = run("--real", real, "--synthetic", synthetic, "--defect", "crack", *SMALL)
    assert result.exit_code == 2 and "no folder test/good" in result.output


def _train_json(run_dir: Path, defect: str, defects: Path, train, held, images: str = "/nowhere") -> Path:
    run_dir.mkdir(parents=True)
    record = {"format_version": 1, "split": {"train": train, "held_out": held, "rule": "test"},
              "config": {"defect": defect, "defects": str(defects), "object_name": "texture", "images": images,
                         "resolution": 64},
              "data": {"digest": "0" * 16}}
    (run_dir / "train.json").write_text(json.dumps(record))
    return run_dir


def test_a_split_of_another_defect_or_category_is_refused(fewshot, synthetic, tmp_path):
    names = [f"{i:03d}" for i in range(12)]
    crack = fewshot / "test" / "crack"
    other = _train_json(tmp_path / "scratch_run", "scratch", fewshot / "test" / "scratch", names[:4], names[4:])
    result = run("--real", fewshot, "--synthetic", synthetic, "--defect", "crack", "--split", other, *SMALL)
    assert result.exit_code == 2 and "split of defect 'scratch', not 'crack'" in result.output
    moved = _train_json(tmp_path / "elsewhere", "crack", tmp_path / "bottle" / "test" / "crack", names[:4], names[4:])
    result = run("--real", fewshot, "--synthetic", synthetic, "--defect", "crack", "--split", moved, *SMALL)
    assert result.exit_code == 2 and "split of another category" in result.output
    fewer = _train_json(tmp_path / "fewer", "crack", crack, names[:4], names[4:10])
    result = run("--real", fewshot, "--synthetic", synthetic, "--defect", "crack", "--split", fewer, *SMALL)
    assert result.exit_code == 2 and "another category or folder" in result.output


@pytest.mark.slow
def test_a_recorded_split_decides_what_is_held_out(fewshot, synthetic, tmp_path):
    names = [f"{i:03d}" for i in range(12)]
    split = _train_json(tmp_path / "run", "crack", fewshot / "test" / "crack", names[:6], names[6:])
    out = tmp_path / "report"
    result = run("--real", fewshot, "--synthetic", synthetic, "--defect", "crack", "--split", split, "--out", out,
                 *SMALL)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "downstream.json").read_text())
    assert report["split"]["held_out"] == names[6:] and report["test"]["defects"] == 6
    assert report["arms"]["real"]["training_defects"] == 6


def test_a_synthetic_set_from_held_out_masks_or_without_the_defect_is_refused(fewshot, synthetic, tmp_path):
    result = run("--real", fewshot, "--synthetic", synthetic, "--defect", "stain", *SMALL)
    assert result.exit_code == 2 and "no samples of defect 'stain' (it has crack)" in result.output
    leaky = _copy(synthetic, tmp_path / "leaky")
    manifest = leaky / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines[0]["mask_source"] = str(fewshot / "ground_truth" / "crack" / "007_mask.png")  # a held-out one
    manifest.write_text("".join(json.dumps(e) + "\n" for e in lines))
    result = run("--real", fewshot, "--synthetic", leaky, "--defect", "crack", *SMALL)
    assert result.exit_code == 2 and "held-out mask" in result.output


def test_usage_errors_exit_2(fewshot, tmp_path):
    result = run("--real", fewshot, "--synthetic", tmp_path, "--defect", "crack", "--device", "tpu")
    assert result.exit_code == 2 and "expected cpu, cuda or cuda:N" in result.output
    result = run("--real", fewshot, "--synthetic", tmp_path, "--defect", "crack", "--size", "60", "--quiet")
    assert result.exit_code == 2 and "multiple of 8" in result.output


def test_a_held_out_image_in_training_is_caught_by_name_or_pixels():
    from adabldm_eval.data import Pairs, check_no_leak

    from adabldm_ref.fewshot import Split

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((3, 16, 16), dtype=bool)
    split = Split(("000",), ("001", "002"), "test")
    test = Pairs(("001", "002"), images[1:], masks[1:])
    check_no_leak(Pairs(("000",), images[:1], masks[:1]), test, split, [], [])  # clean
    with pytest.raises(RuntimeError, match="held-out defects reach training"):
        check_no_leak(Pairs(("000", "001"), images[:2], masks[:2]), test, split, [], [])
    with pytest.raises(RuntimeError, match="1 identical image"):
        check_no_leak(Pairs(("000", "synthetic:crack/0000"), images[[0, 2]], masks[:2]), test, split, [], [])
