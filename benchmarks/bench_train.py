"""Training speed of adabldm-train: seconds per optimiser step and images/s, fp32 against
bf16 autocast, batch 1 and 4, on the tiny model and on a random-weight SD-1.5-size
UNet + ControlNet (+ SD VAE, 768-d CLIP), with peak memory.

    python benchmarks/bench_train.py [--device cpu|cuda] [--resolution 256] [--tiny-steps 5] [--sd-steps 2]
                                     [--sd-batch4-steps 1 --sd-batch4-warmup 0]

Each variant builds a Trainer (the one adabldm-train runs: pairs made on the fly, VAE
posterior, noise, ControlNet + frozen UNet forward and backward, clipping, AdamW) over
the same networks, takes one untimed warm-up step, then times ``--*-steps`` steps (median);
on a 2-core CPU an SD-size step at batch 4 takes minutes, so there the defaults time one
step without a warm-up (the first step's allocations are a small part of it).
The speed does not depend on the weights, so random ones stand in for SD-1.5's.
Peak memory: on the CPU the largest resident set sampled every 5 ms during the variant's
steps, less the resident set before its trainer was built (the networks), so it is what
training adds (ControlNet gradients, AdamW moments, activations); on CUDA
torch.cuda.max_memory_allocated. FLOPs: torch's FlopCounterMode over one batch-1 fp32 step, and over the VAE encode of its
target alone (the frozen encoder runs every step: its share is what caching latents would save).
Writes benchmarks/results/train_{device}.md and .json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep: no spinning on a shared machine

import argparse
import ctypes
import gc
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, clock, finish, header_lines, start, write_report
from torch.utils.flop_counter import FlopCounterMode

from adabldm_ref.fewshot import Split
from adabldm_ref.models import build_random_sd15, build_tiny
from adabldm_ref.pairs import Background, Shot, host_table
from adabldm_ref.pipeline import prepare_ok_image
from adabldm_ref.procedural import procedural_mask
from adabldm_ref.train import TrainConfig, TrainData, Trainer

PRECISIONS = ("fp32", "bf16")
BATCHES = (1, 4)


def make_data(resolution: int) -> TrainData:
    """scikit-image textures as OK images; two of them with procedural cracks as the shots."""
    from skimage import data

    rgbs = {n: prepare_ok_image(getattr(data, n)(), resolution) for n in ("brick", "gravel", "grass")}
    backgrounds = [Background(n, rgb, np.ones(rgb.shape[:2], bool)) for n, rgb in rgbs.items()]
    rng = np.random.default_rng(0)
    shots = []
    for i, name in enumerate(("brick", "gravel")):
        mask = procedural_mask("crack", rng, resolution) >= 200
        rgb = rgbs[name].copy()
        rgb[mask] = rgb[mask] // 4
        shots.append(Shot(f"{i:03d}", rgb, mask))
    split = Split(tuple(s.name for s in shots), (), "benchmark")
    return TrainData(backgrounds, shots, host_table(shots, backgrounds), split, "benchmark")


class PeakRss:
    """Largest resident set (bytes) seen by a 5 ms sampler while active."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def release_memory() -> None:
    """Free what the last variant held and hand it back to the OS (glibc keeps freed heap)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def flops_per_image(trainer: Trainer) -> tuple[float, float]:
    """FLOPs per image of one optimiser step (forward, backward, the frozen VAE encode
    included) and of the VAE encode alone."""
    n = trainer.cfg.batch_size * trainer.cfg.grad_accum
    step, encode = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with step:
        trainer.step(10_000)
    x = torch.zeros(1, 3, trainer.cfg.resolution, trainer.cfg.resolution, device=trainer.device)
    with encode, torch.no_grad():
        trainer.vae.encode(x.to(trainer.vae.dtype))
    return step.get_total_flops() / n, float(encode.get_total_flops())


def bench_variant(models, data: TrainData, name: str, precision: str, batch: int, steps: int, warmup: int,
                  device: str, resolution: int, count_flops: bool) -> dict:
    release_memory()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    cfg = TrainConfig(images=Path("."), defects=Path("."), defect_masks=Path("."), out=Path("."),
                      object_name="texture", defect="crack", resolution=resolution, batch_size=batch,
                      precision=precision, device=device)
    with PeakRss() as mem:
        base_rss = mem.peak
        trainer = Trainer(cfg, models, data)
        for s in range(1, warmup + 1):  # warm-up: allocations, kernel choice
            trainer.step(s)
        wall, cpu, pair_s = [], [], []
        for s in range(warmup + 1, warmup + steps + 1):
            t0, c0 = clock(device), clock(device, cpu_time=True)
            trainer.step(s)
            wall.append(clock(device) - t0)
            cpu.append(clock(device, cpu_time=True) - c0)
            p0 = time.perf_counter()
            trainer.pairs(s, 0)
            pair_s.append(time.perf_counter() - p0)
    row = {"model": name, "precision": precision, "batch": batch, "steps": steps, "warmup": warmup,
           "s_per_step": statistics.median(wall), "cpu_s_per_step": statistics.median(cpu),
           "pairs_s_per_step": statistics.median(pair_s)}
    row["images_per_s"] = batch / row["s_per_step"]
    if cuda:
        row["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        row["peak_rss_bytes"], row["added_rss_bytes"] = mem.peak, mem.peak - base_rss
    if count_flops:
        row["flop_per_image"], row["vae_encode_flop_per_image"] = flops_per_image(trainer)
    for param in models.controlnet.parameters():  # the next variant starts without this one's gradients
        param.grad = None
    del trainer
    print(row, flush=True)
    return row


def report(record: dict, device: str) -> list[str]:
    rows = record["rows"]
    cuda = device.startswith("cuda")
    lines = ["# ControlNet training step (adabldm-train)", "", *header_lines(record),
             f"- resolution {record['resolution']} px; median of the timed steps (column steps: timed +"
             " untimed warm-up)", ""]
    mem_head = "peak GPU memory" if cuda else "peak RSS (added by training)"
    lines += [f"| model | precision | batch | steps | s/step | images/s | CPU s/step | pairs s/step | {mem_head} |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = (f"{r['peak_bytes'] / 2**30:.2f} GiB" if cuda else
               f"{r['peak_rss_bytes'] / 2**30:.2f} GiB ({r['added_rss_bytes'] / 2**30:+.2f})")
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['steps']} + {r['warmup']} | {r['s_per_step']:.3f} |"
                     f" {r['images_per_s']:.2f} | {r['cpu_s_per_step']:.3f} | {r['pairs_s_per_step']:.4f} | {mem} |")
    lines.append("")
    for name in ("tiny", "sd15-size"):
        by = {(r["precision"], r["batch"]): r for r in rows if r["model"] == name}
        for b in BATCHES:
            if ("fp32", b) in by and ("bf16", b) in by:
                lines.append(f"- {name}, batch {b}: bf16 autocast {by[('fp32', b)]['s_per_step'] / by[('bf16', b)]['s_per_step']:.2f}x"
                             " the speed of fp32")
        counted = [r for r in rows if r["model"] == name and "flop_per_image" in r]
        if counted:
            flop, enc = counted[0]["flop_per_image"], counted[0]["vae_encode_flop_per_image"]
            best = max(r["images_per_s"] for r in rows if r["model"] == name)
            lines.append(f"- {name}: {flop / 1e9:.4g} GFLOP per image per step (FlopCounterMode, batch 1 fp32), of"
                         f" which the VAE encode of the target {enc / 1e9:.4g} GFLOP ({enc / flop:.0%}); at the best"
                         f" rate here ({best:.3g} images/s) {flop * best / 1e9:.1f} GFLOP/s")
    lines += ["", "s/step is wall time; CPU s/step is this process's CPU time per torch thread (on a shared"
              " machine wall time also counts other jobs). pairs s/step: building one batch of pairs"
              " (numpy/scipy on the host), included in s/step."]
    if not cuda:
        lines += ["", "GPU figures: missing (no GPU was available to this run); the same script with"
                  " `--device cuda` measures them."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--tiny-steps", type=int, default=5, help="timed steps per tiny-model variant")
    p.add_argument("--sd-steps", type=int, default=2, help="timed steps per SD-size variant at batch 1")
    p.add_argument("--sd-batch4-steps", type=int, default=1, help="timed steps per SD-size variant at batch 4")
    p.add_argument("--sd-batch4-warmup", type=int, default=0, help="warm-up steps per SD-size variant at batch 4")
    p.add_argument("--skip-sd", action="store_true", help="tiny model only")
    p.add_argument("--out", type=Path, default=None, help="results stem [default: results/train_{device}]")
    args = p.parse_args()
    record = start(__file__, device=args.device)
    record.update(resolution=args.resolution, rows=[])
    data = make_data(args.resolution)
    plan = {"tiny": (build_tiny, {1: (args.tiny_steps, 1), 4: (args.tiny_steps, 1)})}
    if not args.skip_sd:
        plan["sd15-size"] = (build_random_sd15, {1: (args.sd_steps, 1), 4: (args.sd_batch4_steps, args.sd_batch4_warmup)})
    for name, (build, schedule) in plan.items():
        models = build()
        for batch in BATCHES:
            steps, warmup = schedule[batch]
            for precision in PRECISIONS:
                count = batch == 1 and precision == "fp32"
                record["rows"].append(bench_variant(models, data, name, precision, batch, steps, warmup,
                                                    args.device, args.resolution, count))
        del models
    finish(record)
    device = torch.device(args.device).type
    write_report(args.out or RESULTS / f"train_{device}", record, report(record, args.device))


if __name__ == "__main__":
    main()
