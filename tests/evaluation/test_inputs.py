"""adabldm-eval on inputs a user gets wrong or that are not adabldm-run's own layout:
masks that mark nothing at the 128 threshold (0/1 masks), defects averaged away at
--size, a set without manifest, a folder of another layout, a manifest naming a missing
file. Small hand-made folders (64 px noise images), no generation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from adabldm_eval.cli import main
from click.testing import CliRunner
from PIL import Image

SIZE = 64


def _image(rng, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, value: int = 255, box=(20, 20, 36, 36)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((SIZE, SIZE), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = value
    Image.fromarray(m).save(path)


def category(root: Path, defects: int = 6, value: int = 255, box=(20, 20, 36, 36), good: bool = True) -> Path:
    """An MVTec-layout category: train/good, test/good, test/crack, ground_truth/crack."""
    rng = np.random.default_rng(0)
    if good:
        for sub in ("train/good", "test/good"):
            for i in range(3):
                _image(rng, root / sub / f"{i:03d}.png")
    for i in range(defects):
        _image(rng, root / "test" / "crack" / f"{i:03d}.png")
        _mask(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", value, box)
    return root


def run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def downstream(real: Path, synthetic: Path, out: Path, *extra):
    return run("downstream", "--real", real, "--synthetic", synthetic, "--defect", "crack", "--steps", "1",
               "--seeds", "1", "--size", "32", "--batch", "2", "--out", out, "--quiet", *extra)


def test_zero_one_masks_are_refused_naming_the_file_before_training(tmp_path):
    real = category(tmp_path / "real", value=1)  # 0/1 masks: nothing reaches >= 128
    synthetic = category(tmp_path / "syn", defects=2, good=False)
    result = downstream(real, synthetic, tmp_path / "report")
    assert result.exit_code == 2, result.output
    assert "000_mask.png has no pixel >= 128 (largest value 1)" in result.output
    assert "0/1 mask" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "report").exists()


def test_a_defect_that_vanishes_at_the_size_is_refused(tmp_path):
    real = category(tmp_path / "real", box=(20, 20, 21, 40))  # a 1 px wide line at 64 px
    synthetic = category(tmp_path / "syn", defects=2, good=False)
    result = downstream(real, synthetic, tmp_path / "report", "--size", "16")
    assert result.exit_code == 2, result.output
    assert "vanishes at 16 px" in result.output and "larger --size" in result.output
    assert not (tmp_path / "report").exists()


def test_samples_of_a_set_without_manifest_report_diversity_and_say_the_figures_are_unavailable(tmp_path):
    synthetic = category(tmp_path / "syn", defects=3, good=False)
    result = run("samples", synthetic, "--defect", "crack", "--quiet")
    assert result.exit_code == 0, result.output
    assert "figures unavailable for 3" in result.output
    report = json.loads((synthetic / "eval" / "samples.json").read_text())
    assert report["samples"] == 3 and report["unavailable"] == 3 and report["worst"] == []
    assert 0 < report["set"]["diversity_defect_crops"] < 1
    assert "unavailable for 3 (no manifest*.jsonl" in (synthetic / "eval" / "samples.md").read_text()


def test_a_folder_of_another_layout_names_what_was_looked_for(tmp_path):
    plain = tmp_path / "plain"
    rng = np.random.default_rng(0)
    for i in range(2):
        _image(rng, plain / f"{i}.png")
    result = run("samples", plain, "--defect", "crack", "--quiet")
    assert result.exit_code == 2, result.output
    assert "no test/crack beside a ground_truth/crack" in result.output
    assert not (plain / "eval").exists()


def test_a_manifest_line_whose_mask_is_missing_names_the_mask(tmp_path):
    out = tmp_path / "out"
    category(out / "texture", defects=1, good=False)
    line = {"defect": "crack", "index": 0, "image": "texture/test/crack/000.png",
            "mask": "texture/ground_truth/crack/000_mask.png"}
    (out / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    (out / "texture" / "ground_truth" / "crack" / "000_mask.png").unlink()
    result = run("samples", out, "--quiet")
    assert result.exit_code == 2, result.output
    assert "line 1: its mask texture/ground_truth/crack/000_mask.png not found" in result.output


def test_a_rerun_without_worst_samples_removes_the_earlier_sheet(tmp_path):
    out = tmp_path / "out"
    category(out / "texture", defects=2, good=False)
    quality = {"bg_psnr": 30.0, "bg_ssim": 0.9, "defect_strength": 3.0, "seam": 5.0, "leakage": 1.0}
    lines = [{"defect": "crack", "index": i, "image": f"texture/test/crack/{i:03d}.png",
              "mask": f"texture/ground_truth/crack/{i:03d}_mask.png", "quality": quality} for i in range(2)]
    (out / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert run("samples", out, "--quiet").exit_code == 0
    assert (out / "eval" / "worst.png").is_file()
    result = run("samples", out, "--worst", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert not (out / "eval" / "worst.png").exists()
    assert "Worst samples: none listed" in (out / "eval" / "samples.md").read_text()
