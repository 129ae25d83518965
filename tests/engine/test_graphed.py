"""The step runner and the static-buffer loop over the blended DDIM step: eager against
the direct step and the reference sampler (CPU), CUDA-graph replay against eager (GPU)."""
from __future__ import annotations

import pytest
import torch
from adabldm_engine.graphed import StaticStepper, StepRunner
from adabldm_engine.runtime import engine_pipeline, torch_engines
from adabldm_engine.step import ddim_step

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.models import make_scheduler
from adabldm_ref.pipeline import ProceduralMasks, SchedulerStepper, plan_sample
from adabldm_ref.sampler import ddim_schedule

from .test_step import toy_eps


def test_runner_eager_equals_direct_step():
    table = ddim_schedule(make_scheduler(), 10)
    runner = StepRunner(toy_eps, table, graph=False)
    z = torch.randn(1, 4, 8, 8)
    got = [x.clone() for x in runner(3, z)]
    want = ddim_step(toy_eps, z, table.timesteps[3], table.coef[3])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_capture_needs_cuda_tensors():
    table = ddim_schedule(make_scheduler(), 4)
    with pytest.raises(ValueError, match="CUDA-graph capture needs CUDA tensors"):
        StepRunner(toy_eps, table, graph=True)(0, torch.zeros(1, 4, 8, 8))


def _pipelines(tiny, steps, renoise="next", device="cpu"):
    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=steps, renoise=renoise), adapt=AdaptConfig(iters=0))
    args = (tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg)
    ref = engine_pipeline(torch_engines(tiny, 64), *args, device=device)
    fast = engine_pipeline(torch_engines(tiny, 64), *args, device=device, static_step=True)
    return cfg, ref, fast


def test_static_loop_refuses_stochastic_ddim(tiny):
    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=4, eta=0.5), adapt=AdaptConfig(iters=0))
    with pytest.raises(ValueError, match="eta=0.5: the static-buffer step runs deterministic DDIM only"):
        engine_pipeline(torch_engines(tiny, 64), tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg, static_step=True)


@pytest.mark.parametrize("renoise", ["next", "current"])
def test_static_loop_reproduces_the_reference_sampler(tiny, small_textures, renoise):
    """All three stages (6 steps: free 0-2, latent 3-5, pixel 5), two batches through one
    cached runner: the same latents as the reference loop."""
    cfg, ref, fast = _pipelines(tiny, steps=6, renoise=renoise)
    assert isinstance(ref.stepper, SchedulerStepper) and isinstance(fast.stepper, StaticStepper)
    assert not fast.stepper.graphs  # CPU: eager step
    masks = ProceduralMasks(("blob",))
    for batch in ([0, 1], [2, 3]):
        plans = [plan_sample(i, cfg, small_textures, masks) for i in batch]
        z_ref = ref.diffuse(plans)[0]
        z_fast = fast.diffuse(plans)[0]
        torch.testing.assert_close(z_fast, z_ref, rtol=0, atol=1e-5)
    assert list(fast.stepper._runners) == [2]


@pytest.mark.gpu
def test_graph_replay_equals_eager_on_cuda(tiny, small_textures, cuda):
    import copy

    model = copy.deepcopy(tiny)
    for m in model.modules().values():
        m.to(cuda)
    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=6), adapt=AdaptConfig(iters=0))
    args = (model.tokenizer, model.vae, model.latent_scale, cfg)
    eager = engine_pipeline(torch_engines(model, 64), *args, device=cuda, graphs=False, static_step=True)
    graphed = engine_pipeline(torch_engines(model, 64), *args, device=cuda, graphs=True, static_step=True)
    plans = [plan_sample(i, cfg, small_textures, ProceduralMasks(("blob",))) for i in range(2)]
    torch.testing.assert_close(graphed.diffuse(plans)[0], eager.diffuse(plans)[0], rtol=1e-4, atol=1e-4)
    assert graphed.stepper._runners[2].graph is not None
