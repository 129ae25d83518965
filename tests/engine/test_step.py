"""The graph-capturable DDIM step and the DDIM schedule against the reference scheduler maths (CPU)."""
from __future__ import annotations

import pytest
import torch
from adabldm_engine.step import ddim_step

from adabldm_ref.models import make_scheduler
from adabldm_ref.sampler import ddim_schedule, renoise_index


def toy_eps(z, t):
    """A smooth stand-in for the CFG network: depends on z and t like a denoiser would."""
    return torch.tanh(z) * (t / 1000.0) + 0.1 * z.roll(1, dims=-1)


@pytest.mark.parametrize("steps", [50, 7])
def test_table_matches_scheduler_timesteps(steps):
    sched = make_scheduler()
    table = ddim_schedule(sched, steps)
    sched.set_timesteps(steps)
    assert table.timesteps.tolist() == sched.timesteps.float().tolist()
    if steps == 50:
        assert table.timesteps[0] == 981 and table.timesteps[-1] == 1
    assert table.coef.shape == (steps, 4) and table.coef.dtype == torch.float32


def test_step_equals_scheduler_step():
    sched = make_scheduler()
    table = ddim_schedule(sched, 50)
    sched.set_timesteps(50)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for i in (0, 10, 30, 49):
        t = sched.timesteps[i]
        ref = sched.step(toy_eps(z, t.float()), t, z, eta=0.0)
        z_prev, pred_x0 = ddim_step(toy_eps, z, table.timesteps[i], table.coef[i])
        torch.testing.assert_close(z_prev, ref.prev_sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(pred_x0, ref.pred_original_sample, rtol=0, atol=1e-6)


def test_schedule_does_not_mutate_the_scheduler():
    sched = make_scheduler()
    ddim_schedule(sched, 7)
    assert sched.num_inference_steps is None  # the schedule is data; the given scheduler is untouched


def test_add_noise_and_renoise_index_match_the_reference():
    sched = make_scheduler()
    table = ddim_schedule(sched, 10)
    sched.set_timesteps(10)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for i in range(10):
        for mode in ("next", "current"):
            j = renoise_index(i, 10, mode)
            if j is not None:
                t_ref = sched.timesteps[j]
                torch.testing.assert_close(table.add_noise(x0, noise, j), sched.add_noise(x0, noise, t_ref), rtol=0, atol=1e-6)
