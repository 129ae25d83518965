"""INT8: the ONNX Runtime QDQ UNet+ControlNet runs, its end-to-end parity is judged by the floor."""
from __future__ import annotations

import math
from collections import Counter

import onnx
import pytest
import torch
from adabldm_calibration.capture import FOLDER, load_capture
from adabldm_calibration.int8 import (
    INT8_PSNR_FLOOR_DB,
    Int8Config,
    Int8Error,
    Int8Parity,
    quantizable_nodes,
    quantize_bundle,
    require_folded,
)
from adabldm_calibration.loader import CapturedLoader
from adabldm_calibration.precision_map import rel_l2
from adabldm_engine.backends import OrtBackend
from adabldm_engine.bundle import Bundle

CFG = Int8Config(calibration_feeds=6, parity_samples=1, parity_steps=5)


@pytest.fixture(scope="module")
def quantized(calib_bundle):
    bundle = Bundle.open(calib_bundle)
    path, record = quantize_bundle(bundle, load_capture(calib_bundle / FOLDER), CFG)
    return bundle, path, record


def test_int8_graph_is_qdq_on_convolutions_and_weight_matmuls_only(quantized):
    bundle, path, _ = quantized
    fp32 = onnx.load(str(bundle.graph("unet_control")))
    int8 = onnx.load(str(path))
    ops = Counter(n.op_type for n in int8.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    chosen = set(quantizable_nodes(fp32, CFG))
    attention = [n.name for n in fp32.graph.node if n.op_type == "MatMul" and "/attn1/" in n.name
                 and not n.name.endswith(("to_q/MatMul", "to_k/MatMul", "to_v/MatMul", "to_out.0/MatMul"))]
    assert attention and not chosen & set(attention)  # Q K^T and P V stay float
    assert {n.name for n in fp32.graph.node if n.op_type == "Conv"} <= chosen


def test_int8_runs_on_captured_feeds(quantized):
    bundle, path, _ = quantized
    spec = bundle.spec("unet_control")
    feeds = CapturedLoader(load_capture(bundle.root / FOLDER), "unet_control", spec, batch=2, limit=2).torch_feeds()
    fp32, int8 = OrtBackend(spec, bundle.graph("unet_control")).activate(), OrtBackend(spec, path).activate()
    ref = [[fp32.infer(f)["eps"].clone()] for f in feeds]
    got = [[int8.infer(f)["eps"].clone()] for f in feeds]
    err = rel_l2(got, ref)
    assert math.isfinite(err) and 0 < err < 1.0  # quantised (not identical), not broken


def test_int8_parity_is_measured_and_the_floor_decides(quantized, calib_bundle):
    _, _, record = quantized
    parity = record["parity"]
    assert INT8_PSNR_FLOOR_DB == 30.0 and parity["floor_db"] == INT8_PSNR_FLOOR_DB
    assert len(parity["psnr_db"]) == CFG.parity_samples
    psnr = parity["min_psnr_db"]
    assert isinstance(psnr, float) and 10.0 < psnr < 100.0  # INT8 changes the images, within reason
    assert record["offered"] is parity["passes"] is (psnr >= INT8_PSNR_FLOOR_DB)
    assert record["calibration_feeds"] == CFG.calibration_feeds
    assert record["settings"]["method"] == "minmax" and len(record["sha256"]) == 64


def test_floor_verdict_uses_the_worst_sample():
    assert Int8Parity((35.0, 31.0), (35.0, 31.0), 30.0).passes
    assert not Int8Parity((45.0, 29.9), (45.0, 29.9), 30.0).passes
    assert Int8Parity((math.inf,), (math.inf,), 30.0).to_dict()["min_psnr_db"] == "inf"


def test_bad_int8_settings_and_split_bundles_are_refused():
    with pytest.raises(Int8Error, match="calibration method 'kl'"):
        Int8Config(method="kl")
    split = type("B", (), {"manifest": {"networks": {"controlnet": {}, "unet": {}}}, "root": "b"})()
    with pytest.raises(Int8Error, match="two graphs; .*without --split-controlnet"):
        require_folded(split)


def test_without_tensorrt_the_calibrator_says_what_to_install(calib_bundle, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here")
    from adabldm_calibration.trt import TensorRTUnavailable, int8_calibrator

    bundle = Bundle.open(calib_bundle)
    loader = CapturedLoader(load_capture(calib_bundle / FOLDER), "vae_decoder", bundle.spec("vae_decoder"), batch=1)
    with pytest.raises(TensorRTUnavailable, match="needs tensorrt and polygraphy.*pip install tensorrt"):
        int8_calibrator(loader, tmp_path / "cache")


def test_precision_map_nodes_select_the_layers_tensorrt_makes_of_them():
    from adabldm_calibration.trt import layer_matches

    nodes = ["/decoder/up_blocks.3/resnets.0/conv1/Conv"]
    assert layer_matches("/decoder/up_blocks.3/resnets.0/conv1/Conv", nodes)
    assert layer_matches("/decoder/up_blocks.3/resnets.0/conv1/Conv_1", nodes)  # parser's extra layers
    assert not layer_matches("/decoder/up_blocks.3/resnets.0/conv1/Conv1", nodes)
    assert not layer_matches("/decoder/up_blocks.3/resnets.0/conv2/Conv", nodes)


@pytest.mark.parametrize(
    "layer_type, outputs, pinned",
    [("CONVOLUTION", ["FLOAT"], True), ("ELEMENTWISE", ["HALF"], True),
     ("SHAPE", ["INT64"], False), ("CONSTANT", ["FLOAT"], False),  # shape arithmetic, weights
     ("GATHER", ["INT64"], False), ("CAST", ["INT32"], False), ("SLICE", ["FLOAT", "BOOL"], False)],
)
def test_only_floating_point_compute_layers_are_pinned_to_fp32(layer_type, outputs, pinned):
    """TensorRT ignores or refuses FP32 on shape and integer layers (and with constraints
    obeyed fails the build): the precision map's nodes are filtered by these names."""
    from adabldm_calibration.trt import fp32_constrainable

    assert fp32_constrainable(layer_type, outputs) is pinned


@pytest.mark.gpu
def test_tensorrt_int8_calibrator_over_the_captured_loader(calib_bundle, tmp_path):
    """Needs TensorRT (a GPU machine); skipped elsewhere, never mocked."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT calibration needs a CUDA GPU")
    from adabldm_calibration.trt import build_engine

    bundle = Bundle.open(calib_bundle)
    spec = bundle.spec("vae_decoder")
    loader = CapturedLoader(load_capture(calib_bundle / FOLDER), "vae_decoder", spec, batch=2)
    cache = tmp_path / "vae_decoder.calib.cache"
    engine = build_engine(bundle.graph("vae_decoder"), tmp_path / "vae_decoder.plan", spec.profile((1, 2)),
                          fp16=True, int8_loader=loader, cache=cache)
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0  # the cache a rebuild reads
