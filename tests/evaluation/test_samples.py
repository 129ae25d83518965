"""adabldm-eval samples: the figures from the manifest or recomputed, the report files, the
diversity score, and IC-LPIPS / KID only over user networks given as local files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from adabldm_core.metrics import sample_quality
from adabldm_eval.cli import main
from adabldm_eval.features import crops_of, diversity, ic_lpips, kid, random_features
from adabldm_eval.samples import FIGURES
from click.testing import CliRunner
from PIL import Image

# The user networks are TorchScript files (torch.jit.load), which torch 2.13 marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def run(*args):
    return CliRunner().invoke(main, ["samples", *map(str, args)])


def test_report_files_and_figures_from_the_manifest(synthetic, tmp_path):
    result = run(synthetic, "--report", tmp_path / "r", "--worst", "2", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "samples.json").read_text())
    assert report["samples"] == 3 and report["defects"] == {"crack": 3}
    assert report["from_manifest"] + report["computed"] == 3
    assert set(report["distribution"]) == set(FIGURES) and report["distribution"]["bg_psnr"]["n"] == 3
    assert len(report["worst"]) == 2 and 0 < report["set"]["diversity_defect_crops"] < 1
    assert "| bg_psnr | 3 |" in (tmp_path / "r" / "samples.md").read_text()
    assert Image.open(tmp_path / "r" / "worst.png").size[1] > 2 * 160


def test_figures_are_recomputed_with_sample_quality_when_the_manifest_has_none(synthetic, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(synthetic, bare)
    manifest = bare / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for e in lines:
        e.pop("quality", None)
    manifest.write_text("".join(json.dumps(e) + "\n" for e in lines))
    result = run(bare, "--report", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "samples.json").read_text())
    assert report["computed"] == 3
    first = next(r for r in report["per_sample"] if r["index"] == 0)
    image = np.asarray(Image.open(next(bare.rglob("test/crack/0000.png"))).convert("RGB"))
    mask = np.asarray(Image.open(next(bare.rglob("ground_truth/crack/0000_mask.png")))) >= 128
    source = np.asarray(Image.open(next(bare.rglob("extra/crack/0000_source.png"))).convert("RGB"))
    expected = sample_quality(source, image, mask).as_dict()
    assert {k: first[k] for k in FIGURES} == pytest.approx(expected)


def test_diversity_is_zero_for_copies_and_larger_for_different_defects():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((4, 64, 64), dtype=bool)
    masks[:, 20:40, 20:40] = True
    copies = np.repeat(images[:1], 4, axis=0)
    assert diversity(random_features(crops_of(copies, masks))) == pytest.approx(0.0, abs=1e-9)
    smooth = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (20, 90, 160, 230)])
    varied = np.concatenate([images[:2], smooth[:2]])
    assert diversity(random_features(crops_of(varied, masks))) > diversity(random_features(crops_of(images, masks)))


def test_ic_lpips_and_kid_need_local_weight_files(synthetic, fewshot, tmp_path):
    result = run(synthetic, "--ic-lpips", "--real", fewshot, "--quiet")
    assert result.exit_code == 2 and "needs --lpips-weights FILE" in result.output and "nothing is downloaded" in result.output
    result = run(synthetic, "--kid", "--real", fewshot, "--quiet")
    assert result.exit_code == 2 and "needs --inception-weights FILE" in result.output
    result = run(synthetic, "--lpips-weights", tmp_path / "missing.pt", "--real", fewshot, "--quiet")
    assert result.exit_code == 2 and "file not found" in result.output


class _L1(torch.nn.Module):  # a stand-in distance network: mean |x - y| per image
    def forward(self, x, y):
        return (x - y).abs().mean(dim=(1, 2, 3))


class _Pool(torch.nn.Module):  # a stand-in feature network: per-channel means and maxima
    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], 1)


def test_ic_lpips_and_kid_over_user_torchscript_files(synthetic, fewshot, tmp_path):
    torch.jit.save(torch.jit.script(_L1()), str(tmp_path / "lpips.pt"))
    torch.jit.save(torch.jit.script(_Pool()), str(tmp_path / "inception.pt"))
    result = run(synthetic, "--real", fewshot, "--lpips-weights", tmp_path / "lpips.pt", "--inception-weights",
                 tmp_path / "inception.pt", "--report", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "r" / "samples.json").read_text())["set"]
    assert np.isfinite(figures["kid"]) and (np.isnan(figures["ic_lpips"]) or figures["ic_lpips"] > 0)


def test_ic_lpips_and_kid_by_hand():
    # Two real crops (black, white); generated: two near black (0, 10), one white. The L1
    # network in [-1, 1]: |0 - 10| / 255 * 2. Black cluster: one pair, 20/255; white: alone.
    gen = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (0, 10, 255)])
    real = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (0, 255)])
    net = torch.jit.script(_L1())
    assert ic_lpips(net, gen, real) == pytest.approx(20 / 255, rel=1e-5)
    # KID by hand: constant images v in {0, 1} -> _Pool features (v, ..., v), D = 6, so the
    # kernel is (v_a v_b + 1)^3: k(0,0) = k(0,1) = 1, k(1,1) = 8. X = Y = {0, 1}: unbiased
    # MMD^2 = kxx (off-diagonal mean, 1) + kyy (1) - 2 * kxy (mean of all four: 11 / 4) = -3.5;
    # all-white against all-black: 8 + 1 - 2 * 1 = 7.
    pool = torch.jit.script(_Pool())
    assert kid(pool, real, real) == pytest.approx(-3.5)
    assert kid(pool, np.stack([real[1], real[1]]), np.stack([real[0], real[0]])) == pytest.approx(8 + 1 - 2)
