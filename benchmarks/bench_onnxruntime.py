"""PyTorch eager vs ONNX Runtime on the CPU, side by side in one process.

Per network (tiny model, batch 1 and 4) and per whole sample (diffusion stages and
adaptation timed separately), then the UNet+ControlNet step of a random-weight
SD-1.5-size model at 256 px. Variants are timed interleaved (median of repeats) and
printed with ratios; results go to benchmarks/results/onnxruntime_cpu.{md,json}.

    python benchmarks/bench_onnxruntime.py [--skip-sd15] [--reps 5]
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from adabldm_core.specs import random_inputs
from adabldm_engine.backends import OrtBackend, TorchBackend, activated
from adabldm_engine.bundle import Bundle
from adabldm_engine.runtime import bundle_engines, engine_pipeline, torch_engines
from adabldm_export.bundle import ExportConfig, export_bundle
from adabldm_export.onnx_export import export_onnx
from adabldm_export.validate import agreement
from common import RESULTS, finish, header_lines, interleaved, start, write_report

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.models import build_random_sd15, build_tiny
from adabldm_ref.networks import network_modules, network_specs
from adabldm_ref.pipeline import OkImage, ProceduralMasks, plan_sample, prepare_ok_image


def ort_unet_optimized(path: Path, out: Path) -> Path | None:
    """onnxruntime.transformers' Stable Diffusion UNet fusions, CPU-safe subset.

    Its attention fusion cannot parse the attention of torch 2.13's TorchScript export
    (num_heads is read from a reshape it does not find: TypeError) and its QuickGelu fusion
    stops on a Mul by a non-scalar constant (ValueError), so both are off here; what is
    left (LayerNorm, SkipLayerNorm) ONNX Runtime's own CPU optimiser mostly does anyway.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("unet")
    for gpu_only in ("enable_group_norm", "enable_nhwc_conv", "enable_bias_splitgelu",
                     "enable_packed_qkv", "enable_packed_kv", "enable_bias_add", "enable_skip_group_norm",
                     "enable_attention", "enable_gelu"):
        if hasattr(opts, gpu_only):
            setattr(opts, gpu_only, False)
    try:
        # Its symbolic shape inference writes sym_shape_infer_temp.onnx into the cwd on failure.
        with contextlib.chdir(out.parent):
            model = optimize_model(str(path.resolve()), model_type="unet", optimization_options=opts, opt_level=0,
                                   use_gpu=False)
        model.save_model_to_file(str(out), use_external_data_format=path.with_name(path.name + ".data").exists())
        return out
    except Exception as exc:  # report, do not hide: the row says it failed
        print(f"  transformer optimizer failed: {exc}")
        return None


def bench_tiny_networks(models, bundle: Bundle, reps: int) -> list[dict]:
    rows, modules = [], network_modules(models)
    for name in bundle.manifest["networks"]:
        spec = bundle.spec(name)
        ref, ort = TorchBackend(spec, modules[name]()).activate(), OrtBackend(spec, bundle.graph(name)).activate()
        variants = {"onnxruntime": ort}
        if name == "unet_control":
            fused = ort_unet_optimized(bundle.graph(name), bundle.graph(name).with_name("fused.onnx"))
            if fused is not None:
                variants["onnxruntime+fusions"] = OrtBackend(spec, fused).activate()
        for batch in (1, 4):
            feed = random_inputs(spec, batch, torch.Generator().manual_seed(batch), vocab=514)
            fns = {"torch": lambda: ref.infer(feed)} | {k: (lambda b=b: b.infer(feed)) for k, b in variants.items()}
            t = interleaved(fns, "cpu", reps)  # one warm-up: the first ORT run allocates
            expected = ref.infer(feed)[spec.output_names[0]].clone()
            for k, backend in variants.items():
                err = agreement(backend.infer(feed)[spec.output_names[0]], expected)
                what = name if k == "onnxruntime" else f"{name} ({k})"
                rows.append({"model": "tiny", "what": what, "batch": batch, "torch_s": t["torch"],
                             "ort_s": t[k], "speedup": t["torch"] / t[k], "rel_l2": err.rel_l2})
    return rows


def bench_tiny_sample(models, bundle: Bundle, steps: int, adapt_iters: int) -> list[dict]:
    """Diffusion (stages 1-3) and adaptation (stage 4) of one sample, per backend."""
    from skimage import data

    cfg = GenerationConfig(sampler=SamplerConfig(steps=steps), adapt=AdaptConfig(iters=adapt_iters))
    oks = [OkImage("brick", prepare_ok_image(data.brick(), 256))]
    plans = [plan_sample(0, cfg, oks, ProceduralMasks(("blob",)))]
    pipes = {
        "torch": engine_pipeline(activated(torch_engines(models, 256)), models.tokenizer, models.vae, models.latent_scale, cfg),
        "onnxruntime": engine_pipeline(activated(bundle_engines(bundle, "onnxruntime")), bundle.tokenizer(),
                                      bundle.adapt_vae(), bundle.manifest["latent_scale"], cfg),
    }
    diff = interleaved({k: (lambda p=p: p.diffuse(plans)) for k, p in pipes.items()}, "cpu", reps=3)
    adapt = {}
    for k, p in pipes.items():
        sample = p.run(plans)[0]
        adapt[k] = sample.timings["adapt_s"]
    rows = [
        {"model": "tiny", "what": f"sample diffusion ({steps} steps)", "batch": 1, "torch_s": diff["torch"],
         "ort_s": diff["onnxruntime"], "speedup": diff["torch"] / diff["onnxruntime"]},
        {"model": "tiny", "what": f"sample adaptation ({adapt_iters} it, PyTorch in both)", "batch": 1,
         "torch_s": adapt["torch"], "ort_s": adapt["onnxruntime"], "speedup": adapt["torch"] / adapt["onnxruntime"]},
    ]
    total_t, total_o = diff["torch"] + adapt["torch"], diff["onnxruntime"] + adapt["onnxruntime"]
    rows.append({"model": "tiny", "what": "whole sample", "batch": 1, "torch_s": total_t, "ort_s": total_o,
                 "speedup": total_t / total_o})
    return rows


def bench_sd15_step(reps: int, tmp: Path) -> list[dict]:
    """One UNet+ControlNet call (CFG batch 2) of SD-1.5 size at 256 px (32 x 32 latents)."""
    models = build_random_sd15()
    specs, modules = network_specs(models, 256), network_modules(models)
    rows = []
    for name in ("unet_control", "vae_decoder"):
        spec, module = specs[name], modules[name]()
        t0 = time.perf_counter()
        path = export_onnx(spec, module, tmp / f"sd15_{name}.onnx", batch=1)
        print(f"  exported {name} in {time.perf_counter() - t0:.0f} s")
        feed = random_inputs(spec, 1, torch.Generator().manual_seed(0))
        ref = TorchBackend(spec, module).activate()
        ort = OrtBackend(spec, path).activate()
        t = interleaved({"torch": lambda: ref.infer(feed), "onnxruntime": lambda: ort.infer(feed)}, "cpu", reps)
        expected = ref.infer(feed)[spec.output_names[0]].clone()
        err = agreement(ort.infer(feed)[spec.output_names[0]], expected)
        # onnxruntime.transformers' UNet fusions are tried on the tiny graph only: on this
        # 5 GB graph the optimizer was killed for memory (24 GB machine).
        rows.append({"model": "sd15-random", "what": f"{name} (onnxruntime)", "batch": 1, "torch_s": t["torch"],
                     "ort_s": t["onnxruntime"], "speedup": t["torch"] / t["onnxruntime"], "rel_l2": err.rel_l2})
        ort = ref = None  # free the session and module before the next export (memory)
    return rows


def write(rows: list[dict], meta: dict) -> None:
    lines = [
        "# PyTorch eager vs ONNX Runtime (CPU)", "",
        *header_lines(meta), "",
        "| model | what | batch | torch s | onnxruntime s | speed-up | rel. L2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = f"{r['rel_l2']:.1e}" if "rel_l2" in r else ""
        lines.append(f"| {r['model']} | {r['what']} | {r['batch']} | {r['torch_s']:.4f} | {r['ort_s']:.4f}"
                     f" | {r['speedup']:.2f}x | {err} |")
    write_report(RESULTS / "onnxruntime_cpu", {"meta": meta, "rows": rows}, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--adapt-iters", type=int, default=200)
    ap.add_argument("--skip-sd15", action="store_true")
    args = ap.parse_args()
    meta = start(__file__) | {"settings": vars(args)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = build_tiny()
        print("exporting the tiny model ...")
        export_bundle(models, ExportConfig(out=tmp / "tiny", batch_sizes=(1, 4), capture_steps=6))
        bundle = Bundle.open(tmp / "tiny")
        rows += bench_tiny_networks(models, bundle, args.reps)
        rows += bench_tiny_sample(models, bundle, args.steps, args.adapt_iters)
        if not args.skip_sd15:
            print("SD-1.5-size random model ...")
            rows += bench_sd15_step(max(2, args.reps // 2), tmp)
    write(rows, finish(meta))


if __name__ == "__main__":
    main()
