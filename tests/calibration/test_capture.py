"""Capture: deterministic, round-trips through the bundle, covers every stage, refuses bad files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from adabldm_calibration.capture import (
    FOLDER,
    INDEX,
    TENSORS,
    CaptureConfig,
    CaptureError,
    capture,
    capture_matches,
    config_of,
    load_capture,
    ok_images_of,
    save_capture,
)
from adabldm_core.io import InputError

from adabldm_ref.config import SamplerConfig
from adabldm_ref.models import make_scheduler


def same_feeds(a, b) -> bool:
    return set(a.feeds) == set(b.feeds) and all(
        len(a.feeds[n]) == len(b.feeds[n])
        and all(fa.keys() == fb.keys() and all(fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]) for k in fa)
                for fa, fb in zip(a.feeds[n], b.feeds[n]))
        for n in a.feeds
    )


def test_capture_is_deterministic_and_round_trips(calib_bundle, tiny, tmp_path):
    stored = load_capture(calib_bundle / FOLDER)
    again = capture(tiny, config_of(stored))  # same settings, fresh run
    assert same_feeds(again, stored)
    assert again.settings == stored.settings
    save_capture(again, tmp_path)
    assert (tmp_path / TENSORS).read_bytes() == (calib_bundle / FOLDER / TENSORS).read_bytes()
    assert json.loads((tmp_path / INDEX).read_text()) == json.loads((calib_bundle / FOLDER / INDEX).read_text())


def test_capture_records_every_stage_and_its_settings(calib_bundle, tiny, ok_image_files):
    cap = load_capture(calib_bundle / FOLDER)
    cfg = config_of(cap)
    assert cfg.images == (str(ok_image_files[0]),) and cfg.steps == 5 and cfg.samples_per_image == 2
    assert [o["name"] for o in cap.settings["ok_images"]] == ["a_brick.png"]
    assert cap.settings["model_identity"] == tiny.identity()
    assert len(cap.settings["samples"]) == 2 and cap.settings["samples"][0]["seed"] != cap.settings["samples"][1]["seed"]
    # The UNet saw every timestep of the run, with the trimap hints and both text contexts.
    sched = make_scheduler()
    sched.set_timesteps(SamplerConfig(steps=5).steps)
    unet = cap.feeds["unet_control"]
    assert [float(f["timestep"]) for f in unet] == [float(t) for t in sched.timesteps]
    assert all(f["sample"].shape == (4, 4, 32, 32) for f in unet)  # 2 samples, CFG doubles them
    levels = torch.unique(unet[0]["hint"]).tolist()
    assert set(levels) <= set((torch.tensor([0.0, 127.0, 255.0]) / 255).tolist()) and 1.0 in levels
    assert not torch.equal(unet[0]["text_ctx"][0], unet[0]["text_ctx"][2])  # uncond rows, then prompt rows
    # Pixel stage: the VAE encoded the OK images and then blended images; the decoder saw x0
    # predictions and the final latents.
    enc = cap.feeds["vae_encoder"]
    assert len(enc) == 2 and not torch.equal(enc[0]["image"], enc[1]["image"])
    assert len(cap.feeds["vae_decoder"]) == 2
    ids = cap.feeds["text_encoder"][0]["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (2, 77)
    # The OK images can be read again for later steps (INT8 parity).
    assert np.array_equal(ok_images_of(cap)[0].rgb.shape, (256, 256, 3))


def test_modified_missing_or_foreign_captures_are_refused(calib_bundle, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(calib_bundle / FOLDER, folder)
    cap = load_capture(folder)
    with pytest.raises(CaptureError, match="at 256 px, not 512 px"):
        capture_matches(cap, resolution=512)
    other = type("M", (), {"identity": lambda self: "0123456789abcdef"})()
    with pytest.raises(CaptureError, match="made with model .* not 0123456789abcdef"):
        capture_matches(cap, models=other)
    data = bytearray((folder / TENSORS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / TENSORS).write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="modified since capture"):
        load_capture(folder)
    info = json.loads((folder / INDEX).read_text())
    (folder / INDEX).write_text(json.dumps(info | {"format_version": 99}))
    with pytest.raises(CaptureError, match="capture format 99, this adabldm reads 1"):
        load_capture(folder)
    (folder / INDEX).unlink()
    with pytest.raises(CaptureError, match="no capture in"):
        load_capture(folder)


def test_bad_capture_settings_are_named(tiny, tmp_path):
    with pytest.raises(CaptureError, match="capture steps 4: .*at least 5"):
        CaptureConfig(steps=4)
    with pytest.raises(CaptureError, match="samples_per_image 0"):
        CaptureConfig(samples_per_image=0)
    with pytest.raises(CaptureError, match=r"mask kinds \['dent'\]"):
        CaptureConfig(mask_kinds=("dent",))
    with pytest.raises(CaptureError, match=r"textures \['nosuch'\]"):
        capture(tiny, CaptureConfig(textures=("nosuch",)))
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="not a readable image"):
        capture(tiny, CaptureConfig(images=(str(tmp_path / "x.png"),)))
