"""benchmarks/bench_adaptation_kernel.py on the CPU: its reference kernel is the reference
loop's step, the other eager kernels stay within rounding of it, and a short run makes a
full table."""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_adaptation_kernel")


def test_reference_kernel_takes_the_reference_loops_steps(bench, tiny):
    from adabldm_ref.adaptation import adapt_decoder
    from adabldm_ref.config import AdaptConfig

    vae = tiny.vae
    h, targets = bench.problem(vae, 64)
    adapt = AdaptConfig(iters=3)
    step, _, decode = bench.adaptation_step(vae, h, targets, bench.REFERENCE, adapt, torch.device("cpu"))
    for _ in range(adapt.iters):
        step()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # problem()'s latent, seed 0
    want = adapt_decoder(vae, z, *targets, adapt, latent_scale=1.0).image
    torch.testing.assert_close(decode(), want, rtol=0, atol=0)


def test_short_run_writes_every_kernel(bench, tiny, tmp_path):
    kernels = [k for k in bench.KERNELS if not k.compiled]
    rows = bench.bench_model("tiny", tiny.vae, 64, torch.device("cpu"), reps=1, kernels=kernels)
    assert [r["kernel"] for r in rows] == [k.name for k in kernels]
    by_name = {r["kernel"]: r for r in rows}
    ref = by_name[bench.REFERENCE.name]
    assert ref["speedup"] == 1.0 and ref["image_rel_l2"] == ref["grad_rel_l2"] == 0.0
    assert by_name["fp32, channels-last"]["grad_rel_l2"] < 1e-4  # a layout change: rounding only
    assert 1e-4 < by_name["bf16, NCHW"]["image_rel_l2"] < 0.1  # bf16: visibly coarser, still close
    assert all(r["step_s"] > 0 and r["params_without_grad"] == 0 for r in rows)
    rows.append({**rows[-1], "kernel": "lost its backward", "params_without_grad": 3, "step_s": None, "speedup": None})
    record = dict(date="d", machine={"device": "cpu", "cpu": "c", "cores": 2, "torch_threads": 2,
                                     "omp_wait_policy": None, "torch": "t", "diffusers": "d", "python": "p"},
                  versions={"torch": "t"},
                  reps=1, load_average_start=0.0, load_average_end=0.0, wall_s=1.0, command="x", rows=rows)
    bench.write(tmp_path / "k", record)
    assert len(json.loads((tmp_path / "k.json").read_text())["rows"]) == len(kernels) + 1
    table = (tmp_path / "k.md").read_text()
    assert table.count("| tiny |") == len(kernels) + 1
    assert "| lost its backward | not timed | - |" in table and f"| 3 of {rows[0]['params']} |" in table
