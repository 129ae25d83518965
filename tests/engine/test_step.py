"""The graph-capturable blended DDIM step against the reference scheduler maths (CPU)."""
from __future__ import annotations

import pytest
import torch
from adabldm_engine.step import ddim_blend_step, ddim_table, renoise_index

from adabldm_ref.models import make_scheduler
from adabldm_ref.sampler import renoise_timestep


def toy_eps(z, t):
    """A smooth stand-in for the CFG network: depends on z and t like a denoiser would."""
    return torch.tanh(z) * (t / 1000.0) + 0.1 * z.roll(1, dims=-1)


@pytest.mark.parametrize("steps", [50, 7])
def test_table_matches_scheduler_timesteps(steps):
    sched = make_scheduler()
    table = ddim_table(sched, steps)
    assert table.timesteps.tolist() == sched.timesteps.float().tolist()
    if steps == 50:
        assert table.timesteps[0] == 981 and table.timesteps[-1] == 1
    assert table.coef.shape == (steps, 4) and table.coef.dtype == torch.float32


@pytest.mark.parametrize("blend", [0.0, 1.0])
def test_step_equals_scheduler_step_and_blend(blend):
    sched = make_scheduler()
    table = ddim_table(sched, 50)
    g = torch.Generator().manual_seed(0)
    z, z_ok, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    m_keep = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    for i in (0, 10, 30, 49):
        t = sched.timesteps[i]
        z_in = z
        if blend:
            z_in = sched.add_noise(z_ok, noise, t) * m_keep + z * (1 - m_keep)
        ref = sched.step(toy_eps(z_in, t.float()), t, z_in, eta=0.0)
        z_prev, pred_x0 = ddim_blend_step(
            toy_eps, z, table.timesteps[i], table.coef[i], torch.tensor(blend), z_ok, m_keep, noise
        )
        torch.testing.assert_close(z_prev, ref.prev_sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(pred_x0, ref.pred_original_sample, rtol=0, atol=1e-6)


def test_add_noise_and_renoise_index_match_the_reference():
    sched = make_scheduler()
    table = ddim_table(sched, 10)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for i in range(10):
        for mode in ("next", "current"):
            t_ref = renoise_timestep(sched.timesteps, i, mode)
            j = renoise_index(i, 10, mode)
            assert (t_ref is None) == (j is None)
            if j is not None:
                torch.testing.assert_close(table.add_noise(x0, noise, j), sched.add_noise(x0, noise, t_ref), rtol=0, atol=1e-6)
