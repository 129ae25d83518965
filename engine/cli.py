"""``adabldm-run``: command line -> frozen JobConfig -> run_job. No logic here."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from adabldm_ref.config import AdaptConfig, GenerationConfig, MaskConfig, SamplerConfig
from adabldm_ref.procedural import KINDS

from .backends import BACKENDS
from .job import EXIT_INTERRUPTED, EXIT_OK, JobConfig, run_job

EXIT_ERROR = 1


# Option defaults are the configuration's, so the command line and the Python API agree.
_GEN, _SAMPLER, _ADAPT, _MASKS = GenerationConfig(), SamplerConfig(), AdaptConfig(), MaskConfig()


def _scale_range(ctx, param, value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected two numbers 'LOW,HIGH', e.g. 0.85,1.15")
    if not 0 < lo <= hi:
        raise click.BadParameter(f"{value!r}: expected 0 < LOW <= HIGH")
    return lo, hi


def _kinds(ctx, param, value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise click.BadParameter(f"{value!r}: expected a comma list of {', '.join(KINDS)}")
    return kinds


def _device(value: str) -> str:
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--batch", "batch_mode", is_flag=True, help="Bulk synthesis job (the only mode so far).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output category folder (MVTec AD layout).")
@click.option("--num", default=8, show_default=True, help="Number of samples (a larger --num on an existing --out adds more).")
@click.option("--object", "object_name", default="texture", show_default=True, help="Object name in the prompt 'a {object} with a {defect}'.")
@click.option("--defect", default="defect", show_default=True, help="Defect type: prompt word and output sub-folder.")
@click.option("--images", type=click.Path(path_type=Path), help="Folder of OK (defect-free) images, any size. [default: scikit-image brick, gravel]")
@click.option("--foreground", type=click.Path(path_type=Path), help="Folder of foreground masks named like the images (NAME.png or NAME_mask.png).")
@click.option("--foreground-mode", type=click.Choice(["full", "otsu"]), default="full", show_default=True, help="Without --foreground: whole image (textures) or Otsu + 5x5 close (objects).")
@click.option("--masks", type=click.Path(path_type=Path), help="Folder of real defect masks (e.g. MVTec ground_truth/<defect>). [default: procedural]")
@click.option("--procedural", default=",".join(KINDS), show_default=True, callback=_kinds, help="Procedural mask kinds when no --masks.")
@click.option("--seed", default=_GEN.seed, show_default=True, help="Base seed; sample i uses a seed derived from (seed, i).")
@click.option("--steps", default=_SAMPLER.steps, show_default=True, help="DDIM steps (stage windows scale with it).")
@click.option("--guidance", default=_SAMPLER.guidance, show_default=True, help="Classifier-free guidance scale.")
@click.option("--control-scale", default=_SAMPLER.control_scale, show_default=True, help="ControlNet conditioning scale.")
@click.option("--adapt-iters", default=_ADAPT.iters, show_default=True, help="Online decoder adaptation iterations (0: off).")
@click.option("--adapt-lr", default=_ADAPT.lr, show_default=True, help="Adaptation AdamW learning rate. Fewer --adapt-iters with a larger rate trade quality for time (measured on the CPU: 100 at 2e-4 costs half and loses ~1 dB of background PSNR; benchmarks/results/adaptation_cpu.md).")
@click.option("--adapt-precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True, help="Adaptation arithmetic. bf16: bfloat16 autocast, fp32 weights and loss; measured on a CPU with native bf16: 2.1x faster at SD-1.5 size, background PSNR -0.05 dB (slower on the tiny model and on CPUs without native bf16); on a GPU with channels-last convolutions (not yet measured there).")
@click.option("--preservation", default=_ADAPT.preservation, show_default=True, help="Adaptation background weight (lambda).")
@click.option("--resolution", default=_GEN.resolution, show_default=True, help="Working resolution, a multiple of 64.")
@click.option("--renoise", type=click.Choice(["next", "current"]), default=_SAMPLER.renoise, show_default=True, help="Pixel stage: re-noise to the next timestep (fixed) or the current one (authors' code).")
@click.option("--keep-thin", is_flag=True, help="Keep defects thinner than 8 px in the latent mask (any-pixel cells instead of nearest).")
@click.option("--rotate", default=_MASKS.rotate, show_default=True, help="Random defect rotation up to this many degrees (paper: 360).")
@click.option("--scale-range", default="1.0,1.0", show_default=True, callback=_scale_range, help="Random defect scale range LOW,HIGH (paper: 0.85,1.15).")
@click.option("--prompt-suffix", default="", help="Appended to the prompt (authors: ', black background.').")
@click.option("--model", help="Local diffusers SD-1.5 directory. [default: built-in tiny model]")
@click.option("--controlnet", help="Local ControlNet: diffusers directory or .safetensors file.")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickle (.ckpt/.pt/.bin) ControlNet checkpoints.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle of exported networks (adabldm-export). [default: reference modules]")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True, help="Runtime of the bundle's networks. torch: the reference modules, checked against the bundle; onnxruntime: the ONNX graphs (CUDA with onnxruntime-gpu); torch-cuda / torch-compile: the modules in FP16 on the GPU, eager / torch.compile'd; tensorrt: the bundle's engines (adabldm-export --trt).")
@click.option("--batch-size", default=1, show_default=True, help="Samples per diffusion batch (CFG runs 2x this).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True, help="With --device cuda and --backend tensorrt, torch-cuda or torch-compile: replay each denoising step from one CUDA graph (not yet run on a GPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(batch_mode, out, num, object_name, defect, images, foreground, foreground_mode, masks,
         procedural, seed, steps, guidance, control_scale, adapt_iters, adapt_lr, adapt_precision, preservation, resolution,
         renoise, keep_thin, rotate, scale_range, prompt_suffix, model, controlnet, allow_pickle,
         bundle, backend, batch_size, device, cuda_graphs, quiet):
    """Synthesise defect images with pixel-exact masks (AdaBLDM) in bulk.

    \b
    Outputs (OUT is the category folder):
      OUT/test/DEFECT/NNNN.png               synthetic defect images
      OUT/ground_truth/DEFECT/NNNN_mask.png  binary masks (0/255)
      OUT/extra/DEFECT/                      source, trimap, pre-adaptation blend
      OUT/manifest.jsonl, OUT/runs/DEFECT.json, OUT/contact_sheet_DEFECT.png
    Rerunning the same command resumes an interrupted run.
    Exit codes: 0 all done, 1 error, 2 usage, 3 done but inputs/samples skipped, 130 interrupted.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not batch_mode:
        raise click.UsageError("choose a mode: --batch (bulk synthesis)")
    if out is None:
        raise click.UsageError("--batch needs --out DIR")
    try:
        gen = GenerationConfig(
            object_name=object_name,
            defect=defect,
            resolution=resolution,
            seed=seed,
            prompt_suffix=prompt_suffix,
            sampler=SamplerConfig(steps=steps, guidance=guidance, control_scale=control_scale, renoise=renoise),
            masks=MaskConfig(keep_thin=keep_thin, rotate=rotate, scale=scale_range, foreground=foreground_mode),
            adapt=AdaptConfig(iters=adapt_iters, lr=adapt_lr, preservation=preservation),
        )
        cfg = JobConfig(
            out=out, num=num, generation=gen, images=images, foreground=foreground, masks=masks,
            procedural=procedural, model=model, controlnet=controlnet, allow_pickle=allow_pickle,
            bundle=bundle, backend=backend, batch_size=batch_size, device=_device(device), cuda_graphs=cuda_graphs,
            adapt_precision=adapt_precision,
        )
        report = run_job(cfg, progress=not quiet)
    except KeyboardInterrupt:  # before the job loop started (loading); nothing to keep
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ValueError as exc:  # InputError, ModelLoadError, PlacementError, bad settings
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    done = report.resumed + report.generated
    click.echo(
        f"{done}/{report.total} samples in {report.out} ({report.generated} new, {report.resumed} resumed)"
        + (f"; {len(report.skipped_inputs)} input(s) skipped" if report.skipped_inputs else "")
        + (f"; {len(report.failed)} sample(s) failed: {sorted(report.failed)}" if report.failed else ""),
        err=True,
    )
    if report.quality:
        before, after = report.mean_quality("bg_psnr_before"), report.mean_quality("bg_psnr_after")
        click.echo(f"background PSNR vs source (mean of {len(report.quality)}): {before:.2f} dB before,"
                   f" {after:.2f} dB after adaptation", err=True)
    if report.exit_code != EXIT_OK:
        sys.exit(report.exit_code)


if __name__ == "__main__":
    main()
