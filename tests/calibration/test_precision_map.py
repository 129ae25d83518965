"""FP16 precision map: layers that really overflow or dominate the error are kept in FP32."""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import onnx
import pytest
import torch
from adabldm_calibration.capture import FOLDER, load_capture
from adabldm_calibration.loader import CapturedLoader
from adabldm_calibration.precision_map import (
    FP16_MAX,
    PrecisionConfig,
    activation_ranges,
    find_precision_map,
    fp16_block_lists,
    half_copy,
    map_entry,
    read_precision_map,
    rel_l2,
    run,
    write_precision_map,
)
from adabldm_calibration.precision_onnx import onnx_block_list
from adabldm_core.precision import fp16_onnx
from adabldm_core.specs import NetworkSpec, TensorSpec
from adabldm_engine.backends import OrtBackend
from adabldm_engine.bundle import Bundle
from adabldm_export.onnx_export import export_onnx
from torch import nn

from adabldm_ref.networks import VaeDecoderNet

TOY = NetworkSpec("toy", (TensorSpec("x", ("B", 8)),), (TensorSpec("y", ("B", 4)),))
TOY_FEEDS = [{"x": torch.randn(4, 8, generator=torch.Generator().manual_seed(i))} for i in range(2)]


class Toy(nn.Module):
    """inp -> block(big, norm) -> out. ``big`` can be made to overflow FP16 (norm brings it back)."""

    def __init__(self, overflow: bool = False, cancel: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 16)
        self.block = nn.Sequential(OrderedDict(big=nn.Linear(16, 16), norm=nn.LayerNorm(16)))
        self.stage = nn.Sequential(OrderedDict(offset=nn.Linear(16, 16), center=nn.Linear(16, 16)))
        self.out = nn.Linear(16, 4)
        with torch.no_grad():
            if overflow:
                self.block.big.weight.mul_(1e6)
            if cancel:  # a large offset FP16 cannot resolve, removed again by the next layer
                self.stage.offset.weight.mul_(10)
                self.stage.offset.bias.fill_(20000.0)
                self.stage.center.weight.copy_(torch.eye(16) - 1 / 16)
                self.stage.center.bias.zero_()

    def forward(self, x):
        return self.out(self.stage(self.block(torch.relu(self.inp(x)))))


def test_map_keeps_the_block_whose_activations_overflow_fp16():
    net = Toy(overflow=True)
    assert activation_ranges(net, TOY, TOY_FEEDS)["block.big"] > FP16_MAX  # it really overflows
    ref = run(net, TOY, TOY_FEEDS, torch.float32)
    assert rel_l2(run(half_copy(net), TOY, TOY_FEEDS, torch.float16), ref) == math.inf
    result = find_precision_map("toy", TOY, net, TOY_FEEDS)
    assert [(k.name, k.reason) for k in result.keep] == [("block", "overflow")]  # norm brings it back in range
    assert result.keep[0].value > FP16_MAX
    assert result.rel_l2_fp16 == math.inf and result.rel_l2_with_map < 1e-2


def test_map_keeps_the_block_whose_fp16_error_dominates():
    net = Toy(cancel=True)
    result = find_precision_map("toy", TOY, net, TOY_FEEDS)
    assert result.max_abs_fp32 < 32768  # no overflow: an error case
    assert [(k.name, k.reason) for k in result.keep] == [("stage", "error")]
    assert result.rel_l2_fp16 > 0.1 and result.rel_l2_with_map < 1e-2
    assert result.local_errors[0][0] == "stage.center"  # where FP16 rounding shows first


def test_a_clean_network_needs_no_map():
    result = find_precision_map("toy", TOY, Toy(), TOY_FEEDS, PrecisionConfig(candidates=2))
    assert result.keep == () and result.rel_l2_fp16 == result.rel_l2_with_map < 1e-2


@pytest.fixture(scope="module")
def overflowing_decoder(tiny):
    """The tiny VAE decoder with one convolution scaled so its output exceeds FP16."""
    vae = copy.deepcopy(tiny.vae)
    conv = vae.decoder.up_blocks[3].resnets[0].conv1
    with torch.no_grad():
        conv.weight.mul_(3e4)
        conv.bias.mul_(3e4)
    return VaeDecoderNet(vae, tiny.latent_scale).eval()


def test_overflow_in_a_real_network_is_mapped_to_its_onnx_nodes(calib_bundle, overflowing_decoder, tmp_path):
    bundle = Bundle.open(calib_bundle)
    spec = bundle.spec("vae_decoder")
    feeds = CapturedLoader(load_capture(calib_bundle / FOLDER), "vae_decoder", spec, batch=1, limit=2).torch_feeds()
    result = find_precision_map("vae_decoder", spec, overflowing_decoder, feeds, PrecisionConfig(candidates=0))
    assert result.modules == ["vae.decoder.up_blocks.3.resnets.0"] and result.rel_l2_fp16 == math.inf
    assert result.rel_l2_with_map < 1e-2

    graph = export_onnx(spec, overflowing_decoder, tmp_path / "vd.onnx", batch=1)
    model = onnx.load(str(graph))
    nodes = onnx_block_list(model, [n for n, _ in overflowing_decoder.named_modules()], result.modules)
    inside = [n.name for n in model.graph.node if n.name.startswith("/decoder/up_blocks.3/resnets.0/")]
    assert sorted(nodes) == sorted(inside) and any(n.endswith("/conv1/Conv") for n in nodes)

    fp16 = onnx.load(str(fp16_onnx(graph, tmp_path / "vd16.onnx", nodes)))
    producer = {o: n for n in fp16.graph.node for o in n.output}
    blocked = set(nodes)
    for node in fp16.graph.node:  # no FP16 round trip between two FP32 nodes
        if node.name in blocked:
            for i in node.input:
                p = producer.get(i)
                assert not (p is not None and p.op_type == "Cast" and p.input and producer.get(p.input[0]) is not None
                            and producer[p.input[0]].op_type == "Cast"
                            and producer.get(producer[p.input[0]].input[0], p).name in blocked), (node.name, i)
    conv = next(n for n in fp16.graph.node if n.name.endswith("resnets.0/conv1/Conv") and "up_blocks.3" in n.name)
    weights = {i.name: i.data_type for i in fp16.graph.initializer}
    assert weights[conv.input[1]] == onnx.TensorProto.FLOAT  # its weights stay FP32
    ort = OrtBackend(spec, tmp_path / "vd16.onnx").activate()
    fp32 = OrtBackend(spec, graph).activate()
    got = [[ort.infer(f)["image"].clone()] for f in feeds]
    assert rel_l2(got, [[fp32.infer(f)["image"].clone()] for f in feeds]) < 1e-2


def test_map_is_written_into_and_read_from_the_bundle(tmp_path):
    result = find_precision_map("toy", TOY, Toy(overflow=True), TOY_FEEDS, PrecisionConfig(candidates=0))
    entry = map_entry(result, ["/block/big/Gemm", "/block/norm/LayerNormalization"], {"with_map": 1e-3})
    write_precision_map(tmp_path, {"toy": entry}, PrecisionConfig(candidates=0), "abc")
    back = read_precision_map(tmp_path)
    assert back["toy"]["keep_fp32"][0]["module"] == "block" and back["toy"]["rel_l2_fp16"] == "inf"
    blocks = fp16_block_lists(tmp_path, ["toy", "other"])
    assert blocks["toy"] == ["/block/big/Gemm", "/block/norm/LayerNormalization"]
    assert blocks.get("other", []) == [] and read_precision_map(tmp_path / "none") == {}
