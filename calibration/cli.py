"""``adabldm-calibrate``: command line -> frozen CalibrateConfig -> calibrate. No logic here."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import click

# calibration.capture.MIN_STEPS (tested equal): importing it here would load torch before --help
MIN_STEPS = 5


def _networks(ctx, param, value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _fmt(x) -> str:
    return f"{x:.2e}" if isinstance(x, float) and math.isfinite(x) else str(x)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bundle", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle made by adabldm-export.")
@click.option("--model", help="Local diffusers SD-1.5 directory the bundle was exported from. [default: built-in tiny model]")
@click.option("--controlnet", help="Local ControlNet: diffusers directory or .safetensors file.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.ckpt/.pt/.bin) ControlNet checkpoints.")
@click.option("--reuse-capture", is_flag=True, help="Use the bundle's capture instead of capturing again.")
@click.option("--ok-images", type=click.Path(file_okay=False, path_type=Path), help="Folder of OK images to capture on. [default: scikit-image textures]")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=MIN_STEPS), help=f"DDIM steps of the captured reference runs (at least {MIN_STEPS}: every stage runs).")
@click.option("--samples-per-image", default=2, show_default=True, type=click.IntRange(min=1), help="Captured samples per OK image (own seed and mask each).")
@click.option("--seed", default=0, show_default=True, help="Base seed of the captured samples.")
@click.option("--precision-map", is_flag=True, help="Find the layers FP16 builds must keep in FP32 (PyTorch on the CPU).")
@click.option("--networks", default="", callback=_networks, help="Networks of the precision map, comma list. [default: all]")
@click.option("--int8", is_flag=True, help="Quantise the UNet+ControlNet to INT8 (ONNX Runtime QDQ) and compare end to end.")
@click.option("--int8-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True, help="INT8 calibration method.")
@click.option("--parity-samples", default=2, show_default=True, type=click.IntRange(min=1), help="Held-out samples of the INT8 vs FP32 comparison.")
@click.option("--parity-steps", default=10, show_default=True, type=click.IntRange(min=2), help="DDIM steps of the INT8 vs FP32 comparison.")
def main(bundle, model, controlnet, allow_pickle, reuse_capture, ok_images, steps, samples_per_image, seed,
         precision_map, networks, int8, int8_method, parity_samples, parity_steps):
    """Capture real inputs into a bundle, find its FP16 precision map, quantise it to INT8.

    The capture (every network's inputs in reference runs on OK images) feeds the
    precision map, the INT8 calibration and the TensorRT INT8 calibrator. INT8 is offered
    only if final images stay within the quality floor (PSNR vs FP32, same seeds); exit 1
    on any error.
    """
    from adabldm_core.io import list_images

    from adabldm_ref.models import load_models

    from .calibrate import CalibrateConfig, calibrate
    from .capture import CaptureConfig
    from .int8 import Int8Config
    from .precision_map import PrecisionConfig

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        images = tuple(map(str, list_images(ok_images, "OK image"))) if ok_images else ()
        cfg = CalibrateConfig(
            bundle=bundle,
            capture=None if reuse_capture else CaptureConfig(steps=steps, images=images, seed=seed,
                                                            samples_per_image=samples_per_image),
            precision=PrecisionConfig() if precision_map else None,
            networks=networks,
            int8=Int8Config(method=int8_method, parity_samples=parity_samples, parity_steps=parity_steps) if int8 else None,
        )
        models = load_models(model, controlnet, allow_pickle)
        report = calibrate(models, cfg, progress=lambda s: click.echo(f"[calibrate] {s}", err=True))
    except (ValueError, RuntimeError) as exc:  # BundleError, CaptureError, Int8Error, ModelLoadError
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo("captured feeds: " + ", ".join(f"{k} {v}" for k, v in report["capture"].items()))
    for name, entry in report.get("precision", {}).get("networks", {}).items():
        kept = ", ".join(k["module"] or "<whole network>" for k in entry["keep_fp32"]) or "none"
        click.echo(f"{name:14s} FP16 rel. L2 {_fmt(entry['rel_l2_fp16'])} -> {_fmt(entry['rel_l2_with_map'])}"
                   f" with the map; FP32: {kept}")
    if "int8" in report:
        p = report["int8"]["parity"]
        verdict = "offered" if report["int8"]["offered"] else "NOT offered"
        psnr = p["min_psnr_db"]
        psnr = f"{psnr:.1f}" if isinstance(psnr, float) else psnr  # "inf": identical images
        click.echo(f"INT8 unet_control: worst sample {psnr} dB PSNR vs FP32 (floor {p['floor_db']:.0f} dB): {verdict}")


if __name__ == "__main__":
    main()
