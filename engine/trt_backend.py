"""TensorRT engines behind the Backend interface (``tensorrt`` imported lazily).

Per engine and batch size, one execution context whose inputs and outputs are torch
tensors on the GPU, bound once (``set_tensor_address``); a call copies the feed into the
bound inputs (nothing when the feed already is those tensors) and enqueues the engine with
``execute_async_v3`` on PyTorch's current stream, so TensorRT and torch ops stay ordered
without synchronising, and the call can be captured in a CUDA graph. On the legacy default
stream (handle 0), where TensorRT would synchronise the device on every call, it enqueues
on a stream of its own, ordered after and before the current one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .backends import DTYPES, Backend, BackendError
from .trt_cache import (
    EngineCache,
    EngineProfile,
    StaleEngineError,
    TrtUnavailableError,
    current_environment,
    trt_logger,
)


@dataclass(frozen=True)
class EngineFile:
    """A serialized engine and the batches its profile serves."""

    path: Path
    profile: EngineProfile
    sha256: str | None = None  # checked when the plan is loaded (None: not checked)
    # The plan itself, when it is in memory (a fresh build being checked): not read from path.
    plan: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class _Bound:
    context: object  # tensorrt.IExecutionContext
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError("the tensorrt backend needs the tensorrt package (pip install 'adabldm[gpu]')") from exc
    return trt


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise BackendError(f"TensorRT tensor type {dtype} has no torch equivalent here")
    return table[dtype]


class TrtBackend(Backend):
    """One network as TensorRT engine(s): static ones per batch, or dynamic profiles.

    Returned tensors are the bound output buffers: copy what must outlive the next call.
    """

    graph_safe = True  # a call is copies + one enqueue on the current stream

    def __init__(self, spec, files: Sequence[EngineFile], device: str | torch.device = "cuda"):
        super().__init__(spec)
        if not files:
            raise BackendError(f"{spec.name}: no TensorRT engine files given")
        self.files, self.device = list(files), torch.device(device)
        self._runtime = None
        self._stream: torch.cuda.Stream | None = None
        self._engines: dict[Path, object] = {}
        self._bound: dict[int, _Bound] = {}

    def _activate(self) -> None:
        trt = _tensorrt()
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError(f"{self.spec.name}: TensorRT runs on a CUDA device, not {self.device}")
        with torch.cuda.device(self.device):  # TensorRT works on the current device
            self._runtime = trt.Runtime(trt_logger(trt))
            self._stream = torch.cuda.Stream(self.device)

    def _deactivate(self) -> None:
        self._bound.clear()  # contexts before their engines
        self._engines.clear()
        self._runtime = self._stream = None

    def _engine(self, file: EngineFile):
        if file.path not in self._engines:
            data = file.plan if file.plan is not None else file.path.read_bytes()
            if file.sha256 is not None and hashlib.sha256(data).hexdigest() != file.sha256:
                raise StaleEngineError(f"{file.path} changed since it was built (sha256 differs from its record);"
                                       " rebuild: adabldm-export --trt --force --out BUNDLE")
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise StaleEngineError(f"TensorRT could not load {file.path} (another TensorRT version or GPU?);"
                                       " rebuild: adabldm-export --trt --force --out BUNDLE")
            self._check_io(engine, file.path)
            self._engines[file.path] = engine
        return self._engines[file.path]

    def _check_io(self, engine, path: Path) -> None:
        trt = _tensorrt()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = sorted(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = sorted(n for n in names if n not in inputs)
        if inputs != sorted(self.spec.input_names) or outputs != sorted(self.spec.output_names):
            raise BackendError(f"{path}: engine inputs {inputs} / outputs {outputs}, expected"
                               f" {sorted(self.spec.input_names)} / {sorted(self.spec.output_names)}")

    def _file_for(self, batch: int) -> EngineFile:
        static = [f for f in self.files if f.profile.static and f.profile.covers(batch)]
        dynamic = sorted((f for f in self.files if f.profile.covers(batch)), key=lambda f: f.profile.hi - f.profile.lo)
        if static or dynamic:
            return (static or dynamic)[0]
        served = ", ".join(f"{f.profile.lo}" if f.profile.static else f"{f.profile.lo}-{f.profile.hi}" for f in self.files)
        raise BackendError(f"{self.spec.name}: no TensorRT engine for batch {batch} (engines serve batch {served});"
                           " build one: adabldm-export --trt --batch ... or --trt-dynamic")

    def _bind(self, batch: int) -> _Bound:
        """Context and I/O buffers for ``batch``, made and bound on first use."""
        if batch in self._bound:
            return self._bound[batch]
        trt = _tensorrt()
        engine = self._engine(self._file_for(batch))
        bound = _Bound(engine.create_execution_context())
        for t in (*self.spec.inputs, *self.spec.outputs):
            shape, dtype = t.concrete(batch), _torch_dtype(trt, engine.get_tensor_dtype(t.name))
            if dtype != DTYPES[t.dtype]:
                raise BackendError(f"{self.spec.name}.{t.name}: engine type {dtype}, the bundle says {t.dtype}")
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            is_input = engine.get_tensor_mode(t.name) == trt.TensorIOMode.INPUT
            if is_input and -1 in tuple(engine.get_tensor_shape(t.name)):
                bound.context.set_input_shape(t.name, shape)
            bound.context.set_tensor_address(t.name, buf.data_ptr())
            (bound.inputs if is_input else bound.outputs)[t.name] = buf
        self._bound[batch] = bound
        return bound

    def _infer(self, feed, batch):
        with torch.cuda.device(self.device):
            bound = self._bind(batch)
            for name, buf in bound.inputs.items():
                x = feed[name]
                if x.data_ptr() != buf.data_ptr():
                    buf.copy_(x)
            current = torch.cuda.current_stream(self.device)
            if current.cuda_stream != 0:  # a stream of its own, e.g. one capturing a CUDA graph
                ok = bound.context.execute_async_v3(current.cuda_stream)
            else:  # the legacy default stream: TensorRT would synchronise the device
                self._stream.wait_stream(current)
                ok = bound.context.execute_async_v3(self._stream.cuda_stream)
                current.wait_stream(self._stream)
        if not ok:
            raise BackendError(f"{self.spec.name}: TensorRT execution failed (batch {batch})")
        return dict(bound.outputs)


def trt_engines(bundle, device: str = "cuda") -> dict[str, TrtBackend]:
    """A TrtBackend per network of ``bundle`` from the engines that fit this machine;
    StaleEngineError (naming the mismatch and the rebuild command) where none does."""
    try:
        env = current_environment(device)
    except TrtUnavailableError as exc:
        raise BackendError(str(exc)) from exc
    cache = EngineCache(bundle.root)
    redo = f"build them here: adabldm-export --trt --out {bundle.root}"
    engines = {}
    for name, entry in bundle.manifest["networks"].items():
        records = cache.usable(name, env, entry["sha256"], redo)
        files = [EngineFile(cache.plan_path(name, r["key"]), EngineProfile.from_dict(r["profile"]), r.get("plan_sha256"))
                 for r in records]
        engines[name] = TrtBackend(bundle.spec(name), files, device)
    return engines
