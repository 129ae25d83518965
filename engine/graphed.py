"""The static-buffer denoising step, replayed from one CUDA graph when it can be.

A :class:`StepRunner` owns the step's inputs (latent, timestep, coefficients) as fixed
tensors. Eagerly, a call runs :func:`ddim_step` on them; with ``graph=True`` the step
(engine call(s), CFG combine, DDIM update) is captured once in a ``torch.cuda.CUDAGraph``
and every later call is a replay, so a 50-step sample costs 50 graph launches instead of
thousands of kernel launches. Capture follows PyTorch's documented recipe: warm-up on a
side stream, then capture. The blends run in the one loop around the step
(:func:`adabldm_ref.sampler.sample_blended`): a few element-wise ops on the latent.
"""
from __future__ import annotations

from typing import Protocol

import torch

from adabldm_ref.sampler import DdimSchedule

from .step import ddim_step

WARMUP_STEPS = 2  # eager runs before capture: lazy inits, cuDNN/TensorRT first-call work


class HintedEps(Protocol):
    """An eps function whose constant inputs stay at fixed addresses (EngineCFG)."""

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def set_hint(self, hint: torch.Tensor) -> None:
        """Write another batch's trimaps into the constant hint buffer, in place."""


class StepRunner:
    """Step i of DDIM on static buffers, eager or as a CUDA-graph replay.

    The buffers are allocated (and the graph captured) at the first call, from that
    latent's shape. Outputs are the runner's own buffers, valid until the next call.
    """

    def __init__(self, eps_fn: HintedEps, schedule: DdimSchedule, graph: bool = False):
        self.eps_fn, self.schedule, self.use_graph = eps_fn, schedule, graph
        self.z: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None

    def _allocate(self, z: torch.Tensor) -> None:
        self.z = torch.zeros_like(z)
        self.t = torch.zeros((), device=z.device)
        self.coef = self.schedule.coef[0].clone()
        if self.use_graph:
            self._capture()

    def _run(self) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_step(self.eps_fn, self.z, self.t, self.coef)

    def _set(self, i: int, z: torch.Tensor) -> None:
        self.z.copy_(z)
        self.t.copy_(self.schedule.timesteps[i])
        self.coef.copy_(self.schedule.coef[i])

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
    def __call__(self, i: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_prev, pred_x0) of step i from latent z."""
        if self.z is None:
            self._allocate(z)
        self._set(i, z)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self._out


class StaticStepper:
    """Steps on static buffers, one runner (and graph) kept per batch size.

    ``graphs`` captures each runner's step in a CUDA graph (CUDA devices, graph-safe
    backends only); a later batch of the same size is written into the runner's hint
    buffer, which the captured graph reads. Deterministic DDIM only (eta 0).
    """

    def __init__(self, schedule: DdimSchedule, graphs: bool = False):
        self.schedule, self.graphs = schedule, graphs
        self._runners: dict[int, StepRunner] = {}

    def step_for(self, denoiser, hint: torch.Tensor) -> StepRunner:
        b = hint.shape[0]
        runner = self._runners.get(b)
        if runner is None:
            runner = self._runners[b] = StepRunner(denoiser.eps_fn(hint), self.schedule, self.graphs)
        else:
            runner.eps_fn.set_hint(hint)  # in place: a captured graph reads that buffer
        return runner
