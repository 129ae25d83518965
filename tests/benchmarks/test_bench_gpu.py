"""benchmarks/bench_gpu.py without a GPU: its arithmetic, table and goals, the FLOP count
of the SD-1.5-size networks, and a whole dry run on the tiny model (CPU)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_gpu")


def test_step_flops_and_rates(bench):
    per_row = {"unet": 0.20e12, "controlnet": 0.08e12}
    flops = bench.step_flops(per_row, 8)
    assert flops == pytest.approx(2 * 8 * 0.28e12)  # CFG: 16 rows
    assert bench.tflops(flops, 0.02) == pytest.approx(224.0)
    assert bench.floor_fraction(flops, 0.02, 800.0) == pytest.approx(0.28)
    assert math.isnan(bench.tflops(flops, 0.0)) and math.isnan(bench.floor_fraction(flops, 1.0, 0.0))


def test_ratios_per_section_and_batch_and_bulk_per_sample(bench):
    ref, fast = bench.REFERENCE, "TensorRT fp16 + CUDA graph"
    rows = [
        {"section": "step", "variant": ref, "batch": 1, "seconds": 0.120, "samples": 1},
        {"section": "step", "variant": fast, "batch": 1, "seconds": 0.010, "samples": 1},
        {"section": "step", "variant": ref, "batch": 8, "seconds": 0.800, "samples": 8},
        {"section": "step", "variant": fast, "batch": 8, "seconds": 0.040, "samples": 8},
        {"section": "bulk", "variant": ref, "batch": 1, "seconds": 10.0, "samples": 2},  # 0.2 samples/s
        {"section": "bulk", "variant": fast, "batch": 8, "seconds": 2.0, "samples": 8},  # 4 samples/s
        {"section": "all", "variant": "ONNX Runtime CUDA", "batch": "", "note": "skipped: needs onnxruntime-gpu"},
    ]
    bench.add_ratios(rows)
    assert [r.get("speedup") for r in rows] == pytest.approx([1.0, 12.0, 1.0, 20.0, 1.0, 20.0, None])


def test_table_and_goals(bench):
    rows = [
        {"section": "step", "variant": bench.REFERENCE, "batch": 8, "seconds": 0.8, "samples": 8, "speedup": 1.0},
        {"section": "step", "variant": "fast", "batch": 8, "seconds": 0.05, "samples": 8, "speedup": 16.0,
         "tflops": 72.0, "floor": 0.09},
        {"section": "bulk", "variant": "fast", "batch": 8, "seconds": 2.0, "samples": 8, "speedup": 25.0},
    ]
    table = bench.format_table(rows)
    assert table[0].startswith("| section | variant | batch | seconds | samples/s | speed-up")
    assert len(table) == 2 + len(rows)
    assert "| step | fast | 8 | 0.0500 | 160.00 | 16.0x | 72 | 9% |" in table[3]
    goals = bench.goal_checks(rows)
    assert goals == [
        "- UNet+ControlNet step speed-up over fp32 eager: 16.0x (goal >= 10.0x) met",
        "- step share of the FLOP floor: 9% (goal >= 40%) MISSED",
        "- bulk samples/s speed-up (with adaptation): 25.0x (goal >= 20.0x) met",
    ]
    assert bench.goal_checks([])[0].endswith("not measured (goal >= 10.0x)")


def test_budget(bench):
    now = [100.0]
    budget = bench.Budget(60.0, clock=lambda: now[0])
    assert budget.allows(60.0)
    now[0] = 150.0
    assert budget.left() == pytest.approx(10.0) and budget.allows(10.0) and not budget.allows(11.0)


def test_psnr(bench):
    a = torch.zeros(1, 3, 4, 4)
    assert bench.psnr(a, a) == math.inf
    assert bench.psnr(a, a + 0.02) == pytest.approx(10 * math.log10(4 / 0.0004))


def test_flop_count_of_sd15_size_networks_matches_the_floor(bench):
    """Counted on the meta device (no weights): the SD-1.5 UNet and ControlNet at 32 x 32
    latents are within 25% of the issue's floor (0.20 and 0.08 TFLOP per row)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):  # build_random_sd15's architecture
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        controlnet = ControlNetModel.from_unet(unet)
    flops = bench.flops_per_row(unet.config, controlnet.config, 768, 256)
    assert flops["unet"] / 1e12 == pytest.approx(bench.FLOOR_TFLOP["unet"], rel=0.25)
    assert flops["controlnet"] / 1e12 == pytest.approx(bench.FLOOR_TFLOP["controlnet"], rel=0.25)
    assert bench.flops_per_row(unet.config, controlnet.config, 768, 512)["unet"] > 3.5 * flops["unet"]


def test_dry_run_exercises_every_section_on_the_cpu(bench, tmp_path):
    cfg = dataclasses.replace(bench.DRY_RUN, batches=(1,), steps=2, reps=1, bulk_batch=1, adapt_iters=1)
    rows, info = bench.run(cfg, ["--dry-run"], log=lambda s: None)
    sections = {(r["section"], r["variant"]) for r in rows}
    for section in ("step", "sample", "bulk"):
        assert (section, bench.REFERENCE) in sections and (section, "PyTorch fp16 eager") in sections
    [parity] = [r for r in rows if r["section"] == "parity"]
    assert parity["parity"].startswith("ok ")  # fp16 on the CPU within the fp16 tolerance
    skipped = {r["variant"]: r["note"] for r in rows if r["section"] == "all"}
    assert skipped["PyTorch fp16 + CUDA graph"] == "skipped: needs CUDA"
    assert "TensorRT fp16 + CUDA graph" in skipped and "ONNX Runtime CUDA (fp32 graphs)" in skipped
    timed = [r for r in rows if r["section"] in ("step", "sample", "bulk")]
    assert all(r["seconds"] and r["seconds"] > 0 and r.get("speedup") for r in timed), timed
    assert info["gpu"] == "none (CPU)" and info["flops_per_row_tflop"]["unet"] > 0
    lines = bench.write(rows, info, tmp_path)
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"] == json.loads(json.dumps(rows, default=str))
    assert (tmp_path / "gpu.md").read_text().splitlines() == lines


def test_main_needs_cuda_unless_dry_run(bench, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main([]) == 1
    assert "needs a CUDA GPU (use --dry-run" in capsys.readouterr().err
    cfg = bench.parse(["--dry-run", "--budget", "12", "--out", "x"])
    assert (cfg.device, cfg.model, cfg.budget_s, cfg.results) == ("cpu", "tiny", 12.0, Path("x"))
