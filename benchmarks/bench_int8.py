"""INT8 (ONNX Runtime QDQ) vs FP32 UNet+ControlNet on the CPU: speed and end-to-end parity.

The tiny model is exported (its capture: scikit-image textures), its unet_control is
quantised on the captured feeds (adabldm_calibration.int8), then:
- speed: one unet_control call, FP32 vs INT8 graphs, interleaved in one process
  (median of repeats), at sample batch 1 and 4 (CFG batch 2 and 8), and one sample's
  diffusion (all steps) through the engine pipeline;
- parity: final images (after adaptation) of held-out samples, INT8 pipeline vs FP32
  pipeline, same plans and seeds; PSNR per sample against the quality floor.
Optionally (--sd15) the speed of one call of a random-weight unet_control with SD-1.5's
channel widths (speed does not depend on the weights; calibrated on random feeds), and
(--sensitivity) the parity of other calibration methods and of parts left in float.
Results: benchmarks/results/int8_cpu.{md,json}.

    python benchmarks/bench_int8.py [--samples 4] [--steps 50] [--adapt-iters 200] [--sd15] [--sensitivity]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from adabldm_calibration.capture import FOLDER, load_capture, ok_images_of
from adabldm_calibration.int8 import (
    INT8_PSNR_FLOOR_DB,
    Int8Config,
    int8_engines,
    parity,
    parity_plans,
    quantizable_nodes,
    quantize,
)
from adabldm_calibration.loader import CapturedLoader
from adabldm_calibration.precision_map import rel_l2
from adabldm_engine.backends import OrtBackend, activated
from adabldm_engine.bundle import Bundle
from adabldm_engine.runtime import bundle_engines, engine_pipeline
from adabldm_export.bundle import ExportConfig, export_bundle
from common import RESULTS, finish, header_lines, interleaved, start, write_report

from adabldm_ref.models import build_tiny


def call_speed(spec, fp32_path: Path, int8_path: Path, feeds_by_batch: dict, reps: int, model: str) -> list[dict]:
    fp32, int8 = OrtBackend(spec, fp32_path).activate(), OrtBackend(spec, int8_path).activate()
    rows = []
    for batch, feeds in feeds_by_batch.items():
        feed = feeds[len(feeds) // 2]
        t = interleaved({"fp32": lambda f=feed: fp32.infer(f), "int8": lambda f=feed: int8.infer(f)}, "cpu", reps)
        err = rel_l2([[int8.infer(f)["eps"].clone()] for f in feeds], [[fp32.infer(f)["eps"].clone()] for f in feeds])
        rows.append({"model": model, "what": "unet_control call", "batch": batch, "fp32_s": t["fp32"],
                     "int8_s": t["int8"], "speedup": t["fp32"] / t["int8"], "rel_l2": err})
    return rows


# Settings whose end-to-end parity --sensitivity measures beside the main one: other
# calibration methods, and parts of the UNet+ControlNet left in float (ONNX node-name prefixes).
SENSITIVITY = {
    "entropy calibration": {"method": "entropy"},
    "percentile calibration": {"method": "percentile"},
    "UNet up-blocks and conv_out float": {"exclude": ("/unet/unet/up_blocks", "/unet/unet/conv_out")},
    "ControlNet float": {"exclude": ("/control/",)},
    "edges float (conv_in/out, time and hint embeddings)": {"exclude": (
        "/unet/unet/conv_in", "/unet/unet/conv_out", "/unet/unet/time_embedding", "/control/controlnet/time_embedding",
        "/control/controlnet/controlnet_cond_embedding")},
}


def sensitivity(bundle: Bundle, cap, loader, cfg: Int8Config, tmp: Path) -> list[dict]:
    """Worst end-to-end PSNR vs FP32 of each SENSITIVITY setting (same held-out plans as the main parity)."""
    graph = onnx_graph(bundle)
    out = []
    for i, (label, change) in enumerate(SENSITIVITY.items()):
        c = dataclasses.replace(cfg, **change)
        path = quantize(bundle.graph("unet_control"), tmp / f"sensitivity_{i}.onnx", loader, c)
        result = parity(bundle, path, ok_images_of(cap), c, seed=cap.settings["config"]["seed"] + 1)
        out.append({"setting": label, "quantised_nodes": len(quantizable_nodes(graph, c)), "min_psnr_db": result.min_psnr_db})
        print(f"  {label}: worst {result.min_psnr_db:.1f} dB", flush=True)
    return out


def diffusion_speed(bundle: Bundle, int8_path: Path, oks, cfg: Int8Config) -> dict:
    gen, plans = parity_plans(oks, cfg, seed=1)
    tokenizer, vae = bundle.tokenizer(), bundle.adapt_vae()
    pipes = {name: engine_pipeline(engines, tokenizer, vae, bundle.manifest["latent_scale"], gen)
             for name, engines in (("fp32", activated(bundle_engines(bundle, "onnxruntime"))), ("int8", activated(int8_engines(bundle, int8_path))))}
    t = interleaved({k: (lambda p=p: p.diffuse(plans[:1])) for k, p in pipes.items()}, "cpu", reps=3)
    return {"model": "tiny", "what": f"sample diffusion ({cfg.parity_steps} steps)", "batch": 1, "fp32_s": t["fp32"],
            "int8_s": t["int8"], "speedup": t["fp32"] / t["int8"]}


def bench_tiny(args, tmp: Path) -> tuple[list[dict], dict]:
    print("exporting the tiny model (with its capture) ...", flush=True)
    export_bundle(build_tiny(), ExportConfig(out=tmp / "tiny", batch_sizes=(1, 4)))
    bundle = Bundle.open(tmp / "tiny")
    cap = load_capture(bundle.root / FOLDER)
    spec = bundle.spec("unet_control")
    cfg = Int8Config(method=args.method, calibration_feeds=args.calibration_feeds, parity_samples=args.samples,
                     parity_steps=args.steps, parity_adapt_iters=args.adapt_iters)
    loader = CapturedLoader(cap, "unet_control", spec, batch=1, limit=cfg.calibration_feeds)
    t0 = time.perf_counter()
    int8_path = quantize(bundle.graph("unet_control"), tmp / "unet_control.int8.onnx", loader, cfg)
    quant_s = time.perf_counter() - t0
    print(f"quantised in {quant_s:.0f} s; timing ...", flush=True)
    feeds = {b: CapturedLoader(cap, "unet_control", spec, batch=b).torch_feeds() for b in (1, 4)}
    rows = call_speed(spec, bundle.graph("unet_control"), int8_path, feeds, args.reps, "tiny")
    oks = ok_images_of(cap)
    rows.append(diffusion_speed(bundle, int8_path, oks, cfg))
    print("end-to-end parity ...", flush=True)
    result = parity(bundle, int8_path, oks, cfg, seed=cap.settings["config"]["seed"] + 1)
    info = {"quantize_s": quant_s, "calibration_feeds": len(loader), "settings": {
        k: getattr(cfg, k) for k in ("method", "per_channel", "weighted_only", "parity_samples", "parity_steps",
                                     "parity_adapt_iters")}, "parity": result.to_dict()}
    info["quantised_nodes"] = len(quantizable_nodes(onnx_graph(bundle), cfg))
    if args.sensitivity:
        print("sensitivity ...", flush=True)
        info["sensitivity"] = sensitivity(bundle, cap, loader, cfg, tmp)
    return rows, info


def onnx_graph(bundle: Bundle):
    import onnx

    return onnx.load(str(bundle.graph("unet_control")), load_external_data=False)


def sd15_width_models():
    """UNet+ControlNet of SD-1.5 widths (320-640-1280, 768-d context), one layer per block.

    470 M parameters: the SD-1.5 channel widths INT8 kernels see, under the 2 GB a single
    ONNX file holds (the full 1.2 B-parameter pair needs external data, which the
    quantiser's calibration would load several times over on this 24 GB machine).
    """
    import dataclasses

    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = build_tiny()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=32, cross_attention_dim=768, attention_head_dim=8, layers_per_block=1,
            block_out_channels=(320, 640, 1280), down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
        )
        controlnet = ControlNetModel.from_unet(unet)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tiny.tokenizer), hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=77,
                                            bos_token_id=tiny.tokenizer.bos_token_id,
                                            eos_token_id=tiny.tokenizer.eos_token_id,
                                            pad_token_id=tiny.tokenizer.pad_token_id))
    return dataclasses.replace(tiny, unet=unet.eval(), controlnet=controlnet.eval(), text_encoder=text.eval(),
                               name="sd15-width")


def bench_sd15_width(reps: int, tmp: Path) -> list[dict]:
    """One unet_control call at SD-1.5 widths, 256 px; calibrated on random feeds (speed only)."""
    from adabldm_calibration.capture import Capture
    from adabldm_core.specs import random_inputs
    from adabldm_export.onnx_export import export_onnx

    from adabldm_ref.networks import network_modules, network_specs

    models = sd15_width_models()
    spec = network_specs(models, 256)["unet_control"]
    path = export_onnx(spec, network_modules(models)["unet_control"](), tmp / "sd15w_unet_control.onnx", batch=1)
    del models
    g = torch.Generator().manual_seed(0)
    feeds = tuple(random_inputs(spec, 1, g) for _ in range(4))
    loader = CapturedLoader(Capture({"unet_control": feeds}, {}), "unet_control", spec)
    int8_path = quantize(path, tmp / "sd15w_unet_control.int8.onnx", loader, Int8Config())
    return call_speed(spec, path, int8_path, {1: list(feeds[:2])}, reps, "sd15-width (random)")


def write(rows: list[dict], info: dict, meta: dict) -> None:
    p = info["parity"]
    verdict = "passes: offer INT8" if p["passes"] else "fails: do not offer INT8"
    fmt = lambda x: f"{x:.1f}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [
        "# INT8 (ONNX Runtime QDQ) vs FP32 UNet+ControlNet (CPU)", "",
        *header_lines(meta),
        f"- quantisation: {info['settings']['method']} calibration on {info['calibration_feeds']} captured feeds"
        f" (batch 1), per-channel int8 weights, uint8 activations, Conv + weight MatMul/Gemm;"
        f" took {info['quantize_s']:.0f} s", "",
        "## Speed", "",
        "| model | what | batch | fp32 s | int8 s | speed-up | rel. L2 of eps |", "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = f"{r['rel_l2']:.2e}" if "rel_l2" in r else ""
        lines.append(f"| {r['model']} | {r['what']} | {r['batch']} | {r['fp32_s']:.4f} | {r['int8_s']:.4f}"
                     f" | {r['speedup']:.2f}x | {err} |")
    lines += [
        "", "## End-to-end parity (tiny model)", "",
        f"Held-out samples (seeds not used for calibration), {info['settings']['parity_steps']} DDIM steps,"
        f" adaptation {info['settings']['parity_adapt_iters']} iterations, INT8 pipeline vs FP32 pipeline:", "",
        "| sample | PSNR final image (dB) | PSNR before adaptation (dB) |", "|---|---|---|",
    ]
    lines += [f"| {i} | {fmt(a)} | {fmt(b)} |" for i, (a, b) in enumerate(zip(p["psnr_db"], p["blended_psnr_db"]))]
    lines += ["", f"Quality floor: {p['floor_db']:.0f} dB on every sample (adabldm_calibration.int8.INT8_PSNR_FLOOR_DB)."
              f" Worst sample {fmt(p['min_psnr_db'])} dB: INT8 {verdict}."]
    if "sensitivity" in info:
        lines += ["", "## Sensitivity (same held-out samples)", "",
                  f"Main setting: {info['settings']['method']}, {info['quantised_nodes']} nodes quantised.", "",
                  "| setting | nodes quantised | worst PSNR vs FP32 (dB) |", "|---|---|---|"]
        lines += [f"| {s['setting']} | {s['quantised_nodes']} | {fmt(s['min_psnr_db'])} |" for s in info["sensitivity"]]
    write_report(RESULTS / "int8_cpu", {"meta": finish(meta), "rows": rows, "tiny": info}, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--adapt-iters", type=int, default=200)
    ap.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--calibration-feeds", type=int, default=16)
    ap.add_argument("--sd15", action="store_true", help="also time a unet_control of SD-1.5 widths (minutes)")
    ap.add_argument("--sensitivity", action="store_true",
                    help="also the parity of other calibration methods and of parts left in float (minutes)")
    args = ap.parse_args()
    meta = start(__file__) | {"settings": vars(args), "floor_db": INT8_PSNR_FLOOR_DB}
    with tempfile.TemporaryDirectory() as tmp:
        rows, info = bench_tiny(args, Path(tmp))
        write(rows, info, meta)  # the tiny figures stand even if the large model fails
        if args.sd15:
            print("SD-1.5-width random model ...", flush=True)
            rows += bench_sd15_width(max(3, args.reps // 2), Path(tmp))
            write(rows, info, meta)


if __name__ == "__main__":
    main()
