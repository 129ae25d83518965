"""``adabldm-export``: command line -> frozen ExportConfig -> export_bundle. No logic here."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click


def _batches(ctx, param, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a comma list of batch sizes, e.g. 1,4")
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: expected positive batch sizes")
    return sizes


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write.")
@click.option("--model", help="Local diffusers SD-1.5 directory. [default: built-in tiny model]")
@click.option("--controlnet", help="Local ControlNet: diffusers directory or .safetensors file.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.ckpt/.pt/.bin) ControlNet checkpoints.")
@click.option("--resolution", default=256, show_default=True, help="Working resolution (static in the graphs).")
@click.option("--batch", "batch_sizes", default="1,4", show_default=True, callback=_batches, help="Sample batch sizes the bundle serves (dynamic axis; CFG graphs take 2x).")
@click.option("--opset", default=17, show_default=True, help="ONNX opset of the TorchScript exporter.")
@click.option("--dynamo", is_flag=True, help="Use the torch.export-based exporter (opset 18; needs onnxscript).")
@click.option("--split-controlnet", is_flag=True, help="Export ControlNet and UNet as two graphs instead of one.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle in --out.")
def main(out, model, controlnet, allow_pickle, resolution, batch_sizes, opset, dynamo, split_controlnet, no_simplify, force):
    """Export AdaBLDM's networks to ONNX, validate them against PyTorch, write a bundle.

    Every graph is checked on random inputs and on inputs captured from a reference run;
    the export fails (exit 1) if one disagrees beyond the fp32 tolerance (rel. L2 1e-4).
    Then: adabldm-run --batch --bundle OUT --backend onnxruntime ...
    """
    from adabldm_ref.models import load_models

    from .bundle import ExportConfig, export_bundle

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        cfg = ExportConfig(out=out, resolution=resolution, batch_sizes=batch_sizes, opset=opset, dynamo=dynamo,
                           split_controlnet=split_controlnet, simplify=not no_simplify, force=force)
        models = load_models(model, controlnet, allow_pickle)
        manifest = export_bundle(models, cfg, progress=lambda s: click.echo(f"[export] {s}", err=True))
    except (ValueError, RuntimeError) as exc:  # BundleError, ModelLoadError, ExportValidationError
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for name, entry in manifest["networks"].items():
        worst = max(v["rel_l2"] for v in entry["validation"]["worst"].values())
        click.echo(f"{name:14s} rel. L2 {worst:.1e}  {'simplified' if entry['simplified'] else 'plain'}  {entry['file']}")
    click.echo(f"bundle written: {out} (model {manifest['model']['identity']}, {resolution} px, batch {list(batch_sizes)})")


if __name__ == "__main__":
    main()
