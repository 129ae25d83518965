"""TensorRT side of calibration: the INT8 calibrator and the FP32 layers of the precision map.

Both need TensorRT (and Polygraphy) at call time only; importing this module does not.
Nothing here can run on a machine without TensorRT: its tests skip there.

- :func:`int8_calibrator`: Polygraphy's ``Calibrator`` (entropy calibration 2, TensorRT's
  default) over a :class:`CapturedLoader`, with a cache file so a rebuild skips
  calibration. TensorRT calibrates at the profile's opt shape: give the loader that batch
  (``CapturedLoader(..., spec, batch=opt)``).
- :func:`keep_fp32_layers`: for a weakly typed network, the layers of the precision map's
  ONNX nodes get FP32 precision and outputs (with ``precision_constraints="obey"``). A
  strongly typed FP16 build takes its types from the FP16 ONNX graph instead, which
  :func:`adabldm_core.precision.fp16_onnx` makes with the same nodes kept FP32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .loader import CapturedLoader


class TensorRTUnavailable(RuntimeError):
    """TensorRT or Polygraphy is not installed here."""


def _polygraphy_trt():
    try:
        import tensorrt  # noqa: F401 - Polygraphy imports it lazily; fail here, clearly
        from polygraphy.backend import trt as ptrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT INT8 calibration needs tensorrt and polygraphy ({exc}); on a machine with an NVIDIA"
            " GPU: pip install tensorrt polygraphy"
        ) from None
    return ptrt


def int8_calibrator(loader: CapturedLoader, cache: str | Path):
    """Polygraphy's TensorRT INT8 calibrator over captured feeds, caching scales in ``cache``."""
    ptrt = _polygraphy_trt()
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    return ptrt.Calibrator(loader, cache=str(cache))


def layer_matches(layer_name: str, nodes: Sequence[str]) -> bool:
    """A TensorRT layer made from one of ``nodes`` (the parser names layers after nodes)."""
    return any(layer_name == n or layer_name.startswith(n + "_") or layer_name.startswith(n + " ") for n in nodes)


def fp32_constrainable(layer_type: str, output_types: Sequence[str]) -> bool:
    """Whether a layer may be pinned to FP32, by the names of its ``trt.LayerType`` and
    output ``trt.DataType``s: not shape arithmetic or a constant, every output floating point."""
    return layer_type not in ("SHAPE", "CONSTANT") and all(t in ("FLOAT", "HALF") for t in output_types)


def keep_fp32_layers(network, nodes: Sequence[str]) -> int:
    """Set FP32 precision and output types on the layers of ``nodes``; returns how many.

    Only layers whose outputs are all floating point: the precision map names every node
    of a module, shape arithmetic included, and TensorRT refuses other output types for
    shape and integer layers (with precision constraints obeyed, the build would fail).
    """
    import tensorrt as trt

    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(k).dtype.name for k in range(layer.num_outputs)]
        if not layer_matches(layer.name, nodes) or not fp32_constrainable(layer.type.name, outputs):
            continue
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
        count += 1
    return count


def build_engine(onnx_path: str | Path, engine_path: str | Path, profile: dict[str, list[list[int]]],
                 fp16: bool = True, fp32_nodes: Sequence[str] = (), int8_loader: CapturedLoader | None = None,
                 cache: str | Path | None = None) -> Path:
    """A weakly typed engine of ``onnx_path`` with Polygraphy: FP16 (+ INT8 calibrated on
    ``int8_loader``), the precision map's ``fp32_nodes`` in FP32, one profile
    ({input: [min, opt, max]}, e.g. ``NetworkSpec.profile``)."""
    ptrt = _polygraphy_trt()
    net_loader = ptrt.NetworkFromOnnxPath(str(onnx_path))
    if fp32_nodes:  # Polygraphy calls the function with network=<INetworkDefinition>
        net_loader = ptrt.PostprocessNetwork(net_loader, lambda network: keep_fp32_layers(network, fp32_nodes))
    shapes = ptrt.Profile()
    for name, (lo, opt, hi) in profile.items():
        if lo:  # scalars (timestep, control scale) need no profile entry
            shapes.add(name, lo, opt, hi)
    calibrator = None
    if int8_loader is not None:
        calibrator = int8_calibrator(int8_loader, cache or Path(engine_path).with_suffix(".calib.cache"))
    config = ptrt.CreateConfig(fp16=fp16, int8=calibrator is not None, calibrator=calibrator, profiles=[shapes],
                               precision_constraints="obey" if fp32_nodes else None)
    ptrt.SaveEngine(ptrt.EngineFromNetwork(net_loader, config), str(engine_path))()
    return Path(engine_path)
