"""The FP32-fallback decision and the FP16 ONNX graphs TensorRT builds from (CPU)."""
from __future__ import annotations

import math

import pytest
import torch
from adabldm_core.precision import (
    FP16_MAX,
    FiniteCheck,
    PrecisionError,
    choose_precision,
    finite_check,
    fp16_onnx,
    graph_float_types,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_finite_check_counts_nonfinite_and_largest_magnitude():
    a = torch.tensor([1.0, -3.0, float("nan")])
    b = torch.tensor([[float("inf"), 2.5], [-7.0, 0.0]], dtype=torch.float16)
    check = finite_check([a, b])
    assert (check.values, check.nonfinite, check.max_abs) == (7, 2, 7.0)
    assert not check.safe
    assert finite_check([torch.ones(3)]).safe
    assert not finite_check([torch.tensor([0.6 * FP16_MAX])]).safe  # finite but next to overflow
    assert finite_check([torch.full((2,), float("nan"))]).max_abs == 0.0


SAFE = FiniteCheck(10, 0, 3.0)
NAN = FiniteCheck(10, 4, 3.0)


@pytest.mark.parametrize(
    "network, requested, check, expected",
    [
        ("vae_decoder", "fp16", SAFE, "fp16"),
        ("vae_decoder", "fp16", NAN, "fp32"),
        ("vae_encoder", "fp16", FiniteCheck(10, 0, 6e4), "fp32"),
        ("unet_control", "fp16", SAFE, "fp16"),
        ("unet_control", "fp32", NAN, "fp32"),  # fp32 asked: nothing to decide
        ("vae_decoder", "fp16", None, "fp16"),  # nothing checked
    ],
)
def test_choose_precision(network, requested, check, expected):
    decision = choose_precision(network, requested, check)
    assert decision.precision == expected
    assert bool(decision.reason) == (expected != requested)


def test_fallback_reason_and_refusal_name_the_values():
    d = choose_precision("vae_decoder", "fp16", NAN)
    assert d.reason == "vae_decoder in fp16 produced 4 non-finite of 10 values, max |x| 3; falling back to fp32"
    with pytest.raises(PrecisionError, match="unet_control in fp16 produced 4 non-finite of 10 values.*--trt-precision fp32"):
        choose_precision("unet_control", "fp16", NAN)
    with pytest.raises(PrecisionError, match="only unet_control may fall back"):
        choose_precision("vae_decoder", "fp16", NAN, fallback=("unet_control",))
    with pytest.raises(ValueError, match="precision 'int8': expected one of fp16, fp32"):
        choose_precision("vae_decoder", "int8", SAFE)


@pytest.fixture(scope="module")
def tiny_graphs(tiny, tmp_path_factory):
    from adabldm_export.onnx_export import export_onnx

    from adabldm_ref.networks import network_modules, network_specs

    out = tmp_path_factory.mktemp("graphs")
    specs, modules = network_specs(tiny, 64), network_modules(tiny)
    return {n: (specs[n], modules[n](), export_onnx(specs[n], modules[n](), out / f"{n}.onnx", batch=1))
            for n in ("vae_decoder", "unet_control")}


def _parity(spec, module, path, batch=2):
    from adabldm_core.specs import random_inputs
    from adabldm_engine.backends import OrtBackend, TorchBackend
    from adabldm_export.validate import agreement

    feed = random_inputs(spec, batch, torch.Generator().manual_seed(3), vocab=514)
    name = spec.output_names[0]
    ref = TorchBackend(spec, module).activate().infer(feed)[name]
    return agreement(OrtBackend(spec, path).activate().infer(feed)[name], ref).rel_l2


@pytest.mark.parametrize("network", ["vae_decoder", "unet_control"])
def test_fp16_graph_keeps_fp32_io_and_matches_within_fp16_tolerance(tiny_graphs, tmp_path, network):
    spec, module, src = tiny_graphs[network]
    dst = fp16_onnx(src, tmp_path / f"{network}.fp16.onnx")
    types = graph_float_types(dst)
    assert set(types["inputs"].values()) == {"FLOAT"} and set(types["outputs"].values()) == {"FLOAT"}
    assert types["initializers"].get("FLOAT16", 0) > 0 and types["initializers"].get("FLOAT", 0) == 0
    rel = _parity(spec, module, dst)
    assert 0 < rel < 1e-2, rel  # FP16 tolerance (TOLERANCES["fp16"]); 0 would mean nothing changed


def test_fp16_graph_from_external_data_and_with_blocked_nodes(tiny_graphs, tmp_path):
    """Graphs over 2 GB live beside an external-data file: convert one written that way,
    keeping one node in FP32 as a calibration precision map would."""
    import onnx

    spec, module, src = tiny_graphs["vae_decoder"]
    model = onnx.load(str(src))
    ext = tmp_path / "ext" / "vae_decoder.onnx"
    ext.parent.mkdir()
    onnx.save_model(model, str(ext), save_as_external_data=True, location="vae_decoder.onnx.data", size_threshold=0)
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    dst = fp16_onnx(ext, tmp_path / "out" / "vae_decoder.onnx", block_nodes=[conv])
    assert graph_float_types(dst)["initializers"].get("FLOAT", 0) >= 1  # the blocked conv's weights
    assert [p.name for p in ext.parent.iterdir()] and not list(ext.parent.glob("tmp*"))  # no temporaries left
    assert math.isfinite(_parity(spec, module, dst)) and _parity(spec, module, dst) < 1e-2
