"""The graph-capturable blended DDIM step against the reference scheduler maths (CPU),
and its CUDA-graph replay against eager runs (GPU)."""
from __future__ import annotations

import pytest
import torch

from adabldm_engine.graphed import GraphedEnginePipeline, StepRunner
from adabldm_engine.runtime import EnginePipeline, torch_engines
from adabldm_engine.step import ddim_blend_step, ddim_table, renoise_index
from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.models import make_scheduler
from adabldm_ref.pipeline import ProceduralMasks, plan_sample
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


def test_runner_eager_equals_direct_step():
    table = ddim_table(make_scheduler(), 10)
    z_ok, m_keep = torch.randn(1, 4, 8, 8), torch.ones(1, 1, 8, 8)
    runner = StepRunner(toy_eps, table, z_ok, m_keep, graph=False)
    z, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    got = [x.clone() for x in runner(3, z, noise)]
    want = ddim_blend_step(toy_eps, z, table.timesteps[3], table.coef[3], torch.tensor(1.0), z_ok, m_keep, noise)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_capture_needs_cuda_tensors():
    table = ddim_table(make_scheduler(), 4)
    with pytest.raises(ValueError, match="CUDA-graph capture needs CUDA tensors"):
        StepRunner(toy_eps, table, torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 8, 8), graph=True)


def _pipelines(tiny, steps, renoise="next", device="cpu"):
    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=steps, renoise=renoise), adapt=AdaptConfig(iters=0))
    args = (tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg)
    ref = EnginePipeline(torch_engines(tiny, 64), *args, device=device)
    fast = GraphedEnginePipeline(torch_engines(tiny, 64), *args, device=device)
    return cfg, ref, fast


def test_static_loop_refuses_stochastic_ddim(tiny):
    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=4, eta=0.5), adapt=AdaptConfig(iters=0))
    with pytest.raises(ValueError, match="eta=0.5: the static-buffer loop runs deterministic DDIM only"):
        GraphedEnginePipeline(torch_engines(tiny, 64), tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg)


@pytest.mark.parametrize("renoise", ["next", "current"])
def test_static_loop_reproduces_the_reference_sampler(tiny, small_textures, renoise):
    """All three stages (6 steps: free 0-2, latent 3-5, pixel 5), two batches through one
    cached runner: the same latents as the reference loop."""
    cfg, ref, fast = _pipelines(tiny, steps=6, renoise=renoise)
    assert not fast.graphs  # CPU: eager step
    masks = ProceduralMasks(("blob",))
    for batch in ([0, 1], [2, 3]):
        plans = [plan_sample(i, cfg, small_textures, masks) for i in batch]
        z_ref = ref.diffuse(plans)[0]
        z_fast = fast.diffuse(plans)[0]
        torch.testing.assert_close(z_fast, z_ref, rtol=0, atol=1e-5)
    assert list(fast._runners) == [2]


@pytest.mark.gpu
def test_graph_replay_equals_eager_on_cuda(tiny, small_textures, cuda):
    import copy

    model = copy.deepcopy(tiny)
    for m in model.modules().values():
        m.to(cuda)
    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=6), adapt=AdaptConfig(iters=0))
    args = (model.tokenizer, model.vae, model.latent_scale, cfg)
    eager = GraphedEnginePipeline(torch_engines(model, 64), *args, device=cuda, graphs=False)
    graphed = GraphedEnginePipeline(torch_engines(model, 64), *args, device=cuda, graphs=True)
    plans = [plan_sample(i, cfg, small_textures, ProceduralMasks(("blob",))) for i in range(2)]
    torch.testing.assert_close(graphed.diffuse(plans)[0], eager.diffuse(plans)[0], rtol=1e-4, atol=1e-4)
    assert graphed._runners[2].graph is not None
