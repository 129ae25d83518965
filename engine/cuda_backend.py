"""The reference PyTorch modules as a fast GPU backend: FP16/BF16 weights, channels-last
memory, optionally ``torch.compile``; calls are CUDA-graph safe (no host syncs), so the
graphed step (engine/graphed.py) captures them. It is the GPU path without TensorRT and
the yardstick for it. Inputs and outputs stay FP32 as in the bundle's specs: the casts
happen inside the call.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from adabldm_core.precision import (
    FP32_FALLBACK,
    TORCH_CUDA_PRECISIONS,
    Precision,
    choose_precision,
    probe_finite,
)
from adabldm_core.specs import NetworkSpec

from adabldm_ref.models import Models
from adabldm_ref.networks import network_modules, network_specs

from .backends import Backend, BackendError


@dataclass(frozen=True)
class TorchCudaConfig:
    """How the modules run on the GPU."""

    # Weights and activations: "fp16" (tensor cores, FP32 fallback for unsafe VAEs),
    # "bf16" (FP32's range, coarser mantissa) or "fp32".
    dtype: Precision = Precision.FP16
    # NHWC activations and conv weights: what cuDNN's tensor-core convolutions want.
    channels_last: bool = True
    # torch.compile (Inductor) each module; one compile per input shape (dynamic=False).
    compile: bool = False
    # Inductor mode; the default mode leaves CUDA graphs to engine/graphed.py's capture
    # (Inductor's own "reduce-overhead" graphs would nest inside ours).
    compile_mode: str = "default"
    # Networks checked once in fp16 and run in fp32 if their outputs are non-finite.
    fp32_fallback: tuple[str, ...] = FP32_FALLBACK

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", Precision.of(self.dtype, TORCH_CUDA_PRECISIONS, "torch-cuda dtype"))
        if self.compile_mode not in ("default", "max-autotune-no-cudagraphs"):
            raise ValueError(f"compile_mode {self.compile_mode!r}: expected 'default' or 'max-autotune-no-cudagraphs'"
                             " (modes with CUDA graphs would nest inside the step's graph)")


class TorchCudaBackend(Backend):
    """A private copy of ``module`` in ``cfg.dtype`` on ``device`` (made at activation).

    Runs on any device (tests use the CPU with bf16); ``bundle_engines`` offers it for CUDA.
    """

    graph_safe = True  # plain tensor ops; compiled code is captured after its warm-up

    def __init__(self, spec: NetworkSpec, module: torch.nn.Module, cfg: TorchCudaConfig = TorchCudaConfig(),
                 device: str | torch.device = "cuda"):
        super().__init__(spec)
        self.source, self.cfg, self.device = module, cfg, torch.device(device)
        self.dtype = cfg.dtype.dtype
        self.module = None

    def _activate(self) -> None:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{self.spec.name}: device {self.device} asked for, but torch sees no CUDA GPU")
        module = copy.deepcopy(self.source).eval().requires_grad_(False)
        module = module.to(device=self.device, dtype=self.dtype)
        if self.cfg.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            module = torch.compile(module, dynamic=False, mode=self.cfg.compile_mode)
        self.module = module

    def _deactivate(self) -> None:
        self.module = None

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """Float inputs with dimensions to the backend's dtype and layout; scalars and ids as given."""
        x = x.to(self.device)
        if not x.is_floating_point() or x.dim() == 0:
            return x
        x = x.to(self.dtype)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def _infer(self, feed, batch):
        out = self.module(*(self._cast(feed[n]) for n in self.spec.input_names))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.float().contiguous() for n, o in zip(self.spec.output_names, out)}


def _safe_precision(backend: TorchCudaBackend, module, cfg: TorchCudaConfig, device) -> TorchCudaBackend:
    """FP16 backends of fallback networks are run once; non-finite outputs mean FP32."""
    name = backend.spec.name
    if cfg.dtype != "fp16" or name not in cfg.fp32_fallback:
        return backend
    decision = choose_precision(name, "fp16", probe_finite(backend, 1, device), cfg.fp32_fallback)
    if decision.precision == "fp16":
        return backend
    backend.deactivate()
    return TorchCudaBackend(backend.spec, module, dataclasses.replace(cfg, dtype="fp32"), device)


def torch_cuda_engines(models: Models, resolution: int, cfg: TorchCudaConfig = TorchCudaConfig(),
                       device: str | torch.device = "cuda") -> dict[str, Backend]:
    """Every network of ``models`` as a TorchCudaBackend (the VAE checked for FP16 safety)."""
    specs = network_specs(models, resolution)
    modules = network_modules(models)
    engines: dict[str, Backend] = {}
    for name, spec in specs.items():
        module = modules[name]()
        backend = TorchCudaBackend(spec, module, cfg, device)
        engines[name] = _safe_precision(backend, module, cfg, device)
    return engines
