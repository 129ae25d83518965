"""One interface over exported networks: ``activate / infer(feed) / deactivate``.

Names, shapes and dtypes are checked once, here at the boundary, against the network's
spec; implementations only run. Optional runtimes (onnxruntime, tensorrt) are imported
lazily so that ``--help`` and the CPU paths work without them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping

import torch
from adabldm_core.specs import NetworkSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
# torch: the reference modules; onnxruntime: the bundle's graphs (CPU, or CUDA with
# onnxruntime-gpu); torch-cuda / torch-compile: the modules in FP16 on the GPU, eager or
# compiled (engine/cuda_backend.py); tensorrt: the bundle's engines (engine/trt_backend.py);
# openvino: the bundle's graphs on OpenVINO's CPU plugin, as adabldm-native runs them.
BACKENDS = ("torch", "onnxruntime", "openvino", "torch-cuda", "torch-compile", "tensorrt")


class BackendError(ValueError):
    """A feed that does not fit the network, or a runtime that cannot be used."""


class Backend(ABC):
    """A network behind a uniform call: dict of named tensors in, dict out.

    A backend has a lifetime, as Polygraphy's runners: ``activate`` (load a session, build
    contexts) before ``infer``, ``deactivate`` after; ``with backend:`` does both."""

    graph_safe = False  # True: a call can be captured in a CUDA graph (engine/graphed.py)

    def __init__(self, spec: NetworkSpec):
        self.spec = spec
        self.active = False

    def activate(self) -> "Backend":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs by name for ``feed``; the backend must be active (``with backend:`` or activate())."""
        if not self.active:
            raise BackendError(f"{self.spec.name}: backend not active; use `with backend:` or call activate() first")
        return self._infer(feed, self.check(feed))

    def check(self, feed: Mapping[str, torch.Tensor]) -> int:
        """The sample batch of ``feed``; BackendError unless it has exactly the spec's inputs."""
        missing = [n for n in self.spec.input_names if n not in feed]
        extra = [n for n in feed if n not in self.spec.input_names]
        if missing or extra:
            raise BackendError(f"{self.spec.name}: missing inputs {missing}, unexpected {extra}")
        batch = self.spec.sample_batch(feed)
        for t in self.spec.inputs:
            x = feed[t.name]
            if x.dtype != DTYPES[t.dtype]:
                raise BackendError(f"{self.spec.name}.{t.name}: dtype {x.dtype}, expected {t.dtype}")
            expected = t.concrete(batch or 1)
            if tuple(x.shape) != expected:
                raise BackendError(
                    f"{self.spec.name}.{t.name}: shape {tuple(x.shape)}, expected {expected}"
                    f" (spec {t.shape})"
                )
        return batch or 1

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    @abstractmethod
    def _infer(self, feed: Mapping[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]: ...


class TorchBackend(Backend):
    """The reference module itself (eager PyTorch)."""

    def __init__(self, spec: NetworkSpec, module: torch.nn.Module):
        super().__init__(spec)
        self.module = module.eval()

    @torch.no_grad()
    def _infer(self, feed, batch):
        out = self.module(*(feed[n] for n in self.spec.input_names))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.spec.output_names, out))


def ort_session_options(threads: int | None = None):
    """ONNX Runtime options tuned for this workload (full graph optimisation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return opts


def ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendError(
                f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); available: {available}"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtBackend(Backend):
    """ONNX Runtime over an exported graph, torch tensors bound in place (I/O binding).

    Inputs are bound by pointer, outputs go into torch buffers allocated once per shape on
    the feed's device, so on the CUDA execution provider tensors never leave the GPU.
    Returned tensors are those buffers: copy what must outlive the next call.
    """

    def __init__(self, spec: NetworkSpec, path: str | Path, device: str = "cpu", threads: int | None = None):
        super().__init__(spec)
        self.path, self.device, self.threads = Path(path), device, threads
        self.session = None
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}

    def _activate(self):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError("the onnxruntime backend needs `pip install onnxruntime`") from exc
        self.session = ort.InferenceSession(
            str(self.path), ort_session_options(self.threads), providers=ort_providers(self.device)
        )
        got = [i.name for i in self.session.get_inputs()]
        if got != self.spec.input_names:
            raise BackendError(f"{self.path}: graph inputs {got}, expected {self.spec.input_names}")

    def _deactivate(self):
        self.session = None
        self._buffers.clear()

    def _outputs(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        key = (batch, str(device))
        if key not in self._buffers:
            self._buffers[key] = {
                t.name: torch.empty(t.concrete(batch), dtype=DTYPES[t.dtype], device=device)
                for t in self.spec.outputs
            }
        return self._buffers[key]

    def _infer(self, feed, batch):
        binding = self.session.io_binding()
        inputs = [feed[t.name].contiguous() for t in self.spec.inputs]  # alive until run
        for t, x in zip(self.spec.inputs, inputs):
            _bind(binding.bind_input, t.name, x)
        outputs = self._outputs(batch, inputs[0].device)
        for name, buf in outputs.items():
            _bind(binding.bind_output, name, buf)
        if inputs[0].is_cuda:  # ORT's CUDA stream is not torch's: inputs must be written first
            torch.cuda.current_stream(inputs[0].device).synchronize()
        self.session.run_with_iobinding(binding)
        return dict(outputs)


def _bind(bind, name: str, x: torch.Tensor) -> None:
    import numpy as np

    np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[x.dtype]
    device = "cuda" if x.is_cuda else "cpu"
    index = (x.device.index or 0) if x.is_cuda else 0
    bind(name, device, index, np_dtype, list(x.shape), x.data_ptr())


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin over an exported graph (``pip install 'adabldm[native]'``).

    The same settings as adabldm-native's OpenVINO network (native/src/openvino_network.cpp):
    FP32 inference forced (the plugin would run bf16 on CPUs that have it), the latency hint,
    and the graph reshaped to the static shapes of the feed, one compiled model per batch,
    so that the Python runtime and the native runner run the same kernels."""

    def __init__(self, spec: NetworkSpec, path: str | Path, device: str = "cpu", threads: int | None = None):
        super().__init__(spec)
        if torch.device(device).type != "cpu":
            raise BackendError(f"the openvino backend runs on the CPU, not {device!r}")
        self.path, self.threads = Path(path), threads
        self.core = self.model = None
        self._requests: dict[int, object] = {}

    def _activate(self):
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError("the openvino backend needs `pip install 'adabldm[native]'` (the openvino wheel)") from exc
        self.core = ov.Core()
        self.model = self.core.read_model(str(self.path))
        got = [p.get_any_name() for p in self.model.inputs]
        if got != self.spec.input_names:
            raise BackendError(f"{self.path}: graph inputs {got}, expected {self.spec.input_names}")

    def _deactivate(self):
        self.core = self.model = None
        self._requests.clear()

    def _request(self, batch: int):
        """The infer request of the graph compiled at this batch (symbolic dims bound)."""
        if batch not in self._requests:
            import openvino as ov

            model = self.model.clone()
            model.reshape({t.name: ov.PartialShape(list(t.concrete(batch))) for t in self.spec.inputs})
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = int(self.threads)
            self._requests[batch] = self.core.compile_model(model, "CPU", config).create_infer_request()
        return self._requests[batch]

    def _infer(self, feed, batch):
        request = self._request(batch)
        request.infer({t.name: feed[t.name].detach().contiguous().numpy() for t in self.spec.inputs})
        return {t.name: torch.from_numpy(request.get_tensor(t.name).data.copy()) for t in self.spec.outputs}


def activated(engines: Mapping[str, Backend]) -> dict[str, Backend]:
    """``engines`` with every backend activated (the caller deactivates them, or hands them
    to a pipeline, which does)."""
    return {name: engine.activate() for name, engine in engines.items()}
