"""``adabldm-eval``: command line -> frozen config -> library call. No logic here.

Nothing heavy is imported before the options are parsed (torch and scikit-learn come in
the command bodies), so ``--help`` and usage errors answer at once.
Exit codes: 0 done; 1 runtime failure; 2 usage or unusable input (nothing judged).
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import click

# Idle OpenMP threads sleep instead of spinning (as adabldm_ref.demo.build): on a shared
# CPU spinning made the segmenter's steps several times slower. Read when torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FIGURES = ("bg_psnr", "bg_ssim", "defect_strength", "seam", "leakage")  # adabldm_eval.samples.FIGURES
SEG_DEFAULTS = {"size": 128, "width": 8, "steps": 400, "batch": 8, "lr": 1e-3}  # segmenter.SegmenterConfig

SECTIONS = {
    "samples": (("Inputs", ("out", "defect", "real")), ("Report", ("report", "worst", "worst_by", "quiet")),
                ("User networks (local files, never downloaded)",
                 ("ic_lpips", "lpips_weights", "kid", "inception_weights")), ("Help", ("help",))),
    "downstream": (("Inputs", ("real", "synthetic", "defect", "split", "limit")),
                   ("Segmenter", ("size", "width", "steps", "batch", "lr", "seeds", "device")),
                   ("Report", ("out", "quiet")), ("Help", ("help",))),
}


class SectionedCommand(click.Command):
    """A click command whose --help lists its options under the titles of SECTIONS."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        rows = {"help" if p is help_option else p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        for title, names in SECTIONS[self.name]:
            with formatter.section(title):
                formatter.write_dl([rows[n] for n in names if rows.get(n)])


def _device(ctx, param, value: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise click.BadParameter(f"{value!r}: expected cpu, cuda or cuda:N")
    return value


def _run(call) -> None:
    """Run ``call``; usage / input errors exit 2, runtime failures 1, each with one message."""
    from adabldm_core.io import InputError

    try:
        call()
    except (InputError, ValueError) as exc:
        click.echo(f"adabldm-eval: error: {exc}", err=True)
        sys.exit(2)
    except (RuntimeError, OSError) as exc:
        click.echo(f"adabldm-eval: failed: {exc}", err=True)
        sys.exit(1)


existing = click.Path(exists=True, file_okay=False, path_type=Path)
weights = click.Path(dir_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Judge a synthetic defect set (adabldm-run's output): per-sample figures and set
    figures (samples), or the field's downstream segmentation protocol (downstream)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@main.command(cls=SectionedCommand)
@click.argument("out", type=existing)
@click.option("--defect", default=None, help="Only this defect type. [default: all]")
@click.option("--real", type=existing, default=None, help="Real MVTec category (its test/<defect>): IC-LPIPS and KID compare with its training third.")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for samples.json, samples.md, worst.png. [default: OUT/eval]")
@click.option("--worst", type=click.IntRange(min=0), default=8, show_default=True, help="Rows of the worst-samples sheet.")
@click.option("--worst-by", type=click.Choice(["rank", *FIGURES]), default="rank", show_default=True,
              help="Order of the sheet: one figure, or the mean rank over all five.")
@click.option("--ic-lpips", is_flag=True, help="IC-LPIPS (needs --lpips-weights and --real).")
@click.option("--lpips-weights", type=weights, default=None, help="TorchScript LPIPS network: (x, y) -> (N,) distances, x, y in [-1, 1].")
@click.option("--kid", is_flag=True, help="KID (needs --inception-weights and --real).")
@click.option("--inception-weights", type=weights, default=None, help="TorchScript feature network: x in [0, 1], 299 px -> (N, D).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def samples(out, defect, real, report, worst, worst_by, ic_lpips, lpips_weights, kid, inception_weights, quiet):
    """Per-sample figures (background PSNR/SSIM, defect strength, seam, leakage) over a set
    OUT, their distribution, the worst samples as a contact sheet, and a diversity score
    from a built-in fixed random-weight conv net (no downloads)."""
    def call():
        from .samples import SamplesConfig, run_samples

        cfg = SamplesConfig(out=out, report=report or out / "eval", defect=defect, worst=worst, worst_by=worst_by,
                            real=real, lpips_weights=lpips_weights, inception_weights=inception_weights,
                            ic_lpips=ic_lpips or lpips_weights is not None, kid=kid or inception_weights is not None)
        result = run_samples(cfg, progress=not quiet)
        missing = f" (figures unavailable for {result['unavailable']}: no manifest)" if result["unavailable"] else ""
        click.echo(f"{result['samples']} samples{missing}; diversity {result['set']['diversity_defect_crops']:.3f};"
                   f" report in {cfg.report}")

    _run(call)


@main.command(cls=SectionedCommand)
@click.option("--real", type=existing, required=True, help="Real MVTec AD category folder (train/good, test/good, test/D, ground_truth/D).")
@click.option("--synthetic", type=existing, required=True, help="adabldm-run --out folder holding defect D.")
@click.option("--defect", required=True, help="Defect type D.")
@click.option("--split", type=existing, default=None, help="adabldm-train --out folder: its recorded split decides what is held out. [default: the first third by name trains]")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N synthetic samples.")
@click.option("--size", type=int, default=SEG_DEFAULTS["size"], show_default=True, help="Square size (px) of training and testing.")
@click.option("--width", type=click.IntRange(min=8), default=SEG_DEFAULTS["width"], show_default=True, help="U-Net first-stage channels.")
@click.option("--steps", type=click.IntRange(min=1), default=SEG_DEFAULTS["steps"], show_default=True, help="Optimiser steps per arm and seed.")
@click.option("--batch", type=click.IntRange(min=2), default=SEG_DEFAULTS["batch"], show_default=True, help="Images per step (half defects, half OK).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=SEG_DEFAULTS["lr"], show_default=True, help="Adam learning rate (cosine decay).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds 0..N-1 per arm.")
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (downstream.json, downstream.md, pr_curves.png). [default: SYNTHETIC/eval]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def downstream(real, synthetic, defect, split, limit, size, width, steps, batch, lr, seeds, device, out, quiet):
    """Train a small U-Net three ways (real shots only; plus the synthetic set; plus a
    cut-paste/noise baseline through the same masks) and test each on the held-out real
    defects and real OK test images."""
    def call():
        from .downstream import DownstreamConfig, run_downstream
        from .segmenter import SegmenterConfig

        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {device}: this torch has no CUDA device")
        seg = SegmenterConfig(size=size, width=width, steps=steps, batch=batch, lr=lr, device=device)
        cfg = DownstreamConfig(real=real, synthetic=synthetic, defect=defect, out=out or synthetic / "eval",
                               split=split, seeds=seeds, limit=limit, segmenter=seg)
        report = run_downstream(cfg, progress=not quiet)
        for arm, r in report["arms"].items():
            s = r["summary"]
            click.echo(f"{arm:14s} pixel AP {s['pixel_ap']['mean']:.3f}  pixel AUROC {s['pixel_auroc']['mean']:.3f}"
                       f"  image AUROC {s['image_auroc']['mean']:.3f}  IAP {s['iap']['mean']:.3f}")
        click.echo(f"report in {cfg.out}")

    _run(call)
