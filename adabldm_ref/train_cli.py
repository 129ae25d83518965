"""``adabldm-train``: command line -> frozen TrainConfig -> train. No logic here.

torch and diffusers are imported after parsing, so ``--help`` and usage errors need
neither (the defaults below are checked against TrainConfig's by the tests).
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import click
from adabldm_core.signals import sigterm_as_interrupt

EXIT_OK, EXIT_ERROR, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 3, 130  # adabldm-run's codes

# Help sections: option name -> section, in this order.
GROUPS = {
    "Data": ["images", "defects", "defect_masks", "object_name", "defect", "foreground", "foreground_mode",
             "shots", "resolution"],
    "Model": ["model", "init_controlnet"],
    "Recipe": ["steps", "batch_size", "grad_accum", "lr", "weight_decay", "max_grad_norm", "seed", "rotate",
               "scale_range", "empty_prompt_p"],
    "Arithmetic": ["precision", "gradient_checkpointing", "device"],
    "Run directory": ["out", "checkpoint_every", "keep_checkpoints", "validate_every", "validate_samples",
                      "validate_steps", "quiet"],
}


class GroupedCommand(click.Command):
    """A command whose --help lists its options in the sections of GROUPS."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        for title, names in [*GROUPS.items(), ("Other", [n for n in records if not any(n in g for g in GROUPS.values())])]:
            rows = [records[n] for n in names if records.get(n)]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _scale_range(ctx, param, value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected two numbers 'LOW,HIGH', e.g. 0.85,1.15") from None
    if not 0 < lo <= hi:
        raise click.BadParameter(f"{value!r}: expected 0 < LOW <= HIGH")
    return lo, hi


def _device_name(ctx, param, value: str) -> str:
    """Checked here: torch.device's own error for 'gpu' or 'cuda:x' is a traceback."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise click.BadParameter(f"{value!r}: expected auto, cpu, cuda or cuda:N")
    return value


def _device(value: str) -> str:
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


folder = click.Path(file_okay=False, path_type=Path)


@click.command(cls=GroupedCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--images", required=True, type=folder, help="Folder of OK (defect-free) images of the object, any size.")
@click.option("--defects", required=True, type=folder, help="Folder of real defect images (e.g. MVTec test/<defect>).")
@click.option("--defect-masks", required=True, type=folder, help="Their masks, paired by name: NNN.png with NNN_mask.png or NNN.png (e.g. MVTec ground_truth/<defect>).")
@click.option("--object", "object_name", required=True, help="Object name in the prompt 'a {object} with a {defect}'.")
@click.option("--defect", required=True, help="Defect type, the prompt's second word.")
@click.option("--foreground", type=folder, default=None, help="Foreground masks named like the OK images (NAME.png or NAME_mask.png).")
@click.option("--foreground-mode", type=click.Choice(["full", "otsu"]), default="full", show_default=True, help="Without --foreground: whole image (textures) or Otsu + 5x5 close (objects).")
@click.option("--shots", type=int, default=None, help="Real defects that train: the first K by name; the rest are held out and never read. [default: the first third]")
@click.option("--resolution", default=256, show_default=True, help="Working resolution, a multiple of 64.")
@click.option("--model", default=None, envvar="ADABLDM_MODEL", help="demo (the shipped demo base model), tiny (random, for tests) or a local diffusers SD-1.5 directory; env ADABLDM_MODEL. [default: demo]")
@click.option("--init-controlnet", default=None, help="Start from this ControlNet (diffusers directory or .safetensors). [default: ControlNetModel.from_unet, zero convolutions]")
@click.option("--steps", default=30_000, show_default=True, help="Optimiser steps (the authors: ~30k at batch 4). A larger value on an existing run continues it.")
@click.option("--batch-size", default=4, show_default=True, help="Pairs per micro-batch.")
@click.option("--grad-accum", default=1, show_default=True, help="Micro-batches per optimiser step.")
@click.option("--lr", default=1e-5, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", default=1e-2, show_default=True, help="AdamW weight decay (diffusers' and torch's default).")
@click.option("--max-grad-norm", default=1.0, show_default=True, help="Gradient clipping (diffusers' default); 0: off.")
@click.option("--seed", default=0, show_default=True, help="Seed; step s draws its pairs and noise from (seed, s).")
@click.option("--rotate", default=360.0, show_default=True, help="Random defect rotation up to this many degrees.")
@click.option("--scale-range", default="0.85,1.15", show_default=True, callback=_scale_range, help="Random isotropic defect scale LOW,HIGH.")
@click.option("--empty-prompt-p", default=0.0, show_default=True, help="Probability of the empty prompt for the UNet (paper: 0.1; the authors' code: 0).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Training arithmetic: fp32 (the authors), or bf16/fp16 autocast with fp32 ControlNet weights (fp16: CUDA only, with loss scaling).")
@click.option("--gradient-checkpointing", is_flag=True, default=False, help="Recompute UNet and ControlNet activations in the backward pass (less memory, more time).")
@click.option("--device", default="auto", show_default=True, callback=_device_name, help="cpu, cuda, cuda:N or auto.")
@click.option("--out", required=True, type=folder, help="Run directory (train.json, controlnet/, checkpoints/, loss log and plot, validation sheets).")
@click.option("--checkpoint-every", default=1000, show_default=True, help="Steps between checkpoints (written atomically).")
@click.option("--keep-checkpoints", default=2, show_default=True, help="Checkpoints kept (the last K).")
@click.option("--validate-every", default=0, show_default=True, help="Steps between validation contact sheets (0: only at the end).")
@click.option("--validate-samples", default=4, show_default=True, help="Rows of a validation sheet (fixed seeds, held-in shots' masks).")
@click.option("--validate-steps", default=20, show_default=True, help="DDIM steps of the validation samples.")
@click.option("--quiet", is_flag=True, default=False, help="No progress bar.")
def main(quiet, scale_range, device, **options):
    """Train the trimap ControlNet of one (object, defect type) from a few real defects
    (AdaBLDM's recipe: pairs made on the fly, UNet/VAE/text encoder frozen).

    \b
    Rerunning the same command resumes from the last checkpoint and reaches the same
    weights as an uninterrupted run; other settings on the same --out are refused.
    The result, OUT/controlnet, loads in adabldm-run --controlnet and adabldm-export --controlnet.
    Exit codes: 0 done, 1 error, 2 usage, 3 done but unusable OK images skipped (named in
    the warnings and train.json), 130 interrupted (Ctrl-C or SIGTERM; resume by rerunning).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    with sigterm_as_interrupt():
        _main(quiet, scale_range, device, options)


def _main(quiet, scale_range, device, options) -> None:
    try:
        from .train import TrainConfig, train

        options["model"] = options["model"] or "demo"  # TrainConfig's None is the tiny model (library callers)
        try:
            cfg = TrainConfig(scale=scale_range, device=_device(device), **options)
        except ValueError as exc:  # an option's value or a combination: a usage error, nothing written
            raise click.UsageError(str(exc)) from None
        report = train(cfg, progress=not quiet)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ValueError as exc:  # InputError, TrainError, ModelLoadError, PlacementError
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    how = f"continued from step {report.start}" if report.start else "from scratch"
    loss = f"{report.final_loss:.4f}" if report.final_loss is not None else "n/a"
    click.echo(f"trained {report.steps} steps ({how}); final loss {loss}; ControlNet in {report.out / 'controlnet'}",
               err=True)
    if report.skipped:
        for reason in report.skipped:  # again at the end: the warnings scrolled away behind the progress bar
            click.echo(f"skipped: {reason}", err=True)
        click.echo(f"{len(report.skipped)} OK image(s) skipped (train.json: data.skipped)", err=True)
        sys.exit(EXIT_SKIPPED)


if __name__ == "__main__":
    main()
