from __future__ import annotations

import numpy as np
import pytest
import torch
from adabldm_core.metrics import masked_psnr

from adabldm_ref.adaptation import adapt_decoder, adaptation_loss
from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.pipeline import (
    ProceduralMasks,
    plan_sample,
    reference_pipeline,
    to_uint8,
)


def test_adaptation_loss_is_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    x, fg, ok = (torch.randn(1, 3, 8, 8, generator=g) for _ in range(3))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    expected = ((x - fg) ** 2 * mask).mean() + 100 * ((x - ok) ** 2 * (1 - mask)).mean()
    assert torch.allclose(adaptation_loss(x, fg, ok, mask, 100.0), expected)


@pytest.fixture(scope="module")
def blended(tiny, textures):
    cfg = GenerationConfig(sampler=SamplerConfig(steps=6), adapt=AdaptConfig(iters=0))
    pipe = reference_pipeline(tiny, cfg)
    plan = plan_sample(0, cfg, textures, ProceduralMasks(("blob",)))
    z, x_ok, mask = pipe.diffuse([plan])
    with torch.no_grad():
        x_fg = pipe.codec.decode(z)
    return plan, z, x_fg, x_ok, mask


def test_adaptation_lowers_the_loss_and_raises_background_psnr(tiny, blended):
    plan, z, x_fg, x_ok, mask = blended
    before = {k: v.clone() for k, v in tiny.vae.state_dict().items()}
    result = adapt_decoder(tiny.vae, z, x_fg, x_ok, mask, AdaptConfig(iters=15), tiny.latent_scale)
    assert result.loss_final < 0.7 * result.loss_first
    keep = ~plan.mask
    psnr_before = masked_psnr(to_uint8(x_fg), plan.rgb, keep)
    psnr_after = masked_psnr(to_uint8(result.image), plan.rgb, keep)
    assert psnr_after > psnr_before + 1.0
    # the model's own decoder is untouched (every sample adapts its own copy)
    after = tiny.vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in tiny.vae.parameters())


def test_zero_iterations_return_the_original_decoding(tiny, blended):
    _, z, x_fg, x_ok, mask = blended
    result = adapt_decoder(tiny.vae, z, x_fg, x_ok, mask, AdaptConfig(iters=0), tiny.latent_scale)
    assert torch.allclose(result.image, x_fg, atol=1e-5)
    assert result.loss_first == pytest.approx(result.loss_final)


def test_adaptation_is_deterministic(tiny, blended):
    _, z, x_fg, x_ok, mask = blended
    cfg = AdaptConfig(iters=3)
    a = adapt_decoder(tiny.vae, z, x_fg, x_ok, mask, cfg, tiny.latent_scale).image
    b = adapt_decoder(tiny.vae, z, x_fg, x_ok, mask, cfg, tiny.latent_scale).image
    assert torch.equal(a, b)


def test_adaptation_takes_one_sample(tiny, blended):
    _, z, x_fg, x_ok, mask = blended
    with pytest.raises(ValueError, match="one sample"):
        adapt_decoder(tiny.vae, z.repeat(2, 1, 1, 1), x_fg, x_ok, mask, AdaptConfig(iters=1), 0.18215)


def test_masked_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 10
    region = np.ones((4, 4), bool)
    assert masked_psnr(a, b, region) == pytest.approx(10 * np.log10(255**2 / (300 / 48)))
    region[0, 0] = False
    assert masked_psnr(a, b, region) == float("inf")
    assert np.isnan(masked_psnr(a, b, np.zeros((4, 4), bool)))
