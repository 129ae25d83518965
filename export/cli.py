"""``adabldm-export``: command line -> frozen ExportConfig -> export_bundle. No logic here."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from adabldm_core.precision import PRECISIONS, choices

# calibration.capture.MIN_STEPS (tested equal): importing it here would load torch before --help
MIN_STEPS = 5


def _batches(ctx, param, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a comma list of batch sizes, e.g. 1,4")
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: expected positive batch sizes")
    return sizes


def _resolution(ctx, param, value: int) -> int:
    # A usage error (exit 2) before the model loads: the graphs are static in space, and the
    # reference checked it only inside the capture, after --out was created.
    if value <= 0 or value % 64:
        raise click.BadParameter(f"{value}: expected a positive multiple of 64 (256 is the reference)")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write.")
@click.option("--model", default="demo", show_default=True, envvar="ADABLDM_MODEL", help="demo (the shipped demo model; --controlnet crack|scratch|stain picks its ControlNet, default crack), tiny (random, for tests) or a local diffusers SD-1.5 directory; env ADABLDM_MODEL.")
@click.option("--controlnet", help="Local ControlNet: diffusers directory or .safetensors file.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.ckpt/.pt/.bin) ControlNet checkpoints.")
@click.option("--resolution", default=256, show_default=True, callback=_resolution, help="Working resolution, a multiple of 64 (static in the graphs).")
@click.option("--batch", "batch_sizes", default="1,4", show_default=True, callback=_batches, help="Sample batch sizes the bundle serves (dynamic axis; CFG graphs take 2x).")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=11), help="ONNX opset of the TorchScript exporter.")
@click.option("--dynamo", is_flag=True, help="Use the torch.export-based exporter (opset 18; needs onnxscript).")
@click.option("--split-controlnet", is_flag=True, help="Export ControlNet and UNet as two graphs instead of one.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--ok-images", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of OK images whose runs are captured for validation and calibration. [default: scikit-image textures]")
@click.option("--capture-steps", default=10, show_default=True, type=click.IntRange(min=MIN_STEPS), help=f"DDIM steps of the captured reference runs (at least {MIN_STEPS}: every stage runs).")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle in --out.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines into OUT/trt (needs tensorrt and a CUDA GPU); on an existing bundle without --force, build only the engines.")
@click.option("--trt-dynamic", is_flag=True, help="TensorRT: one engine per network for batches min..max of --batch, instead of one static engine per batch size.")
@click.option("--trt-precision", type=click.Choice(choices(PRECISIONS)), default="fp16", show_default=True, help="TensorRT precision (fp16: strongly typed; a VAE with non-finite fp16 outputs is rebuilt in fp32).")
@click.option("--trt-workspace", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="TensorRT builder workspace cap in GiB.")
def main(out, model, controlnet, allow_pickle, resolution, batch_sizes, opset, dynamo, split_controlnet, no_simplify,
         ok_images, capture_steps, force, trt, trt_dynamic, trt_precision, trt_workspace):
    """Export AdaBLDM's networks to ONNX, validate them against PyTorch, write a bundle.

    Every graph is checked on random inputs and on inputs captured from a reference run;
    the export fails (exit 1) if one disagrees beyond the fp32 tolerance (rel. L2 1e-4).
    Then: adabldm-run --batch --bundle OUT --backend onnxruntime ...
    With --trt (on a GPU machine): ... --backend tensorrt.
    """
    from adabldm_core.io import list_images
    from adabldm_engine.trt_cache import TrtBuildConfig

    from adabldm_ref.models import load_models

    from .bundle import MANIFEST, ExportConfig, export_bundle, worst_rel_l2
    from .trt_build import build_bundle_engines, require_tensorrt

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        cfg = ExportConfig(out=out, resolution=resolution, batch_sizes=batch_sizes, opset=opset, dynamo=dynamo,
                           split_controlnet=split_controlnet, simplify=not no_simplify, capture_steps=capture_steps,
                           ok_images=tuple(map(str, list_images(ok_images, "OK image"))) if ok_images else (),
                           force=force)
        trt_cfg = TrtBuildConfig(precision=trt_precision, dynamic=trt_dynamic, workspace_gib=trt_workspace, force=force)
        if trt:
            require_tensorrt()  # before a long export, not after it
        manifest = None
        if not (trt and not force and (out / MANIFEST).is_file()):  # --trt on a bundle: engines only
            models = load_models(model, controlnet, allow_pickle)
            manifest = export_bundle(models, cfg, progress=lambda s: click.echo(f"[export] {s}", err=True))
        engines = build_bundle_engines(out, trt_cfg, lambda s: click.echo(f"[trt] {s}", err=True)) if trt else []
    except (ValueError, RuntimeError) as exc:  # BundleError, ModelLoadError, ExportValidationError, Trt*Error
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for r in engines:
        lo, _, hi = r["profile"]["batch"]
        how = "cached" if r["cached"] else f"built in {r['build_s']:.0f} s"
        click.echo(f"{r['network']:14s} TensorRT {r['precision']} batch {lo}-{hi} {how}  trt/{r['network']}.{r['key']}.plan")
    if manifest is None:
        return
    for name, entry in manifest["networks"].items():
        worst = worst_rel_l2(entry["validation"]["worst"])
        click.echo(f"{name:14s} rel. L2 {worst:.1e}  {'simplified' if entry['simplified'] else 'plain'}  {entry['file']}")
    click.echo(f"bundle written: {out} (model {manifest['model']['identity']}, {resolution} px, batch {list(batch_sizes)})")


if __name__ == "__main__":
    main()
