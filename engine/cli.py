"""``adabldm-run``: command line -> frozen JobConfig -> run_job. No logic here.

Nothing heavy is imported before the options are parsed: torch, diffusers and the job
come in ``main``, so ``--help`` and usage errors answer at once. The option defaults are
therefore literals; tests/engine/test_cli.py checks them equal to the configuration's.
"""
from __future__ import annotations

import logging
import math
import re
import sys
from pathlib import Path

import click
from adabldm_core.signals import sigterm_as_interrupt

from .gate import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MIN_BG_PSNR,
    DEFAULT_MIN_DEFECT_STRENGTH,
    MAX_ATTEMPTS_LIMIT,
)

KINDS = ("blob", "scratch", "crack")  # adabldm_ref.procedural.KINDS
ADAPT_PRECISIONS = ("fp32", "bf16")  # adabldm_core.precision.choices(ADAPT_PRECISIONS); that module imports torch
BACKENDS = ("torch", "onnxruntime", "openvino", "torch-cuda", "torch-compile", "tensorrt")  # adabldm_engine.backends
FOREGROUND_MIN_AREA = 0.005  # adabldm_ref.masks.FOREGROUND_MIN_AREA
# (iters, lr) of each --adapt-region: adabldm_engine.adaptation.ROI_ADAPT (measured,
# benchmarks/results/adaptation_cpu.md) and the reference's AdaptConfig (iters, lr).
ROI_ADAPT = (20, 5e-4)
IMAGE_ADAPT = (200, 1e-4)

# --help in sections, by parameter name; every parameter is in one (checked by a test).
SECTIONS = (
    ("Inputs", ("images", "foreground", "foreground_mode", "foreground_min_area", "object_name", "defect",
                "prompt_suffix", "resolution")),
    ("Masks", ("masks", "procedural", "rotate", "scale_range", "keep_thin")),
    ("Sampler", ("seed", "steps", "guidance", "control_scale", "renoise")),
    ("Adaptation", ("adapt_iters", "adapt_lr", "adapt_region", "adapt_margin", "adapt_precision", "preservation")),
    ("Model and runtime", ("model", "controlnet", "allow_pickle", "bundle", "backend", "batch_size", "device",
                           "cuda_graphs", "shard", "ray_address", "actors")),
    ("Quality gate", ("gate", "min_bg_psnr", "min_defect_strength", "max_leakage", "max_seam", "max_attempts")),
    ("Output", ("batch_mode", "out", "category", "num", "check", "dump_noise", "quiet", "help")),
)


class SectionedCommand(click.Command):
    """A click command whose --help lists its options under the titles of SECTIONS."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)  # its own name varies with click's version
        rows = {"help" if p is help_option else p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        for title, names in SECTIONS:
            with formatter.section(title):
                formatter.write_dl([rows[n] for n in names if rows.get(n)])


def _scale_range(ctx, param, value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected two numbers 'LOW,HIGH', e.g. 0.85,1.15")
    if not (0 < lo <= hi and math.isfinite(hi)):  # inf passes the comparisons, nan fails them
        raise click.BadParameter(f"{value!r}: expected finite numbers 0 < LOW <= HIGH")
    return lo, hi


def _kinds(ctx, param, value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise click.BadParameter(f"{value!r}: expected a comma list of {', '.join(KINDS)}")
    return kinds


def _resolution(ctx, param, value: int) -> int:
    if value <= 0 or value % 64:
        raise click.BadParameter(f"{value}: expected a positive multiple of 64 (256 is the reference)")
    return value


def _device_name(ctx, param, value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise click.BadParameter(f"{value!r}: expected auto, cpu, cuda or cuda:N")
    return value


def _shard(ctx, param, value: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N), checked here (adabldm_engine.scaleout.Shard imports torch)."""
    match = re.fullmatch(r"(\d+)/(\d+)", value) if value is not None else None
    if value is not None and not (match and int(match[1]) < int(match[2])):
        raise click.BadParameter(f"{value!r}: expected K/N with 0 <= K < N, e.g. 0/4 (shard 0 of 4)")
    return (int(match[1]), int(match[2])) if match else None


def _device(value: str) -> str:
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command(cls=SectionedCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--batch", "batch_mode", is_flag=True, help="Bulk synthesis job (the only mode so far).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run root: OUT/CATEGORY in the MVTec AD layout (anomalib root=OUT), the rest beside it; one run at a time.")
@click.option("--category", help="Category folder in OUT (anomalib's category). [default: the --object name, non-alphanumerics as '_']")
@click.option("--num", default=8, show_default=True, type=click.IntRange(min=1), help="Number of samples (a larger --num on an existing --out adds more).")
@click.option("--object", "object_name", default="texture", show_default=True, help="Object name in the prompt 'a {object} with a {defect}'.")
@click.option("--defect", default="defect", show_default=True, help="Defect type: prompt word and output sub-folder.")
@click.option("--images", type=click.Path(path_type=Path), help="Folder of OK (defect-free) images, any size. [default: scikit-image brick, gravel]")
@click.option("--foreground", type=click.Path(path_type=Path), help="Folder of foreground masks named like the images (NAME.png or NAME_mask.png).")
@click.option("--foreground-mode", type=click.Choice(["full", "otsu"]), default="full", show_default=True, help="Without --foreground: whole image (textures) or Otsu + 5x5 close (objects).")
@click.option("--foreground-min-area", default=FOREGROUND_MIN_AREA, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Otsu: drop foreground components smaller than this fraction of the image (the largest is kept).")
@click.option("--masks", type=click.Path(path_type=Path), help="Folder of real defect masks (e.g. MVTec ground_truth/<defect>). [default: procedural]")
@click.option("--procedural", default=",".join(KINDS), show_default=True, callback=_kinds, help="Procedural mask kinds when no --masks, sized to each foreground component.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Base seed; sample i uses a seed derived from (seed, i).")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=2), help="DDIM steps (stage windows scale with it).")
@click.option("--guidance", default=9.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--control-scale", default=1.0, show_default=True, help="ControlNet conditioning scale.")
@click.option("--adapt-iters", default=None, type=click.IntRange(min=0), help=f"Online decoder adaptation iterations (0: off). [default: {ROI_ADAPT[0]} with --adapt-region roi, {IMAGE_ADAPT[0]} with image]")
@click.option("--adapt-lr", default=None, type=click.FloatRange(min=0, min_open=True), help=f"Adaptation AdamW learning rate. [default: {ROI_ADAPT[1]:g} with --adapt-region roi, {IMAGE_ADAPT[1]:g} with image]")
@click.option("--adapt-region", type=click.Choice(["roi", "image"]), default="roi", show_default=True, help="roi: adapt the decoder on the crop around the mask and take the OK image beyond it; image: the whole image (the reference).")
@click.option("--adapt-margin", default=4, show_default=True, type=click.IntRange(min=0), help="With --adapt-region roi: latent cells (x8 px) added around the mask's box.")
@click.option("--adapt-precision", type=click.Choice(ADAPT_PRECISIONS), default="fp32", show_default=True, help="Adaptation arithmetic; bf16: bfloat16 autocast, fp32 weights and loss (a run of its own).")
@click.option("--preservation", default=100.0, show_default=True, type=click.FloatRange(min=0), help="Adaptation background weight (lambda).")
@click.option("--resolution", default=256, show_default=True, callback=_resolution, help="Working resolution, a multiple of 64.")
@click.option("--renoise", type=click.Choice(["next", "current"]), default="next", show_default=True, help="Pixel stage: re-noise to the next timestep (fixed) or the current one (authors' code).")
@click.option("--keep-thin", is_flag=True, help="Keep defects thinner than 8 px in the latent mask (any-pixel cells instead of nearest).")
@click.option("--rotate", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Random defect rotation up to this many degrees (paper: 360).")
@click.option("--scale-range", default="1.0,1.0", show_default=True, callback=_scale_range, help="Random defect scale range LOW,HIGH (paper: 0.85,1.15).")
@click.option("--prompt-suffix", default="", help="Appended to the prompt (authors: ', black background.').")
@click.option("--model", envvar="ADABLDM_MODEL", help="demo (the shipped demo model; its ControlNet: --controlnet crack|scratch|stain, else the one --defect names, else crack), tiny (random, for tests) or a local diffusers SD-1.5 directory; env ADABLDM_MODEL. [default: demo; with --bundle: none, the bundle runs as it is (given, it is checked against the bundle)]")
@click.option("--controlnet", help="Local ControlNet: diffusers directory or .safetensors file.")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickle (.ckpt/.pt/.bin) ControlNet checkpoints.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle of exported networks (adabldm-export). [default: reference modules]")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True, help="Runtime of the bundle's networks: torch (the reference modules, checked against the bundle), onnxruntime, openvino (CPU; the native runner's runtime, pip install 'adabldm[native]'), torch-cuda / torch-compile (FP16 on the GPU, eager / compiled), tensorrt (adabldm-export --trt).")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1), help="Samples per diffusion batch (CFG runs 2x this); a resume keeps it.")
@click.option("--device", default="auto", show_default=True, callback=_device_name, help="cpu, cuda, cuda:N or auto.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True, help="With --device cuda and --backend tensorrt, torch-cuda or torch-compile: replay each denoising step from one CUDA graph (not yet run on a GPU).")
@click.option("--shard", callback=_shard, metavar="K/N", help="Make only shard K of N (whole --batch-size chunks, interleaved: chunk c is shard c mod N), into OUT shared by all N; a manifest per shard.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]", help="Run on Ray Data (pip install adabldm[ray]): a Ray cluster's address, or none for RAY_ADDRESS / a local Ray.")
@click.option("--actors", type=click.IntRange(min=1), help="With --ray: pipelines (actors) in the pool. [default: one per GPU with --device cuda, else per CPU]")
@click.option("--check", is_flag=True, help="Only check OUT: name the missing and duplicated samples of 0..NUM-1 over every manifest (exit 1 if any).")
@click.option("--gate", is_flag=True, help="Make a sample again (next derived seed) while its figures fail the thresholds below.")
@click.option("--min-bg-psnr", default=DEFAULT_MIN_BG_PSNR, show_default=True, type=float, help="Gate: background PSNR (dB) outside the mask against the source, at least.")
@click.option("--min-defect-strength", default=DEFAULT_MIN_DEFECT_STRENGTH, show_default=True, type=float, help="Gate: mean change inside the mask / outside, at least.")
@click.option("--max-leakage", type=float, help="Gate: mean change (gray levels) farther than 8 px from the mask, at most. [default: not checked]")
@click.option("--max-seam", type=float, help="Gate: RMS gradient of the change on the mask's border band, at most. [default: not checked]")
@click.option("--max-attempts", default=DEFAULT_MAX_ATTEMPTS, show_default=True, type=click.IntRange(1, MAX_ATTEMPTS_LIMIT), help="Gate: attempts per sample in all; one never passing keeps its last, flagged in the manifest.")
@click.option("--dump-noise", type=click.Path(file_okay=False, path_type=Path), help="Also write each sample's inputs and noise tape for adabldm-native into DUMP_NOISE/NNNN (ok, trimap, mask PNGs, embeddings.npy, noise.npy, sample.json).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def main(ctx, batch_mode, out, category, num, object_name, defect, images, foreground, foreground_mode, foreground_min_area,
         masks, procedural, seed, steps, guidance, control_scale, adapt_iters, adapt_lr, adapt_region, adapt_margin, adapt_precision,
         preservation, resolution, renoise, keep_thin, rotate, scale_range, prompt_suffix, model, controlnet,
         allow_pickle, bundle, backend, batch_size, device, cuda_graphs, shard, ray_address, actors, check, gate,
         min_bg_psnr, min_defect_strength, max_leakage, max_seam, max_attempts, dump_noise, quiet):
    """Synthesise defect images with pixel-exact masks (AdaBLDM) in bulk.

    \b
    Outputs (OUT is the run root, CATEGORY the --category; anomalib: root=OUT, category=CATEGORY):
      OUT/CATEGORY/train/good/NNN.png                 the OK images used, resized
      OUT/CATEGORY/test/DEFECT/NNNN.png               synthetic defect images
      OUT/CATEGORY/ground_truth/DEFECT/NNNN_mask.png  binary masks (0/255)
      OUT/extra/DEFECT/                               source, trimap, pre-adaptation blend
      OUT/manifest.jsonl, OUT/runs/DEFECT.json, OUT/contact_sheet_DEFECT.png
    Rerunning the same command resumes an interrupted run.
    Exit codes: 0 all done; 1 error (also: no sample could be made, or another run holds
    OUT); 2 usage (nothing written); 3 done, but inputs or samples skipped; 130 interrupted.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not batch_mode:
        raise click.UsageError("choose a mode: --batch (bulk synthesis)")
    _scale_out_usage(shard, ray_address, actors)
    if dump_noise is not None and ray_address is not None:
        raise click.UsageError("--dump-noise runs in the single-process job (or a --shard), not on --ray")
    _gate_usage(ctx, gate)
    from adabldm_ref.config import (
        AdaptConfig,
        GenerationConfig,
        MaskConfig,
        SamplerConfig,
    )

    from .gate import GateConfig
    from .job import EXIT_ERROR, EXIT_INTERRUPTED, JobConfig

    region_adapt = ROI_ADAPT if adapt_region == "roi" else IMAGE_ADAPT
    try:  # what the option types cannot check alone (e.g. --backend onnxruntime without --bundle)
        gen = GenerationConfig(
            object_name=object_name,
            defect=defect,
            resolution=resolution,
            seed=seed,
            prompt_suffix=prompt_suffix,
            sampler=SamplerConfig(steps=steps, guidance=guidance, control_scale=control_scale, renoise=renoise),
            masks=MaskConfig(keep_thin=keep_thin, rotate=rotate, scale=scale_range, foreground=foreground_mode),
            adapt=AdaptConfig(iters=adapt_iters if adapt_iters is not None else region_adapt[0],
                              lr=adapt_lr if adapt_lr is not None else region_adapt[1], preservation=preservation),
        )
        cfg = JobConfig(
            out=out, num=num, generation=gen, images=images, foreground=foreground,
            foreground_min_area=foreground_min_area, masks=masks, procedural=procedural,
            model=model if model is not None or bundle is not None else "demo",
            controlnet=controlnet, allow_pickle=allow_pickle, bundle=bundle, backend=backend,
            batch_size=batch_size, device=_device(device), cuda_graphs=cuda_graphs, adapt_precision=adapt_precision,
            adapt_region=adapt_region, adapt_margin=adapt_margin,
            category=category, dump_noise=dump_noise,
            gate=GateConfig(min_bg_psnr=min_bg_psnr, min_defect_strength=min_defect_strength, max_leakage=max_leakage,
                            max_seam=max_seam, max_attempts=max_attempts) if gate else None,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if check:
        sys.exit(_check(cfg))
    try:
        with sigterm_as_interrupt():
            report = _run(cfg, shard, ray_address, actors, quiet)
    except KeyboardInterrupt:  # before the job loop started (loading); nothing to keep
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ValueError as exc:  # InputError, ModelLoadError, PlacementError, a folder in use
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    done = report.resumed + report.generated
    click.echo(
        f"{done}/{report.total} samples in {report.out} ({report.generated} new, {report.resumed} resumed)"
        + (f"; {len(report.skipped_inputs)} input(s) skipped" if report.skipped_inputs else "")
        + (f"; {len(report.failed)} sample(s) failed: {sorted(report.failed)}" if report.failed else "")
        + (f"; {len(report.thin_resampled)} defect mask(s) too thin at their scale, resampled to keep every"
           " pixel they touch (placement.thin_resampled)" if report.thin_resampled else ""),
        err=True,
    )
    if cfg.gate is not None:
        click.echo(f"gate: {len(report.regenerated)} sample(s) made again {sorted(report.regenerated)};"
                   f" {len(report.gate_failed)} kept without passing (gate.passed false in the manifest)"
                   + (f": {sorted(report.gate_failed)}" if report.gate_failed else ""), err=True)
    measured = len(report.finite_quality("bg_psnr_after"))
    if measured:
        before, after = report.mean_quality("bg_psnr_before"), report.mean_quality("bg_psnr_after")
        click.echo(f"background PSNR vs source (mean of {measured}): {before:.2f} dB before,"
                   f" {after:.2f} dB after adaptation", err=True)
    elif report.quality:
        click.echo("background PSNR vs source: none, every defect mask covers its whole image", err=True)
    if report.error:
        click.echo(f"error: {report.error}", err=True)
    if report.exit_code:
        sys.exit(report.exit_code)


def _scale_out_usage(shard, ray_address, actors) -> None:
    if shard and ray_address is not None:
        raise click.UsageError("--shard and --ray: choose one (Ray splits the work itself)")
    if actors and ray_address is None:
        raise click.UsageError(f"--actors {actors}: needs --ray")


GATE_OPTIONS = ("min_bg_psnr", "min_defect_strength", "max_leakage", "max_seam", "max_attempts")


def _gate_usage(ctx: click.Context, gate: bool) -> None:
    """A gate threshold given without --gate would silently do nothing: refused."""
    given = [n for n in GATE_OPTIONS if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
    if given and not gate:
        raise click.UsageError(f"--{given[0].replace('_', '-')}: a gate threshold; needs --gate")


def _check(cfg) -> int:
    from .job import EXIT_ERROR
    from .scaleout import check_run

    result = check_run(cfg.out, cfg.category, cfg.generation.defect, cfg.num)
    click.echo(result.message(cfg.out, cfg.generation.defect), err=True)
    return 0 if result.ok else EXIT_ERROR


def _run(cfg, shard, ray_address, actors, quiet):
    """The single-process job, one shard of it, or the job on Ray Data."""
    if ray_address is None:
        from .job import run_job
        from .scaleout import Shard

        return run_job(cfg, progress=not quiet, shard=Shard(*shard) if shard else None)
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ValueError("--ray: ray is not installed (pip install 'adabldm[ray]')")
    from .scaleout import RayConfig, run_ray

    return run_ray(cfg, RayConfig(address=ray_address or None, actors=actors), progress=not quiet)


if __name__ == "__main__":
    main()
