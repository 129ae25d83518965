"""The shipped demo model: loads offline, its files are the recorded ones, a short
synthesis shows a defect inside M and the source outside it, and the regeneration command
runs each of its stages."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from adabldm_ref.demo import DEFECTS, WEIGHTS, controlnet_choice, load_demo, record, verify
from adabldm_ref.models import ModelLoadError, load_models

# Thresholds from benchmarks/results/demo_cpu.md (README settings: ROI adaptation, 20 steps at
# 5e-4; its first 2 samples are the ones this test makes: 35.6 and 24.4 dB, 14.4x and 6.2x
# in the manifest), with margin. The targets (30 dB, 5x) hold for the 4-sample mean.
MIN_BG_PSNR_DB = 27.0
MIN_STRENGTH = 6.0


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")


def test_weights_match_their_recorded_sha256():
    hashes = record()["sha256"]
    assert {f"controlnets/{d}/diffusion_pytorch_model.safetensors" for d in DEFECTS} <= set(hashes)
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors", "tokenizer/tokenizer.json"} <= set(hashes)
    for rel, digest in hashes.items():
        assert hashlib.sha256((WEIGHTS / rel).read_bytes()).hexdigest() == digest, rel
    total = sum((WEIGHTS / rel).stat().st_size for rel in hashes)
    assert total < 20e6  # "a few MB"
    verify()


def test_a_changed_file_is_refused(tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(WEIGHTS, root)
    verify(root)
    path = root / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="missing or changed"):
        verify(root)


def test_demo_loads_offline_with_a_controlnet_per_defect():
    assert controlnet_choice(None, "scratch") == "scratch"
    assert controlnet_choice(None, "defect") == "crack" and controlnet_choice("stain", "crack") == "stain"
    crack = load_models("demo")
    assert crack.name == "demo:crack" and crack.vae.dtype == torch.float32
    stain = load_models("demo", defect="stain")
    assert stain.name == "demo:stain" and stain.identity() != crack.identity()
    assert load_demo("crack").identity() == crack.identity()  # deterministic load
    assert list(stain.unet.config.block_out_channels) == record()["settings"]["size"]["unet_channels"]


@pytest.mark.slow
def test_a_short_synthesis_shows_the_defect_and_keeps_the_background(tmp_path):
    from adabldm_engine.job import JobConfig, run_job

    from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
    from adabldm_ref.demo.quality import run_figures

    gen = GenerationConfig(sampler=SamplerConfig(steps=20), adapt=AdaptConfig(iters=20, lr=5e-4))
    report = run_job(JobConfig(out=tmp_path / "out", num=2, generation=gen, model="demo", device="cpu"), progress=False)
    assert report.exit_code == 0
    figures = run_figures(tmp_path / "out", "defect")["mean"]
    assert figures["bg_psnr"] >= MIN_BG_PSNR_DB, figures
    assert figures["strength"] >= MIN_STRENGTH, figures


def test_the_regeneration_command_runs_each_stage(tmp_path):
    from adabldm_ref.demo.build import main

    out = tmp_path / "model"
    main(["--out", str(out), "--work", str(tmp_path / "work"), "--size", "test", "--vae-steps", "2",
          "--unet-steps", "2", "--cn-steps", "1", "--cn-batch", "1", "--cn-resolution", "64",
          "--cn-validate-steps", "2", "--defects", "crack", "--threads", "1"])
    rec = json.loads((out / "demo.json").read_text())
    assert set(rec["figures"]) >= {"vae", "unet", "controlnets", "total_seconds"}
    assert rec["figures"]["controlnets"]["crack"]["command"][0] == "adabldm-train"
    assert all(np.isfinite(v) for v in rec["figures"]["vae"]["val_psnr_db"].values())
    few = tmp_path / "work" / "fewshot" / "texture"
    assert sorted(p.name for p in (few / "test").iterdir()) == sorted([*DEFECTS, "good"])
    assert len(list((few / "test" / "good").glob("*.png"))) == 12  # held-out OK crops (adabldm-eval)
    assert len(list((few / "ground_truth" / "crack").glob("*_mask.png"))) == len(list((few / "test" / "crack").glob("*.png")))
    models = load_models(str(out), str(out / "controlnets" / "crack"))
    assert models.unet.dtype == torch.float32  # stored fp16, loaded as float32
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    for rel, digest in rec["sha256"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
