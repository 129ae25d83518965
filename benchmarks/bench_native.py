"""The native runner (adabldm-native) against the Python runtime, per sample (stages 1-3
and the final decode, no adaptation), on this CPU, same bundle and noise.

Three runs of the same sample in one script, one after the other, after a warm-up each:
the Python runtime on ONNX Runtime and on OpenVINO (the runner's runtime: the two Python
rows compare the runtimes under the same glue, the OpenVINO rows the glue under the same
runtime), each pipeline built once and ``diffuse`` + decode timed (median of ``--reps``);
the runner samples ``--reps`` times in one process (its run.json's per-sample times, load
excluded) and its whole process is timed too. The agreement with each Python run (final
latent rel. L2, blend PSNR) is printed beside the times. Results:
benchmarks/results/native_cpu.{md,json}.

    cmake -S . -B build/native && cmake --build build/native
    python benchmarks/bench_native.py [--model demo|tiny | --bundle DIR] [--steps 50] [--reps 3]
Without --bundle the model (default: the shipped demo model) is exported at 256 px into a
temporary folder.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from adabldm_core.metrics import psnr
from adabldm_engine.bundle import Bundle
from adabldm_engine.native import write_native_inputs
from adabldm_engine.runtime import bundle_engines, engine_pipeline
from adabldm_export.bundle import ExportConfig, export_bundle
from common import RESULTS, finish, header_lines, start, write_report
from PIL import Image

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.demo import load_demo
from adabldm_ref.models import build_tiny
from adabldm_ref.pipeline import OkImage, ProceduralMasks, plan_sample, prepare_ok_image, to_uint8

ROOT = Path(__file__).resolve().parents[1]
PYTHON_BACKENDS = ("onnxruntime", "openvino")


def python_side(bundle: Bundle, backend: str, gen: GenerationConfig, folder: Path, reps: int):
    """(median seconds per sample, z, blended) of the Python runtime; writes the native inputs."""
    from skimage import data

    plan = plan_sample(0, gen, [OkImage("brick", prepare_ok_image(data.brick(), gen.resolution))], ProceduralMasks())
    engines = bundle_engines(bundle, backend)
    with engine_pipeline(engines, bundle.tokenizer(), bundle.adapt_vae(), bundle.manifest["latent_scale"], gen) as p:
        write_native_inputs(folder, plan, gen, p.denoiser.embeddings, bundle.identity)
        times = []
        for k in range(reps + 1):  # the first is the warm-up
            t0 = time.perf_counter()
            z, _, _ = p.diffuse([plan])
            blended = to_uint8(p.codec.decode(z))
            if k:
                times.append(time.perf_counter() - t0)
    return statistics.median(times), z.numpy(), blended


def native_side(runner: Path, bundle: Path, folder: Path, out: Path, reps: int):
    """(median seconds per sample, process seconds, run record, z, blended) of the runner."""
    t0 = time.perf_counter()
    subprocess.run([str(runner), "--bundle", str(bundle), "--sample", str(folder), "--out", str(out),
                    "--repeat", str(reps + 1), "--quiet"], check=True)
    process_s = time.perf_counter() - t0
    record = json.loads((out / "run.json").read_text())
    per_sample = statistics.median(r["sample_s"] + r["decode_s"] for r in record["runs"][1:])
    z = np.load(out / "latent.npy")
    return per_sample, process_s, record, z, np.asarray(Image.open(out / "blended.png"))


# Runs argv[1:] and prints its peak RSS (KB). A process forked from this benchmark would
# inherit its high-water mark (Linux keeps ru_maxrss across exec), so a small interpreter
# starts the command and reads the child's own rusage.
PEAK_RSS = ("import os, sys; pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ); "
            "_, status, usage = os.wait4(pid, 0); print(usage.ru_maxrss); sys.exit(os.waitstatus_to_exitcode(status))")


def process_cost(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one process running ``cmd`` to the end."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, int(done.stdout.split()[-1]) / 1024


def cold_processes(runner: Path, bundle: Path, folder: Path, steps: int, tmp: Path) -> dict[str, dict]:
    """One sample from a fresh process each: adabldm-run on the bundle (ONNX Runtime, no
    adaptation; what a Python deployment starts) against adabldm-native on its dump."""
    python = [sys.executable, "-m", "adabldm_engine.cli", "--batch", "--num", "1", "--steps", str(steps),
              "--adapt-iters", "0", "--quiet", "--bundle", str(bundle), "--backend", "onnxruntime",
              "--out", str(tmp / "cold_python")]
    native = [str(runner), "--bundle", str(bundle), "--sample", str(folder), "--out", str(tmp / "cold_native"),
              "--quiet"]
    return {name: dict(zip(("wall_s", "peak_rss_mb"), process_cost(cmd)))
            for name, cmd in (("adabldm-run", python), ("adabldm-native", native))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle to run [default: --model exported at 256 px]")
    ap.add_argument("--model", choices=("demo", "tiny"), default="demo",
                    help="model to export without --bundle: the shipped demo model (crack) or the random tiny one")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runner", type=Path, default=ROOT / "build" / "native" / "adabldm-native")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.runner.is_file():
        raise SystemExit(f"{args.runner} not built: cmake -S . -B build/native && cmake --build build/native")
    record = start(__file__, argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle_dir = args.bundle
        if bundle_dir is None:
            bundle_dir = tmp / "bundle"
            models = build_tiny() if args.model == "tiny" else load_demo()
            export_bundle(models, ExportConfig(out=bundle_dir, batch_sizes=(1,), capture_steps=4, force=True))
        bundle = Bundle.open(bundle_dir)
        gen = GenerationConfig(resolution=bundle.resolution, seed=0, sampler=SamplerConfig(steps=args.steps),
                               adapt=AdaptConfig(iters=0))
        python = {b: python_side(bundle, b, gen, tmp / "sample", args.reps) for b in PYTHON_BACKENDS}
        nat_s, nat_process_s, run, z_nat, img_nat = native_side(args.runner, bundle_dir, tmp / "sample",
                                                                tmp / "native", args.reps)
        cold = cold_processes(args.runner, bundle_dir, tmp / "sample", args.steps, tmp)
    base_s = python["onnxruntime"][0]
    agreement = {b: {"latent_rel_l2": float(np.linalg.norm(z_nat - z) / np.linalg.norm(z)),
                     "blend_psnr_db": psnr(img_nat, img)} for b, (_, z, img) in python.items()}
    record.update({
        "bundle": {"model": bundle.manifest["model"], "resolution": bundle.resolution,
                   "path": str(args.bundle or args.model)},
        "steps": args.steps, "reps": args.reps, "native_backend": run["backend"],
        "python_s": {b: s for b, (s, _, _) in python.items()}, "native_s": nat_s, "native_process_s": nat_process_s,
        "native_load_s": run["load_s"], "ratio_python_onnxruntime_over_native": base_s / nat_s,
        "native_agreement": agreement, "cold_process": cold,
    })
    finish(record)
    m = record["bundle"]["model"]
    rows = [(f"Python runtime, {b} (engine_pipeline)", s) for b, (s, _, _) in python.items()]
    rows.append((f"adabldm-native, {run['backend']}", nat_s))
    lines = header_lines(record) + [
        "",
        f"One sample, {args.steps} DDIM steps (stages 1-3 + final decode, no adaptation), model {m['name']}"
        f" ({m['identity']}) at {bundle.resolution} px, same noise tape; median of {args.reps} after a warm-up.",
        "",
        "| runtime | s / sample | speed vs Python on ONNX Runtime |",
        "| --- | --- | --- |",
        *(f"| {name} | {s:.3f} | {base_s / s:.2f}x |" for name, s in rows),
        "",
        f"adabldm-native process, {args.reps + 1} samples with its network loading: {nat_process_s:.2f} s"
        f" (loading {run['load_s']:.2f} s).",
        "",
        "One sample from a fresh process (the Python side: `adabldm-run --batch --num 1 --adapt-iters 0"
        " --backend onnxruntime`, imports and writing the run included; the native side: the runner on that"
        " sample's dump; peak RSS read through a small launcher, whose own 10 MB is the floor):",
        "",
        "| process | wall s | peak RSS MB |",
        "| --- | --- | --- |",
        *(f"| {name} | {c['wall_s']:.2f} | {c['peak_rss_mb']:.0f} |" for name, c in cold.items()),
        "",
        "adabldm-native's output against each Python run:",
        "",
        "| Python runtime on | final latent rel. L2 | pre-adaptation blend PSNR |",
        "| --- | --- | --- |",
        *(f"| {b} | {a['latent_rel_l2']:.1e} | {a['blend_psnr_db']:.1f} dB |" for b, a in agreement.items()),
    ]
    write_report(args.out / "native_cpu", record, lines)


if __name__ == "__main__":
    main()
