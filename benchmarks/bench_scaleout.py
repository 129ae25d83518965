"""Scale-out overhead on this CPU: the single-process job against Ray Data with two actors.

Both make the same samples (tiny model) into fresh folders, whole jobs timed end to end
(inputs, model, samples, contact sheet); the single process runs with one torch thread,
as each actor does (one CPU each), so the two actors can at best halve the wall time on
two cores. Reported per sample: wall seconds, and the overhead of Ray, in core-seconds,
``actors x (Ray s per sample) - (single s per sample)`` (0 for a perfect split), from
wall = fixed + per-sample x num fitted over two job sizes; ``ray.init`` is timed apart.
The files of the two runs are compared byte for byte.

    python benchmarks/bench_scaleout.py [--nums 8,24 --resolution 64 --steps 10 --adapt-iters 10 --actors 2]
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, finish, header_lines, start, write_report

from adabldm_engine.job import JobConfig, run_job
from adabldm_engine.scaleout import RayConfig, run_ray
from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig


def digests(out: Path) -> dict[str, str]:
    files = [p for d in ("texture/test", "texture/ground_truth", "extra") for p in (out / d).rglob("*.png")]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def fit(nums, walls) -> tuple[float, float]:
    """(fixed s, s per sample) of wall = fixed + per_sample * num, least squares."""
    n_mean, w_mean = sum(nums) / len(nums), sum(walls) / len(walls)
    slope = sum((n - n_mean) * (w - w_mean) for n, w in zip(nums, walls)) / sum((n - n_mean) ** 2 for n in nums)
    return w_mean - slope * n_mean, slope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nums", default="8,24", help="job sizes: the fixed and per-sample costs are fitted over them")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--adapt-iters", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    nums = [int(n) for n in args.nums.split(",")]
    torch.set_num_threads(1)
    record = start(__file__)
    import ray

    gen = GenerationConfig(resolution=args.resolution, sampler=SamplerConfig(steps=args.steps),
                           adapt=AdaptConfig(iters=args.adapt_iters))
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaleout_"))

    def config(name: str, num: int) -> JobConfig:
        return JobConfig(out=tmp / name, num=num, generation=gen, batch_size=args.batch_size, device="cpu", model="tiny")

    t0 = time.perf_counter()
    ray.init(num_cpus=args.actors, object_store_memory=80 * 1024**2, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    single, on_ray, same = [], [], True
    for num in nums:  # alternating, so that the shared machine's drift hits both
        t0 = time.perf_counter()
        assert run_job(config(f"single{num}", num), progress=False).generated == num
        single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert run_ray(config(f"ray{num}", num), RayConfig(actors=args.actors), progress=False).generated == num
        on_ray.append(time.perf_counter() - t0)
        same &= digests(tmp / f"single{num}") == digests(tmp / f"ray{num}")
    ray.shutdown()
    (s_fixed, s_per), (r_fixed, r_per) = fit(nums, single), fit(nums, on_ray)
    overhead = args.actors * r_per - s_per  # core-seconds per sample beyond the single process's
    record.update(settings=vars(args), ray_version=ray.__version__, ray_init_s=init_s, nums=nums, single_s=single,
                  ray_s=on_ray, single_fixed_s=s_fixed, single_per_sample_s=s_per, ray_fixed_s=r_fixed,
                  ray_per_sample_s=r_per, overhead_core_s_per_sample=overhead, identical_files=same)
    finish(record)
    rows = [f"| {n} | {a:.1f} | {b:.1f} | {a / b:.2f}x |" for n, a, b in zip(nums, single, on_ray)]
    lines = ["# Scale-out on the CPU: one process against Ray Data with two actors", "",
             *header_lines(record), f"- ray {ray.__version__}", "",
             f"Tiny model, {args.resolution} px, {args.steps} DDIM steps, {args.adapt_iters} adaptation iterations,"
             f" batch size {args.batch_size}; whole jobs (inputs, model load, samples, contact sheet) into fresh"
             " folders, one torch thread per process (the single process; each actor has 1 CPU); one run per size,"
             " alternating. Wall = fixed + per-sample x num, fitted over the sizes.", "",
             f"| samples | single process s | Ray Data, {args.actors} actors s | speedup |", "|---|---|---|---|",
             *rows, "",
             "| | fixed s (per job) | s per sample (wall) | core-s per sample |", "|---|---|---|---|",
             f"| single process | {s_fixed:.1f} | {s_per:.2f} | {s_per:.2f} |",
             f"| Ray Data, {args.actors} actors | {r_fixed:.1f} | {r_per:.2f} | {args.actors * r_per:.2f} |", "",
             f"- Ray overhead per sample: {overhead:+.2f} core-seconds ({args.actors} x Ray's s per sample"
             " - the single process's); the fixed part is the actors' start (each imports torch and loads"
             " the model) and Ray Data's planning",
             f"- `ray.init` of the local Ray (not in the rows): {init_s:.1f} s",
             f"- files of the two runs identical (sha256 of every PNG): {same}"]
    write_report(RESULTS / "scaleout_cpu", record, lines)


if __name__ == "__main__":
    main()
