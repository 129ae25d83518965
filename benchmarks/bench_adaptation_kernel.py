"""One decoder-adaptation step (forward, loss, backward, AdamW) in every arithmetic set-up
that keeps the reference's trajectory: precision x memory layout x torch.compile.

    python benchmarks/bench_adaptation_kernel.py [--device cpu|cuda] [--reps 3]

bench_adaptation.py showed that every change of the optimisation (fewer steps, another
lr, fewer trained layers) moves the defect region 20-30 dB away from the reference, so
the cost of the 200 full-decoder steps can only fall by running the same step faster.
This script measures how far that goes on the machine at hand: each variant adapts its
own copy of the decoder of the tiny model (64 px) and of a random-weight SD-1.5-size
VAE (256 px); steps are timed round-robin (median) after a warm-up step that also
compiles (from a cold Inductor cache). Numerical distance to the fp32 reference step: rel. L2 of the decoded image
and of the gradient at the same starting weights. Writes
benchmarks/results/adaptation_kernel_{device}.md and .json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench_adaptation.py: no spinning threads

import argparse
import copy
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from adabldm_export.validate import agreement
from common import (
    RESULTS,
    finish,
    header_lines,
    interleaved,
    sd_size_vae,
    start,
    write_report,
)

from adabldm_ref.adaptation import adaptation_loss
from adabldm_ref.config import AdaptConfig
from adabldm_ref.models import build_tiny


@dataclass(frozen=True)
class Kernel:
    precision: str  # "fp32" | "bf16" (autocast)
    channels_last: bool
    compiled: bool

    @property
    def name(self) -> str:
        return f"{self.precision}, {'channels-last' if self.channels_last else 'NCHW'}{', compiled' if self.compiled else ''}"


KERNELS = [Kernel(p, cl, c) for c in (False, True) for p in ("fp32", "bf16") for cl in (False, True)]
REFERENCE = KERNELS[0]  # fp32, NCHW, eager: the reference loop's arithmetic


def problem(vae, size: int, seed: int = 0):
    """Frozen post_quant_conv features h and the loss targets (x_fg, x_ok, mask) of one sample."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, vae.config.latent_channels, size // 8, size // 8, generator=g)
    with torch.no_grad():
        h = vae.post_quant_conv(z)
        x_fg = vae.decoder(h).clamp(-1, 1)
    x_ok = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4 : size // 2, size // 3 : 2 * size // 3] = 1.0
    return h, (x_fg, x_ok, mask)


def adaptation_step(vae, h, targets, kernel: Kernel, adapt: AdaptConfig, device: torch.device):
    """(step, first, decode): step() runs one AdamW update; first() returns the image and
    the gradients (one per parameter) at the current weights without updating; decode()
    the current image."""
    dec = copy.deepcopy(vae.decoder).to(device).requires_grad_(True)
    h = h.to(device)
    targets = tuple(t.to(device) for t in targets)
    if kernel.channels_last:
        dec = dec.to(memory_format=torch.channels_last)
        h = h.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(dec, dynamic=False) if kernel.compiled else dec
    opt = torch.optim.AdamW(dec.parameters(), lr=adapt.lr, weight_decay=adapt.weight_decay)
    amp = lambda: torch.autocast(device.type, torch.bfloat16, enabled=kernel.precision == "bf16")  # noqa: E731

    def loss_backward() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with amp():
            x = fn(h).float()
        adaptation_loss(x, *targets, adapt.preservation).backward()
        return x

    def step() -> None:
        loss_backward()
        opt.step()

    def first() -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = loss_backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in dec.parameters()]
        return x.detach().cpu(), [g.detach().cpu() for g in grads]

    @torch.no_grad()
    def decode() -> torch.Tensor:
        with amp():
            return fn(h).float().cpu()

    return step, first, decode


def bench_model(label: str, vae, size: int, device: torch.device, reps: int, kernels: list[Kernel]) -> list[dict]:
    vae = vae.eval().requires_grad_(False)
    h, targets = problem(vae, size)
    adapt = AdaptConfig()
    steps, rows = {}, []
    want = None
    for k in kernels:
        step, first, _ = adaptation_step(vae, h, targets, k, adapt, device)
        t0 = time.perf_counter()
        x, grads = first()  # also the compile, for compiled kernels
        warm = time.perf_counter() - t0
        want = want or (x, grads)
        # A parameter whose gradient is exactly zero where the reference's is not has lost
        # its backward (e.g. autocast across a torch.compile graph break): not the same step.
        lost = sum(1 for g, w in zip(grads, want[1]) if not g.any() and w.any())
        rows.append(dict(model=label, size=size, kernel=k.name, **asdict(k), first_call_s=warm,
                         image_rel_l2=agreement(x, want[0]).rel_l2,
                         grad_rel_l2=agreement(flat(grads), flat(want[1])).rel_l2,
                         params=len(grads), params_without_grad=lost, step_s=None, speedup=None))
        if not lost:  # broken kernels are not timed
            steps[k.name] = step
        print(f"{label} {k.name}: first call {warm:.1f} s" + (f", {lost} parameters without gradient" if lost else ""),
              flush=True)
    seconds = interleaved(steps, device, reps, warmup=1)
    ref = seconds[REFERENCE.name]
    for r in rows:
        if r["kernel"] in seconds:
            r["step_s"] = seconds[r["kernel"]]
            r["speedup"] = ref / r["step_s"]
    return rows


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile kernels")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = torch.device(args.device)
    kernels = [k for k in KERNELS if not (args.no_compile and k.compiled)]
    meta = start(__file__, device=device)
    with tempfile.TemporaryDirectory(prefix="adabldm-inductor-") as cache:
        # A cold Inductor cache (its directory is read at compile time), so that "first call"
        # is the real compile; assigned, not defaulted: importing torch may already set it.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        rows = bench_model("tiny", build_tiny().vae, 64, device, args.reps * 3, kernels)
        rows += bench_model("SD-1.5-size", sd_size_vae(), 256, device, args.reps, kernels)
    record = finish(meta) | {"settings": vars(args), "reps": args.reps, "rows": rows}
    write(args.out / f"adaptation_kernel_{device.type}", record)


def write(stem: Path, record: dict) -> None:
    m = record["machine"]
    lines = [
        f"# One adaptation step: precision x layout x torch.compile ({m['device']})", "",
        *header_lines(record),
        f"- device: {m.get('gpu', m['device'])}. Steps timed round-robin, median of"
        f" {record['reps']} (SD-size) / {3 * record['reps']} (tiny); wall seconds.",
        "- step = decoder forward + adaptation loss + backward + AdamW (torch.optim.AdamW), one"
        " sample; per step, not per sample (bench_adaptation.py has whole samples); 'x' = fp32 NCHW"
        " eager step / this step; rel. L2 vs the fp32 NCHW eager step at the same starting weights.",
        "- first call: the compile for compiled kernels (cold Inductor cache for the first; later ones"
        " reuse what it cached). A kernel with parameters whose gradient is exactly zero (the"
        " reference's is not) has lost part of its backward: not timed.", "",
        "| model | kernel | step s | x | first call s | image rel. L2 | grad rel. L2 | params without grad |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        timed = r["step_s"] is not None
        step = f"{r['step_s']:.3f} | {r['speedup']:.2f}x" if timed else "not timed | -"
        lines.append(f"| {r['model']} | {r['kernel']} | {step} | {r['first_call_s']:.1f} | {r['image_rel_l2']:.1e}"
                     f" | {r['grad_rel_l2']:.1e} | {r['params_without_grad']} of {r['params']} |")
    write_report(stem, record, lines)


if __name__ == "__main__":
    main()
