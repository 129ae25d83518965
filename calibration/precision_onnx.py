"""The precision map on ONNX graphs: module names -> node names, FP16 graphs with FP32 nodes.

The TorchScript exporter names nodes after module scopes
(``/unet/unet/down_blocks.0/resnets.0/conv1/Conv``), so the torch modules a precision map
keeps translate to the nodes an FP16 conversion must block (and the TensorRT layers the
parser makes of them).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from adabldm_core.precision import fp16_onnx
from adabldm_core.specs import NetworkSpec
from adabldm_engine.backends import OrtBackend

from .precision_map import inside, json_number, rel_l2

log = logging.getLogger("adabldm.calibration")


def _suffix_index(module_names: Iterable[str]) -> dict[str, set[str]]:
    """Every dot-boundary suffix of each module name -> the names ending with it."""
    index: dict[str, set[str]] = {}
    for name in module_names:
        parts = name.split(".")
        for i in range(len(parts)):
            index.setdefault(".".join(parts[i:]), set()).add(name)
    return index


def node_module(node_name: str, index: Mapping[str, set[str]]) -> str | None:
    """The torch module an ONNX node came from ("" for the top level; None if unknown).

    "/decoder/up_blocks.0/resnets.1/conv1/Conv" has scope "decoder.up_blocks.0.resnets.1.conv1",
    the module whose name ends with it (the exporter leaves out modules that were never
    called, like a wrapper's ``vae``). A module called twice gets "_1" on its second scope
    ("nonlinearity_1"); a scope that names no module falls back to its parent's.
    """
    parts = node_name.split("/")
    if len(parts) < 3 or parts[0]:
        return ""
    scope = [re.sub(r"_\d+$", "", p) if p not in index else p for p in parts[1:-1]]
    while scope:
        owners = index.get(".".join(scope), set())
        if len(owners) == 1:
            return next(iter(owners))
        if ".".join(scope) in owners:
            return ".".join(scope)
        if owners:
            return None  # ambiguous
        scope.pop()
    return ""


def onnx_block_list(model, module_names: Iterable[str], keep: Iterable[str]) -> list[str]:
    """Names of the nodes of ONNX ``model`` that belong to a module in ``keep``."""
    keep = list(keep)
    if not keep:
        return []
    index = _suffix_index(module_names)
    nodes, unknown = [], 0
    for node in model.graph.node:
        owner = node_module(node.name, index)
        if owner is None:
            unknown += 1
        elif any(inside(owner, k) for k in keep):
            nodes.append(node.name)
    if unknown:
        log.warning("%d ONNX nodes could not be traced to a module (kept in FP16)", unknown)
    return nodes


ORT_NOTE = ("ONNX Runtime on the CPU runs FP16 nodes without an FP16 kernel (Conv among them) in FP32"
            " behind inserted casts, so these figures understate GPU FP16 error; the PyTorch figures do not")


def onnxruntime_fp16_errors(graph: str | Path, spec: NetworkSpec, feeds, block_nodes: Sequence[str]) -> dict:
    """Rel. L2 of ONNX Runtime (CPU) on the FP16 graph without and with the map, vs the FP32 graph."""
    import tempfile


    def outputs(backend):
        with backend:
            return [[t.clone() for t in backend.infer(f).values()] for f in feeds]

    ref = outputs(OrtBackend(spec, graph))
    result: dict = {"note": ORT_NOTE}
    with tempfile.TemporaryDirectory() as tmp:
        for label, nodes in (("without_map", ()), ("with_map", block_nodes)):
            try:
                path = fp16_onnx(graph, Path(tmp) / f"{label}.onnx", nodes)
                result[label] = json_number(rel_l2(outputs(OrtBackend(spec, path)), ref))
            except Exception as exc:  # noqa: BLE001 - report what ORT could not run, do not hide it
                result[label] = f"could not run: {str(exc).splitlines()[0][:300]}"
    return result


