"""Fast decoder adaptation (adabldm_engine.adaptation) against the reference loop.

Inputs are real blended latents of the tiny model (10 DDIM steps); every adaptation runs
only a few AdamW steps so the file stays well under a minute on a CPU.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from adabldm_engine.adaptation import (
    FastAdaptConfig,
    adapt_batch,
    decoder_stage_names,
    per_sample_loss,
    split_decoder,
    stack_params,
    tail_forward,
)

from adabldm_ref.adaptation import adapt_decoder
from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.pipeline import ProceduralMasks, plan_sample, reference_pipeline

ITERS = 3
B = 3


@pytest.fixture(scope="module")
def batch(tiny, textures):
    """(z*, x_fg, x_ok, mask) of B samples: (B, 4, 32, 32), (B, 3, 256, 256) x2, (B, 1, 256, 256)."""
    cfg = GenerationConfig(sampler=SamplerConfig(steps=10), adapt=AdaptConfig(iters=0))
    pipe = reference_pipeline(tiny, cfg)
    plans = [plan_sample(i, cfg, textures, ProceduralMasks()) for i in range(B)]
    z, x_ok, mask = pipe.diffuse(plans)
    with torch.no_grad():
        x_fg = pipe.codec.decode(z)
    return z, x_fg, x_ok, mask


@pytest.fixture(scope="module")
def reference_first(tiny, batch):
    """The reference configuration on the first sample."""
    return run(tiny, batch, FastAdaptConfig.reference(), rows=slice(0, 1))


def run(tiny, batch, fast: FastAdaptConfig, iters: int = ITERS, rows=slice(None)):
    z, x_fg, x_ok, mask = (t[rows] for t in batch)
    return adapt_batch(tiny.vae, z, x_fg, x_ok, mask, AdaptConfig(iters=iters), fast, tiny.latent_scale)


def test_reference_config_reproduces_adapt_decoder(tiny, batch):
    ours = run(tiny, batch, FastAdaptConfig.reference())
    for b in range(B):
        z, x_fg, x_ok, mask = (t[b : b + 1] for t in batch)
        ref = adapt_decoder(tiny.vae, z, x_fg, x_ok, mask, AdaptConfig(iters=ITERS), tiny.latent_scale)
        torch.testing.assert_close(ours.images[b : b + 1], ref.image, rtol=0, atol=1e-6)
        assert ours.loss_first[b].item() == pytest.approx(ref.loss_first, rel=1e-6)
        assert ours.loss_final[b].item() == pytest.approx(ref.loss_final, rel=1e-6)
    assert ours.steps.tolist() == [ITERS] * B


def test_reference_values_of_every_option():
    """Each field of reference() is the value that switches its shortcut off."""
    ref = FastAdaptConfig.reference()
    assert (ref.trainable, ref.cache_frozen, ref.iters, ref.lr) == ("all", False, None, None)
    assert (ref.early_stop_tol, ref.batching, ref.precision, ref.channels_last) == (0.0, "loop", "fp32", False)
    assert ref.roi is False  # roi_margin and roi_feather only act with roi
    assert {f.name for f in dataclasses.fields(FastAdaptConfig)} == {
        "trainable", "cache_frozen", "iters", "lr", "early_stop_tol", "patience", "batching", "precision",
        "channels_last", "roi", "roi_margin", "roi_feather",
    }


@pytest.mark.parametrize(
    "change, exact",
    [
        (dict(batching="vmap"), True),
        (dict(cache_frozen=True), True),  # with trainable="all" there is nothing to cache
        (dict(trainable="up_blocks.3"), False),
        (dict(iters=ITERS - 1), False),
        (dict(lr=1e-3), False),
        (dict(early_stop_tol=0.9, patience=1), False),
        (dict(precision="bf16"), False),
        (dict(channels_last=True), True),  # another layout: fp32 rounding only
    ],
)
def test_each_option_alone(tiny, batch, reference_first, change, exact):
    """Starting from the reference, one option at a time: exact ones keep the result."""
    ours = run(tiny, batch, FastAdaptConfig.reference().replace(**change), rows=slice(0, 1))
    err = (ours.images - reference_first.images).abs().max().item()
    assert (err < 2e-3) == exact, err


@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_equals_one_at_a_time(tiny, batch, channels_last):
    fast = FastAdaptConfig(trainable="up_blocks.3", iters=ITERS, lr=4e-4, batching="vmap", channels_last=channels_last)
    together = run(tiny, batch, fast)
    for b in range(B):
        alone = run(tiny, batch, fast, rows=slice(b, b + 1))
        torch.testing.assert_close(together.images[b : b + 1], alone.images, rtol=0, atol=2e-4)
        torch.testing.assert_close(together.loss_final[b : b + 1], alone.loss_final, rtol=1e-5, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_early_stop_equals_one_at_a_time(tiny, batch, channels_last):
    """Samples stopping at different steps leave the batch without changing the others."""
    fast = FastAdaptConfig(trainable="up_blocks.3", iters=6, lr=1e-3, early_stop_tol=0.15, patience=1,
                           channels_last=channels_last)
    together = run(tiny, batch, fast, iters=6)
    assert together.steps.min() < 6, together.steps  # some sample did stop early
    for b in range(B):
        alone = run(tiny, batch, fast, iters=6, rows=slice(b, b + 1))
        assert alone.steps.item() == together.steps[b].item()
        torch.testing.assert_close(together.images[b : b + 1], alone.images, rtol=0, atol=2e-4)


@pytest.mark.parametrize("trainable", ["up_blocks.3", "up_blocks.2.upsamplers.0", "conv_norm_out"])
def test_cached_head_gives_the_plain_gradients(tiny, batch, trainable):
    """Grads of the tail with the frozen head cached == grads through the whole decoder."""
    z, x_fg, x_ok, mask = batch
    vae = tiny.vae
    head, tail = split_decoder(vae.decoder, trainable)
    params = stack_params(tail, B)
    with torch.no_grad():
        feats = head(vae.post_quant_conv(z / tiny.latent_scale))
    x = tail_forward(tail, params, feats, "loop")
    cached = torch.autograd.grad(per_sample_loss(x, x_fg, x_ok, mask, 100.0).sum(), list(params.values()))

    decoder = copy.deepcopy(vae.decoder).requires_grad_(True)
    named = dict(decoder.named_parameters())
    for b in range(B):
        x = decoder(vae.post_quant_conv(z[b : b + 1] / tiny.latent_scale))
        loss = per_sample_loss(x, x_fg[b : b + 1], x_ok[b : b + 1], mask[b : b + 1], 100.0).sum()
        plain = torch.autograd.grad(loss, [named[decoder_name(tail, k)] for k in params])
        for g_cached, g_plain in zip(cached, plain):
            scale = g_plain.abs().max().item() + 1e-12
            assert (g_cached[b] - g_plain).abs().max().item() <= 1e-4 * scale


def test_channels_last_gives_each_sample_a_channels_last_decoder(tiny):
    _, tail = split_decoder(tiny.vae.decoder, "up_blocks.3")
    params = stack_params(tail, B, channels_last=True)
    plain = stack_params(tail, B)
    for k, v in params.items():
        assert torch.equal(v, plain[k]) and v.requires_grad and v.is_leaf
        if v.dim() == 5:
            assert all(v[b].is_contiguous(memory_format=torch.channels_last) for b in range(B)), k
    h = torch.randn(B, tail.stages[0].conv1.in_channels, 32, 32).contiguous(memory_format=torch.channels_last)
    x = tail_forward(tail, params, h, "loop")
    assert x.is_contiguous(memory_format=torch.channels_last)


def decoder_name(tail, name: str) -> str:
    """'stages.4.conv1.weight' of a DecoderPart -> 'up_blocks.3.resnets.0.conv1.weight'."""
    _, k, rest = name.split(".", 2)
    return f"{tail.names[int(k)]}.{rest}"


def test_split_composes_to_the_decoder(tiny):
    h = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tiny.vae.decoder(h)
        for trainable in ["all", "mid_block", "up_blocks.1", "up_blocks.3.resnets.1", "conv_out"]:
            head, tail = split_decoder(tiny.vae.decoder, trainable)
            assert torch.equal(tail(head(h)), expected), trainable


def test_fast_default_loss_falls(tiny, batch):
    fast = FastAdaptConfig()
    out = run(tiny, batch, fast.replace(iters=min(5, fast.iters or 5)), iters=200)
    assert (out.loss_final < out.loss_first).all(), (out.loss_first, out.loss_final)
    assert out.images.shape == batch[2].shape and out.images.dtype == torch.float32


def test_bad_inputs_are_named(tiny, batch):
    z, x_fg, x_ok, mask = batch
    with pytest.raises(ValueError, match="trainable='up_blocks.9'.*conv_in"):
        adapt_batch(tiny.vae, z, x_fg, x_ok, mask, AdaptConfig(iters=1), FastAdaptConfig(trainable="up_blocks.9"), 1.0)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 256, 256\)"):
        adapt_batch(tiny.vae, z, x_fg, x_ok, mask[:2], AdaptConfig(iters=1), FastAdaptConfig(), 1.0)
    with pytest.raises(ValueError, match="batching='grouped'"):
        FastAdaptConfig(batching="grouped")
    with pytest.raises(ValueError, match="early_stop_tol=1.5"):
        FastAdaptConfig(early_stop_tol=1.5)
    assert decoder_stage_names(tiny.vae.decoder)[:2] == ["conv_in", "mid_block"]
