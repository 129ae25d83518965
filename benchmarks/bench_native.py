"""The native runner (adabldm-native) against the Python runtime over ONNX Runtime, per
sample (stages 1-3 and the final decode, no adaptation), on this CPU, same bundle and noise.

Both run the same sample in one script, one after the other, after a warm-up each: the
Python runtime's pipeline is built once and ``diffuse`` + decode timed (median of
``--reps``); the runner samples ``--reps`` times in one process (its run.json's per-sample
times, load excluded) and its whole process is timed too. The agreement of the two (final
latent rel. L2, blend PSNR) is printed beside the times. Results: benchmarks/results/native_cpu.{md,json}.

    cmake -S . -B build/native && cmake --build build/native
    python benchmarks/bench_native.py [--bundle DIR] [--steps 50] [--reps 3] [--runner PATH]
Without --bundle the tiny model is exported at 256 px into a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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
from adabldm_ref.models import build_tiny
from adabldm_ref.pipeline import OkImage, ProceduralMasks, plan_sample, prepare_ok_image, to_uint8

ROOT = Path(__file__).resolve().parents[1]


def python_side(bundle: Bundle, gen: GenerationConfig, folder: Path, reps: int):
    """(median seconds per sample, z, blended) of the Python runtime; writes the native inputs."""
    from skimage import data

    plan = plan_sample(0, gen, [OkImage("brick", prepare_ok_image(data.brick(), gen.resolution))], ProceduralMasks())
    engines = bundle_engines(bundle, "onnxruntime")
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle to run [default: the tiny model exported at 256 px]")
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
            export_bundle(build_tiny(), ExportConfig(out=bundle_dir, batch_sizes=(1,), capture_steps=4, force=True))
        bundle = Bundle.open(bundle_dir)
        gen = GenerationConfig(resolution=bundle.resolution, seed=0, sampler=SamplerConfig(steps=args.steps),
                               adapt=AdaptConfig(iters=0))
        py_s, z_py, img_py = python_side(bundle, gen, tmp / "sample", args.reps)
        nat_s, nat_process_s, run, z_nat, img_nat = native_side(args.runner, bundle_dir, tmp / "sample",
                                                                tmp / "native", args.reps)
    rel = float(np.linalg.norm(z_nat - z_py) / np.linalg.norm(z_py))
    record.update({
        "bundle": {"model": bundle.manifest["model"], "resolution": bundle.resolution, "path": str(args.bundle or "tiny")},
        "steps": args.steps, "reps": args.reps, "native_backend": run["backend"],
        "python_onnxruntime_s": py_s, "native_s": nat_s, "native_process_s": nat_process_s,
        "native_load_s": run["load_s"], "ratio_python_over_native": py_s / nat_s,
        "latent_rel_l2": rel, "blend_psnr_db": psnr(img_nat, img_py),
    })
    finish(record)
    m = record["bundle"]["model"]
    lines = header_lines(record) + [
        "",
        f"One sample, {args.steps} DDIM steps (stages 1-3 + final decode, no adaptation), model {m['name']}"
        f" ({m['identity']}) at {bundle.resolution} px, same noise tape; median of {args.reps} after a warm-up.",
        "",
        "| runtime | s / sample | ratio |",
        "| --- | --- | --- |",
        f"| Python runtime, ONNX Runtime (engine_pipeline) | {py_s:.3f} | 1.00 |",
        f"| adabldm-native, {run['backend']} | {nat_s:.3f} | {py_s / nat_s:.2f}x the Python runtime's speed |",
        "",
        f"adabldm-native process, {args.reps + 1} samples with its network loading: {nat_process_s:.2f} s"
        f" (loading {run['load_s']:.2f} s).",
        f"Agreement: final latent rel. L2 {rel:.1e}, pre-adaptation blend PSNR {record['blend_psnr_db']:.1f} dB.",
    ]
    write_report(args.out / "native_cpu", record, lines)


if __name__ == "__main__":
    main()
