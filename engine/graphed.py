"""The denoising step on static buffers, replayed from one CUDA graph when it can be.

A :class:`StepRunner` owns the step's inputs (latent, timestep, coefficients, blend
targets, noise) as fixed tensors. Eagerly, a call runs :func:`ddim_blend_step` on them;
with ``graph=True`` the whole step (engine call(s), CFG combine, DDIM update, latent
blend) is captured once in a ``torch.cuda.CUDAGraph`` and every later call is a replay,
so a 50-step sample costs 50 graph launches instead of thousands of kernel launches.
Capture follows PyTorch's documented recipe: warm-up on a side stream, then capture.
"""
from __future__ import annotations

from typing import Sequence

import torch

from adabldm_ref.pipeline import SamplePlan
from adabldm_ref.sampler import BlendTargets

from .runtime import EnginePipeline
from .step import DdimTable, EpsFn, ddim_blend_step, ddim_table, sample_blended_static

WARMUP_STEPS = 2  # eager runs before capture: lazy inits, cuDNN/TensorRT first-call work


class StepRunner:
    """Step i of the blended DDIM loop on static buffers, eager or as a CUDA-graph replay.

    ``eps_fn`` must read only tensors that stay at fixed addresses (an :class:`EngineCFG`
    does: its constant feed is built once). Outputs are the runner's own buffers, valid
    until the next call.
    """

    def __init__(self, eps_fn: EpsFn, table: DdimTable, z_ok: torch.Tensor, m_keep: torch.Tensor, graph: bool = False):
        self.eps_fn, self.table = eps_fn, table
        dev = z_ok.device
        self.z = torch.zeros_like(z_ok)
        self.noise = torch.zeros_like(z_ok)
        self.z_ok, self.m_keep = z_ok.clone(), m_keep.clone()
        self.t = torch.zeros((), device=dev)
        self.coef = table.coef[0].clone()
        self.blend = torch.zeros((), device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None
        if graph:
            self._capture()

    def load(self, z_ok: torch.Tensor, m_keep: torch.Tensor) -> None:
        """New blend targets for the next batch (same shapes)."""
        self.z_ok.copy_(z_ok)
        self.m_keep.copy_(m_keep)

    def _run(self) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_blend_step(self.eps_fn, self.z, self.t, self.coef, self.blend, self.z_ok, self.m_keep, self.noise)

    def _set(self, i: int, z: torch.Tensor, noise: torch.Tensor | None) -> None:
        self.z.copy_(z)
        self.t.copy_(self.table.timesteps[i])
        self.coef.copy_(self.table.coef[i])
        self.blend.fill_(0.0 if noise is None else 1.0)
        if noise is not None:
            self.noise.copy_(noise)

    @torch.no_grad()
    def _capture(self) -> None:
        if not self.z.is_cuda:
            raise ValueError(f"CUDA-graph capture needs CUDA tensors, the step's are on {self.z.device}")
        side = torch.cuda.Stream(self.z.device)
        side.wait_stream(torch.cuda.current_stream(self.z.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._run()
        torch.cuda.current_stream(self.z.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = self._run()

    @torch.no_grad()
    def __call__(self, i: int, z: torch.Tensor, noise: torch.Tensor | None = None):
        """(z_prev, pred_x0) of step i from latent z; ``noise`` given = latent-blend step."""
        self._set(i, z, noise)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self._out


class GraphedEnginePipeline(EnginePipeline):
    """:class:`EnginePipeline` whose denoising loop runs on a :class:`StepRunner`.

    Same plans, noise order and outputs as the reference loop. ``graphs=None`` captures
    the step in a CUDA graph when the device is CUDA and the UNet+ControlNet backend says
    it is graph safe (TensorRT, compiled/eager PyTorch CUDA); one runner (and graph) is
    kept per batch size and reloaded with each batch's targets.
    """

    def __init__(self, *args, graphs: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.sampler.eta != 0:  # ddim_blend_step has no stochastic term
            raise ValueError(f"sampler eta={self.cfg.sampler.eta}: the static-buffer loop runs"
                             " deterministic DDIM only (eta 0); use EnginePipeline for eta > 0")
        if graphs is None:
            graphs = self.device.type == "cuda" and self.unet_control.graph_safe
        self.graphs = graphs
        self.table = ddim_table(self.scheduler, self.cfg.sampler.steps, self.device)
        self._runners: dict[int, StepRunner] = {}

    def _step_runner(self, hint: torch.Tensor, targets: BlendTargets) -> StepRunner:
        b = hint.shape[0]
        runner = self._runners.get(b)
        if runner is None:
            eps = self._denoiser(hint)
            runner = self._runners[b] = StepRunner(eps, self.table, targets.z_ok, targets.m_keep, self.graphs)
        else:
            runner.eps_fn.set_hint(hint)  # in place: a captured graph reads that buffer
            runner.load(targets.z_ok, targets.m_keep)
        return runner

    @torch.no_grad()
    def diffuse(self, plans: Sequence[SamplePlan], callback=None):
        """Stages 1-3 for a batch: (z*, x_ok, mask); inputs prepared as AdaBLDM.diffuse."""
        noise, z_t, targets, hint = self._batch_inputs(plans)
        runner = self._step_runner(hint, targets)
        z = sample_blended_static(runner, z_t, self.table, self.cfg.sampler, targets, self.codec, noise, callback)
        return z, targets.x_ok, targets.mask
