"""Region-of-interest adaptation (FastAdaptConfig.roi): the crop, the blend, and what it keeps.

Inputs are real blended latents of the tiny model; a few AdamW steps each.
"""
from __future__ import annotations

import pytest
import torch
from adabldm_engine.adaptation import (
    FastAdaptConfig,
    LatentBox,
    adapt_batch,
    feather_weight,
    roi_box,
)

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.pipeline import ProceduralMasks, plan_sample, reference_pipeline

ITERS = 3
ROI = FastAdaptConfig(roi=True, roi_margin=2, roi_feather=8)


@pytest.fixture(scope="module")
def batch(tiny, textures):
    cfg = GenerationConfig(sampler=SamplerConfig(steps=4), adapt=AdaptConfig(iters=0))
    pipe = reference_pipeline(tiny, cfg)
    plans = [plan_sample(i, cfg, textures, ProceduralMasks()) for i in range(2)]
    z, x_ok, mask = pipe.diffuse(plans)
    with torch.no_grad():
        x_fg = pipe.codec.decode(z)
    return z, x_fg, x_ok, mask


def adapt(tiny, z, x_fg, x_ok, mask, fast):
    return adapt_batch(tiny.vae, z, x_fg, x_ok, mask, AdaptConfig(iters=ITERS), fast, tiny.latent_scale)


def test_box_covers_the_mask_cells_with_margin_and_clips():
    m = torch.zeros(64, 64, dtype=torch.bool)
    m[9:17, 40:41] = True  # rows 9..16 -> cells 1..2; column 40 -> cell 5
    assert roi_box(m, margin=0) == LatentBox(1, 3, 5, 6)
    assert roi_box(m, margin=2) == LatentBox(0, 5, 3, 8)  # clipped at 0 and at 8 cells
    assert roi_box(torch.zeros(64, 64, dtype=torch.bool), margin=2) is None


def test_feather_ramps_only_at_inner_edges():
    w = feather_weight(LatentBox(0, 4, 2, 6), height=64, width=64, feather=8)[0, 0]
    assert w.shape == (32, 32)
    assert torch.all(w[:24, 8:24] == 1)  # the top is the image's edge (no ramp), the bottom is not
    assert w[0, 16] == 1 and w[-1, 16] == pytest.approx(0.5 / 8)
    assert w[16, 0] == pytest.approx(0.5 / 8) and w[16, -1] == pytest.approx(0.5 / 8)
    assert torch.all(feather_weight(LatentBox(0, 4, 2, 6), 64, 64, feather=0) == 1)


def test_far_from_the_mask_the_output_is_the_ok_image(tiny, batch):
    z, x_fg, x_ok, mask = batch
    out = adapt(tiny, z, x_fg, x_ok, mask, ROI)
    for b in range(z.shape[0]):
        box = roi_box(mask[b, 0] > 0.5, ROI.roi_margin)
        py, px = box.pixels()
        outside = torch.ones_like(mask[b, 0], dtype=torch.bool)
        outside[py, px] = False
        assert outside.any()
        assert torch.equal(out.images[b][:, outside], x_ok[b][:, outside])
        # inside the box the adapted decode is used: not the OK image where M is
        assert not torch.equal(out.images[b][:, mask[b, 0] > 0.5], x_ok[b][:, mask[b, 0] > 0.5])
    assert (out.steps == ITERS).all() and (out.loss_final < out.loss_first).all()


def test_a_full_mask_is_the_whole_image_adaptation(tiny, batch):
    z, x_fg, x_ok, _ = batch
    full = torch.ones_like(batch[3][:1])
    whole = adapt(tiny, z[:1], x_fg[:1], x_ok[:1], full, FastAdaptConfig())
    roi = adapt(tiny, z[:1], x_fg[:1], x_ok[:1], full, ROI)
    assert torch.equal(roi.images, whole.images)


def test_empty_mask_returns_the_ok_image_and_samples_are_independent(tiny, batch):
    z, x_fg, x_ok, mask = batch
    empty = mask.clone()
    empty[1] = 0
    out = adapt(tiny, z, x_fg, x_ok, empty, ROI)
    assert torch.equal(out.images[1], x_ok[1]) and out.steps[1] == 0
    alone = adapt(tiny, z[:1], x_fg[:1], x_ok[:1], mask[:1], ROI)
    assert torch.equal(out.images[0], alone.images[0])


def test_bad_roi_settings_are_named():
    with pytest.raises(ValueError, match="roi_margin=-1"):
        FastAdaptConfig(roi_margin=-1)
    with pytest.raises(ValueError, match="roi_feather=40"):
        FastAdaptConfig(roi_margin=4, roi_feather=40)
