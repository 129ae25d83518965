"""Regenerate the demo model from nothing: ``python -m adabldm_ref.demo.build --out DIR``.

Stages, each deterministic in ``--seed``: (1) the few-shot set (defects.py) in the MVTec
layout, (2) the VAE as an autoencoder, (3) the UNet as a latent diffusion model
(base.py), (4) one ControlNet per demo defect type with ``adabldm-train`` on that set.
``DIR`` gets the diffusers-layout base model (fp16 safetensors), ``controlnets/{defect}``
and ``demo.json``: the settings, the figures of each stage and the sha256 of every file.
``--size test`` and small ``--*-steps`` make a run of seconds (the CI check).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (as tests/conftest.py): on a shared 2-core
# machine spinning made training steps up to 30x slower. Read when torch starts OpenMP;
# the adabldm-train subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from .base import TEST_SIZE, DemoSize, UnetRecipe, VaeRecipe, build_demo_networks, recipes_dict, split_textures  # noqa: E402
from .base import texture_arrays, texture_latents, train_unet, train_vae  # noqa: E402
from ..config import LATENT_SCALE  # noqa: E402
from .defects import CATEGORY, DEFECTS, write_fewshot  # noqa: E402

log = logging.getLogger("adabldm.demo")
RECORD = "demo.json"
BASE_PARTS = ("unet", "vae", "text_encoder")


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every weight/config file under ``root`` (relative posix path -> hex)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != RECORD}


def save_base(models, root: Path, dtype: torch.dtype) -> None:
    for part in BASE_PARTS:
        module = getattr(models, part)
        module.to(dtype).save_pretrained(root / part, safe_serialization=True)
        module.to(torch.float32)
    models.tokenizer.save_pretrained(root / "tokenizer")
    from ..models import make_scheduler

    make_scheduler().save_pretrained(root / "scheduler")


def train_controlnet(fewshot: Path, base: Path, defect: str, out: Path, args) -> dict:
    """One ``adabldm-train`` run (the console script's module, same interpreter)."""
    cmd = [sys.executable, "-m", "adabldm_ref.train_cli", "--images", str(fewshot / "train" / "good"),
           "--defects", str(fewshot / "test" / defect), "--defect-masks", str(fewshot / "ground_truth" / defect),
           "--object", CATEGORY, "--defect", defect, "--model", str(base), "--out", str(out),
           "--steps", str(args.cn_steps), "--batch-size", str(args.cn_batch), "--lr", str(args.cn_lr),
           "--empty-prompt-p", "0.1", "--seed", str(args.seed), "--checkpoint-every", str(args.cn_steps),
           "--keep-checkpoints", "1", "--validate-samples", "2", "--validate-steps", str(args.cn_validate_steps),
           "--resolution", str(args.cn_resolution), "--quiet", "--device", "cpu"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    record = json.loads((out / "train.json").read_text()) if (out / "train.json").exists() else {}
    return {"command": ["adabldm-train", *cmd[3:]], "seconds": round(time.perf_counter() - t0, 1),
            "final_loss": record.get("final_loss", record.get("report", {}).get("final_loss"))}


def build(args) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    size = TEST_SIZE if args.size == "test" else DemoSize()
    vae_r = VaeRecipe(steps=args.vae_steps, batch=args.vae_batch)
    unet_r = UnetRecipe(steps=args.unet_steps, batch=args.unet_batch)
    record = {"settings": {**vars(args), **recipes_dict(vae_r, unet_r, size), "torch": torch.__version__},
              "figures": {}}
    t0 = time.perf_counter()
    textures = texture_arrays()
    fewshot = write_fewshot(work / "fewshot", textures, seed=args.seed)
    models = build_demo_networks(size, seed=args.seed)
    train, held = split_textures(textures)
    record["figures"]["vae"] = train_vae(models.vae, train, held, vae_r, args.seed, log=log.info)
    log.info("vae: %s", record["figures"]["vae"])
    # SD's 0.18215 makes SD's latents about unit-variance; this VAE gets its own factor
    # (recorded in its config, read by every loader as Models.latent_scale).
    scale = round(1.0 / float(texture_latents(models.vae, train, 1.0).std()), 5) if args.scale_latents else LATENT_SCALE
    models.vae.register_to_config(scaling_factor=scale)
    models.latent_scale = scale
    record["figures"]["vae"]["latent_scale"] = scale
    latents = texture_latents(models.vae, train, scale)
    record["figures"]["unet"] = train_unet(models, latents, unet_r, args.seed + 1, log=log.info)
    base_fp32 = work / "base"
    save_base(models, base_fp32, torch.float32)
    if out.exists():
        shutil.rmtree(out)
    save_base(models, out, torch.float16)
    cn = {}
    for defect in args.defects:
        run = work / f"train_{defect}"
        if run.exists():
            shutil.rmtree(run)
        cn[defect] = train_controlnet(fewshot, base_fp32, defect, run, args)
        log.info("controlnet %s: %s", defect, cn[defect])
        from diffusers import ControlNetModel

        net = ControlNetModel.from_pretrained(run / "controlnet", local_files_only=True)
        net.to(torch.float16).save_pretrained(out / "controlnets" / defect, safe_serialization=True)
    record["figures"]["controlnets"] = cn
    record["figures"]["total_seconds"] = round(time.perf_counter() - t0, 1)
    record["sha256"] = file_hashes(out)
    (out / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adabldm_ref.demo.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where the model goes (replaced)")
    p.add_argument("--work", required=True, help="scratch folder: few-shot set, fp32 base, training runs")
    p.add_argument("--size", choices=["small", "test"], default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (bit-identical runs need the same)")
    p.add_argument("--vae-steps", type=int, default=VaeRecipe.steps)
    p.add_argument("--vae-batch", type=int, default=VaeRecipe.batch)
    p.add_argument("--unet-steps", type=int, default=UnetRecipe.steps)
    p.add_argument("--unet-batch", type=int, default=UnetRecipe.batch)
    p.add_argument("--cn-steps", type=int, default=800, help="adabldm-train --steps per defect type")
    p.add_argument("--cn-batch", type=int, default=2)
    p.add_argument("--cn-lr", type=float, default=5e-4, help="adabldm-train --lr (the authors' 1e-5 needs ~30k steps)")
    p.add_argument("--cn-resolution", type=int, default=256, help="adabldm-train --resolution")
    p.add_argument("--cn-validate-steps", type=int, default=10, help="adabldm-train --validate-steps")
    p.add_argument("--scale-latents", action=argparse.BooleanOptionalAction, default=True,
                   help="latent scale 1/std of the texture latents (else SD's 0.18215)")
    p.add_argument("--defects", nargs="+", choices=DEFECTS, default=list(DEFECTS), help="ControlNets to train")
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    record = build(parser().parse_args(argv))
    log.info("done in %.0f s; record in %s/%s", record["figures"]["total_seconds"], record["settings"]["out"], RECORD)


if __name__ == "__main__":
    main()
