"""ONNX export of one network from its spec (one function serves every network)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from adabldm_core.io import save_graph
from adabldm_core.specs import NetworkSpec, random_inputs


def export_onnx(
    spec: NetworkSpec,
    module: torch.nn.Module,
    path: str | Path,
    batch: int,
    opset: int = 17,
    dynamo: bool = False,
) -> Path:
    """Export ``module`` to ``path`` with the spec's names and dynamic batch axes.

    TorchScript exporter (opset 17) by default; ``dynamo=True`` uses torch.export (opset
    18, needs onnxscript). Graphs near or over 2 GB are rewritten with one external-data file
    ``<name>.onnx.data`` beside them.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = random_inputs(spec, batch, torch.Generator().manual_seed(0), vocab=_vocab(module))
    args = tuple(sample[n] for n in spec.input_names)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        with torch.no_grad():
            if dynamo:
                _export_dynamo(spec, module.eval(), args, raw, max(opset, 18))
            else:
                torch.onnx.export(
                    module.eval(), args, str(raw), input_names=spec.input_names,
                    output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(),
                    opset_version=opset, do_constant_folding=True, dynamo=False,
                )
        model = onnx.load(str(raw), load_external_data=True)
        save_graph(model, path)
    return path


def _export_dynamo(spec: NetworkSpec, module, args, raw: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    shapes = []
    for t in spec.inputs:
        if t.batch_axis is None:
            shapes.append(None)
        else:
            axis, multiple = t.batch_axis
            shapes.append({axis: batch if multiple == 1 else multiple * batch})
    program = torch.onnx.export(
        module, args, input_names=spec.input_names, output_names=spec.output_names,
        dynamic_shapes=tuple(shapes), opset_version=opset, dynamo=True,
    )
    program.save(str(raw))


def _vocab(module: torch.nn.Module) -> int:
    te = getattr(module, "text_encoder", None)
    return te.config.vocab_size if te is not None else 49408


def slim(path: str | Path) -> Path:
    """Constant folding and graph simplification with onnxslim, in place."""
    import onnx
    import onnxslim

    path = Path(path)
    model = onnxslim.slim(onnx.load(str(path), load_external_data=True))
    save_graph(model, path)
    return path


def copy_graph(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    data = src.with_name(src.name + ".data")
    if data.exists():
        shutil.copyfile(data, dst.with_name(dst.name + ".data"))
