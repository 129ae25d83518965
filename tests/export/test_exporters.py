"""The optional export paths: the dynamo exporter and ControlNet/UNet as two graphs."""
from __future__ import annotations

import pytest
import torch
from adabldm_core import io as core_io
from adabldm_core.specs import random_inputs
from adabldm_engine.backends import OrtBackend, TorchBackend, activated
from adabldm_engine.bundle import Bundle
from adabldm_engine.runtime import bundle_engines
from adabldm_export.bundle import ExportConfig, export_bundle
from adabldm_export.onnx_export import export_onnx
from adabldm_export.validate import agreement

from adabldm_ref.networks import network_modules, network_specs


@pytest.mark.parametrize("name", ["text_encoder", "vae_decoder"])
def test_dynamo_exporter_at_opset_18(tiny, tmp_path, name):
    pytest.importorskip("onnxscript")
    import onnx

    spec, module = network_specs(tiny, 256)[name], network_modules(tiny)[name]()
    path = export_onnx(spec, module, tmp_path / f"{name}.onnx", batch=2, dynamo=True)
    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) >= 18
    ort, ref = OrtBackend(spec, path).activate(), TorchBackend(spec, module).activate()
    for batch in (1, 3):
        feed = random_inputs(spec, batch, torch.Generator().manual_seed(batch), vocab=514)
        out = spec.output_names[0]
        assert agreement(ort.infer(feed)[out], ref.infer(feed)[out]).rel_l2 < 1e-4


def test_split_controlnet_bundle_matches_the_folded_module(tiny, tmp_path):
    export_bundle(tiny, ExportConfig(out=tmp_path, batch_sizes=(1, 2), split_controlnet=True,
                                     simplify=False, capture_steps=4))
    bundle = Bundle.open(tmp_path)
    assert set(bundle.manifest["networks"]) == {"text_encoder", "vae_encoder", "vae_decoder", "controlnet", "unet"}
    engine = activated(bundle_engines(bundle, "onnxruntime"))["unet_control"]
    folded = network_specs(tiny, 256)["unet_control"]
    assert engine.spec.input_names == folded.input_names
    ref = TorchBackend(folded, network_modules(tiny)["unet_control"]()).activate()
    feed = random_inputs(folded, 2, torch.Generator().manual_seed(0), vocab=514)
    expected = ref.infer(feed)["eps"].clone()
    assert agreement(engine.infer(feed)["eps"], expected).rel_l2 < 1e-4


def test_large_graphs_get_one_external_data_file(tiny, tmp_path, monkeypatch):

    monkeypatch.setattr(core_io, "EXTERNAL_DATA_BYTES", 1000)  # tiny VAE decoder counts as "large"
    spec, module = network_specs(tiny, 256)["vae_decoder"], network_modules(tiny)["vae_decoder"]()
    path = export_onnx(spec, module, tmp_path / "vae_decoder.onnx", batch=1)
    data = tmp_path / "vae_decoder.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae_decoder.onnx", "vae_decoder.onnx.data"]
    feed = random_inputs(spec, 1, torch.Generator().manual_seed(0))
    expected = TorchBackend(spec, module).activate().infer(feed)["image"].clone()
    assert agreement(OrtBackend(spec, path).activate().infer(feed)["image"], expected).rel_l2 < 1e-4
