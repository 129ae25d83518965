"""Reduced precision for GPU engines: the FP32-fallback decision and FP16 ONNX graphs.

TensorRT 10 builds FP16 engines from *strongly typed* networks (TensorRT 11 accepts
nothing else): the ONNX graph itself carries FP16 weights and ops, with FP32 inputs and
outputs kept so that the bundle's specs and the runtime stay the same. The SD VAE is the
network known to overflow in FP16; a network in ``FP32_FALLBACK`` whose FP16 engine gives
non-finite (or near-overflow) values is rebuilt in FP32, any other is refused.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from .io import save_graph

if TYPE_CHECKING:
    import torch

class Precision(str, Enum):
    """The arithmetic of a network or of adaptation: one vocabulary for export, calibration,
    engines, adaptation and the command lines. A str, so records and hashes hold "fp16"."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    __str__ = str.__str__  # "fp16", not "Precision.FP16", in messages and f-strings
    __format__ = str.__format__

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of a floating precision (INT8 has none: it is a graph rewrite)."""
        import torch  # lazily: the command lines import this module before parsing

        if self is Precision.INT8:
            raise ValueError("int8 is a quantised graph, not a torch dtype")
        return {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}[self]

    @classmethod
    def of(cls, value: "str | Precision", allowed: Sequence["Precision"] | None = None,
           what: str = "precision") -> "Precision":
        """``value`` as a Precision; ValueError naming it and the choices when it is not one of ``allowed``."""
        allowed = tuple(cls) if allowed is None else tuple(allowed)
        try:
            p = cls(value)
        except ValueError:
            p = None
        if p not in allowed:
            raise ValueError(f"{what} {value!r}: expected one of {', '.join(allowed)}")
        return p


def choices(allowed: Sequence[Precision]) -> list[str]:
    """The values of ``allowed``, for a command-line choice."""
    return [p.value for p in allowed]


# What each consumer accepts.
PRECISIONS: tuple[Precision, ...] = (Precision.FP16, Precision.FP32)  # GPU engine builds (TensorRT, FP32 fallback)
EXPORT_PRECISIONS = (Precision.FP32, Precision.FP16)  # exported-graph validation tolerances
ADAPT_PRECISIONS = (Precision.FP32, Precision.BF16)  # online adaptation arithmetic (autocast)
TORCH_CUDA_PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP32)  # the torch-cuda backend
FP32_FALLBACK = ("vae_encoder", "vae_decoder")  # the SD VAE is the FP16 overflow risk
FP16_MAX = 65504.0
OVERFLOW_MARGIN = 0.5  # |output| beyond half the FP16 range: too close to overflow to trust


class PrecisionError(RuntimeError):
    """An engine whose reduced-precision outputs cannot be used, and no fallback allowed."""


@dataclass(frozen=True)
class FiniteCheck:
    """What a reduced-precision engine produced on sample inputs."""

    values: int  # output elements checked
    nonfinite: int  # NaN or inf among them
    max_abs: float  # largest finite magnitude

    @property
    def safe(self) -> bool:
        return self.nonfinite == 0 and self.max_abs <= OVERFLOW_MARGIN * FP16_MAX

    def describe(self) -> str:
        return f"{self.nonfinite} non-finite of {self.values} values, max |x| {self.max_abs:.3g}"


def finite_check(outputs: Iterable[torch.Tensor]) -> FiniteCheck:
    """Count non-finite values and the largest finite magnitude over ``outputs``."""
    import torch

    values = nonfinite = 0
    max_abs = 0.0
    for x in outputs:
        x = x.detach().float()
        finite = torch.isfinite(x)
        values += x.numel()
        nonfinite += int((~finite).sum())
        if finite.any():
            max_abs = max(max_abs, float(x[finite].abs().max()))
    return FiniteCheck(values, nonfinite, max_abs)


def probe_finite(backend, batch: int, device, vocab: int = 49408) -> FiniteCheck:
    """Run ``backend`` once on seeded inputs (seed 0) of ``batch`` samples; its FiniteCheck."""
    import torch  # lazily, as the specs: the command lines import this module before parsing

    from .specs import active, random_inputs

    feed = random_inputs(backend.spec, batch, torch.Generator().manual_seed(0), vocab=vocab)
    with active(backend):
        return finite_check(backend.infer({k: v.to(device) for k, v in feed.items()}).values())


@dataclass(frozen=True)
class PrecisionDecision:
    precision: str  # what the engine is built / run in
    reason: str  # why (empty when the requested precision stands)


def choose_precision(
    network: str,
    requested: str,
    check: FiniteCheck | None,
    fallback: tuple[str, ...] = FP32_FALLBACK,
) -> PrecisionDecision:
    """Keep ``requested`` if its outputs are safe; fall back to FP32 for ``fallback``
    networks; raise PrecisionError for any other network with unsafe outputs.

    ``check`` is None when nothing was checked (FP32 requested: nothing to decide).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested == "fp32" or check is None or check.safe:
        return PrecisionDecision(requested, "")
    why = f"{network} in {requested} produced {check.describe()}"
    if network in fallback:
        return PrecisionDecision("fp32", why + "; falling back to fp32")
    raise PrecisionError(
        f"{why}; only {', '.join(fallback) or 'no network'} may fall back to fp32."
        " Build this network in fp32 (adabldm-export --trt --trt-precision fp32) or check the weights"
    )


# ---------------------------------------------------------------------------------------
# FP16 ONNX graphs


def fp16_onnx(src: str | Path, dst: str | Path, block_nodes: Sequence[str] = ()) -> Path:
    """Write an FP16 copy of the FP32 graph ``src`` to ``dst``; inputs and outputs stay FP32,
    ``block_nodes`` (e.g. from a calibration precision map) stay FP32 inside.

    Weights and ops become float16 (onnxruntime.transformers' converter, the one ORT's
    Stable Diffusion tooling uses); Cast nodes at the graph's edges keep its interface.
    Graphs over 2 GB work: the converter reads a path and infers shapes file to file, and
    ``dst`` then gets one external-data file ``<dst>.data``.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    skeleton = onnx.load(str(src), load_external_data=False)  # weights stay in their file
    del skeleton.graph.value_info[:]  # the export's stale FP32 value infos confuse the converter
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=src.parent)  # beside src: external data resolves
    os.close(fd)
    try:
        onnx.save(skeleton, tmp)
        model = convert_float_to_float16(tmp, keep_io_types=True, node_block_list=list(block_nodes))
        drop_cast_round_trips(model, set(block_nodes))
    finally:
        os.remove(tmp)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save_graph(model, dst)


def drop_cast_round_trips(model, blocked: set[str]) -> int:
    """Remove FP32 -> FP16 -> FP32 Cast pairs between two blocked nodes; returns how many.

    The converter casts every blocked node's output to FP16 and back for the next
    blocked node, so a value beyond 65504 would still overflow between two FP32 nodes.
    """
    import onnx

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    dropped = []
    for up in graph.node:
        down = producer.get(up.input[0]) if cast_to(up) == onnx.TensorProto.FLOAT else None
        src = producer.get(down.input[0]) if down is not None and cast_to(down) == onnx.TensorProto.FLOAT16 else None
        users = consumers.get(up.output[0], [])
        if src is None or src.name not in blocked or up.output[0] in outputs or not all(u.name in blocked for u in users):
            continue
        for u in users:
            u.input[:] = [down.input[0] if i == up.output[0] else i for i in u.input]
        dropped.append(up)
    for node in dropped:
        graph.node.remove(node)
    live = {i for n in graph.node for i in n.input} | outputs
    for node in [n for n in graph.node if cast_to(n) == onnx.TensorProto.FLOAT16 and n.output[0] not in live]:
        graph.node.remove(node)
    return len(dropped)


def graph_float_types(path: str | Path) -> dict[str, Mapping[str, int]]:
    """Element types of a graph's inputs, outputs and initializers (counts per type name)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    name = onnx.TensorProto.DataType.Name
    io = {
        "inputs": {i.name: name(i.type.tensor_type.elem_type) for i in model.graph.input},
        "outputs": {o.name: name(o.type.tensor_type.elem_type) for o in model.graph.output},
    }
    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        counts[name(init.data_type)] = counts.get(name(init.data_type), 0) + 1
    return {**io, "initializers": counts}

