from __future__ import annotations

import pytest
import torch

from adabldm_ref.config import SamplerConfig
from adabldm_ref.models import make_scheduler
from adabldm_ref.sampler import (
    BlendTargets,
    NoiseSource,
    SchedulerStep,
    ddim_schedule,
    renoise_index,
    sample_blended,
    stage_plan,
    stepped_scheduler,
)


def test_stage_windows_are_the_authors_at_50_steps():
    plan = stage_plan(SamplerConfig(steps=50))
    assert (plan.latent_start, plan.pixel_start) == (26, 45)
    latent = [i for i in range(50) if plan.latent_edit(i)]
    pixel = [i for i in range(50) if plan.pixel_edit(i)]
    assert latent == list(range(26, 46)) and pixel == list(range(45, 50))
    assert not any(plan.latent_edit(i) or plan.pixel_edit(i) for i in range(26))


@pytest.mark.parametrize("steps,expected", [(20, (10, 18)), (100, (52, 90)), (10, (5, 9))])
def test_stage_windows_scale_with_the_step_count(steps, expected):
    plan = stage_plan(SamplerConfig(steps=steps))
    assert (plan.latent_start, plan.pixel_start) == expected


def test_timesteps_are_981_to_1():
    s = make_scheduler()
    s.set_timesteps(50)
    assert s.timesteps[0] == 981 and s.timesteps[-1] == 1 and len(s.timesteps) == 50


def test_renoise_target():
    assert renoise_index(0, 3, "next") == 1  # step 0 re-noises to step 1's timestep
    assert renoise_index(2, 3, "next") is None  # the last x0 stays clean
    assert renoise_index(2, 3, "current") == 2  # the authors': step i's own timestep


def test_bad_sampler_settings_are_refused():
    with pytest.raises(ValueError, match="latent_start"):
        SamplerConfig(latent_start=0.95, pixel_start=0.9)
    with pytest.raises(ValueError, match="renoise"):
        SamplerConfig(renoise="previous")
    with pytest.raises(ValueError, match="steps=1"):
        SamplerConfig(steps=1)


class RecordingNoise(NoiseSource):
    def __init__(self, b):
        super().__init__([torch.Generator().manual_seed(s) for s in range(b)])
        self.draws = []

    def randn(self, *shape):
        x = super().randn(*shape)
        self.draws.append(x)
        return x


class SpyCodec:
    """A linear stand-in for the VAE (x = 2 * z, upsampled), recording its calls."""

    def __init__(self):
        self.encoded, self.decoded_x = [], []

    def decode(self, z):
        x = torch.nn.functional.interpolate(z[:, :3] * 0.5, scale_factor=8, mode="nearest")
        return x

    def encode(self, x, noise):
        self.encoded.append(x.clone())
        z = torch.nn.functional.avg_pool2d(x, 8)
        z = torch.cat([z, z[:, :1]], 1) + 0.01 * noise
        self.decoded_x.append(z)
        return z


def make_targets(b=2, h=8):
    g = torch.Generator().manual_seed(7)
    m_keep = torch.ones(b, 1, h, h)
    m_keep[:, :, 2:5, 3:7] = 0
    mask = torch.zeros(b, 1, 8 * h, 8 * h)
    mask[:, :, 20:36, 28:52] = 1
    return BlendTargets(
        z_ok=torch.randn(b, 4, h, h, generator=g), m_keep=m_keep,
        x_ok=torch.rand(b, 3, 8 * h, 8 * h, generator=g) * 2 - 1, mask=mask,
    )


def run(cfg, targets, eps_log, noise=None, codec=None):
    scheduler = make_scheduler()
    noise = noise or RecordingNoise(targets.z_ok.shape[0])
    codec = codec or SpyCodec()

    def eps_fn(z, t):
        eps_log.append((int(t), z.clone(), len(noise.draws)))
        return 0.1 * z + 0.01 * torch.sin(z * 3)

    z_t = torch.randn(targets.z_ok.shape, generator=torch.Generator().manual_seed(9))
    step = SchedulerStep(eps_fn, stepped_scheduler(scheduler, cfg.steps))
    out = sample_blended(step, z_t, ddim_schedule(scheduler, cfg.steps), cfg, targets, codec, noise)
    return out, scheduler, noise, codec


def test_latent_blend_keeps_the_noised_ok_latent_exactly_where_m_keep_is_1():
    targets, log = make_targets(), []
    cfg = SamplerConfig(steps=20)
    _, scheduler, noise, _ = run(cfg, targets, log)
    plan = stage_plan(cfg)
    keep = targets.m_keep.expand_as(targets.z_ok) == 1
    for i, (t, z_in, n_draws) in enumerate(log):
        if plan.latent_edit(i):
            expected = scheduler.add_noise(targets.z_ok, noise.draws[n_draws - 1], torch.tensor(t))
            assert torch.equal(z_in[keep], expected[keep])
            assert not torch.equal(z_in[~keep], expected[~keep])  # generated region is free
        else:
            # outside the window nothing pulls z toward the OK latent
            assert i < plan.latent_start or i > plan.pixel_start


def test_pixel_blend_keeps_x_ok_exactly_outside_the_mask():
    targets, log = make_targets(), []
    cfg = SamplerConfig(steps=20)
    _, _, _, codec = run(cfg, targets, log)
    plan = stage_plan(cfg)
    assert len(codec.encoded) == cfg.steps - plan.pixel_start  # one encode per pixel step
    outside = (targets.mask == 0).expand_as(targets.x_ok)
    for x_b in codec.encoded:
        assert torch.equal(x_b[outside], targets.x_ok[outside])
        assert not torch.equal(x_b[~outside], targets.x_ok[~outside])


def test_corrected_renoise_leaves_the_last_latent_clean_and_original_does_not():
    targets = make_targets()
    z_next, _, _, codec_next = run(SamplerConfig(steps=10, renoise="next"), targets, [])
    assert torch.equal(z_next, codec_next.decoded_x[-1])  # last blended x0, no noise
    z_cur, scheduler, noise, codec_cur = run(SamplerConfig(steps=10, renoise="current"), targets, [])
    expected = scheduler.add_noise(codec_cur.decoded_x[-1], noise.draws[-1], torch.tensor(1))
    assert torch.allclose(z_cur, expected)
    assert not torch.allclose(z_cur, codec_cur.decoded_x[-1], atol=1e-3)


def test_blend_off_ignores_the_targets():
    targets = make_targets()
    a, _, noise, codec = run(SamplerConfig(steps=8, blend=False), targets, [])
    assert noise.draws == [] and codec.encoded == []


def test_noise_source_rows_do_not_depend_on_the_batch():
    both = NoiseSource([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    alone = NoiseSource([torch.Generator().manual_seed(2)])
    for _ in range(3):
        assert torch.equal(both.randn(4, 3, 3)[1], alone.randn(4, 3, 3)[0])
