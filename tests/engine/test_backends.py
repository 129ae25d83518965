"""The Backend interface over the exported tiny bundle: OrtBackend and OpenVinoBackend agree
with TorchBackend on the same module, per sample across dynamic batches, and checks names,
shapes and dtypes at the boundary."""
from __future__ import annotations

import pytest
import torch
from adabldm_core.specs import random_inputs
from adabldm_engine.backends import (
    BackendError,
    OpenVinoBackend,
    OrtBackend,
    TorchBackend,
)
from adabldm_engine.bundle import Bundle
from adabldm_export.validate import agreement

from adabldm_ref.networks import network_modules

NETWORKS = ("text_encoder", "vae_encoder", "vae_decoder", "unet_control")


def runtime(kind: str):
    if kind == "openvino":
        pytest.importorskip("openvino")  # the native extra (pip install 'adabldm[native]')
        return OpenVinoBackend
    return OrtBackend


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", NETWORKS)
def test_each_graph_matches_its_module_on_fresh_inputs(bundle_dir, tiny, name, kind):
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec(name)
    ort = runtime(kind)(spec, bundle.graph(name)).activate()
    ref = TorchBackend(spec, network_modules(tiny)[name]()).activate()
    for batch in (1, 3, 4):  # 3: inside the dynamic range, never seen at export
        feed = random_inputs(spec, batch, torch.Generator().manual_seed(100 + batch), vocab=514)
        expected = {k: v.clone() for k, v in ref.infer(feed).items()}
        got = ort.infer(feed)
        for out, r in expected.items():
            a = agreement(got[out], r)
            assert a.rel_l2 < 1e-4, (name, batch, out, a)


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_dynamic_batch_gives_the_same_per_sample_results(bundle_dir, kind):
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec("unet_control")
    ort = runtime(kind)(spec, bundle.graph("unet_control")).activate()
    feed4 = random_inputs(spec, 4, torch.Generator().manual_seed(5), vocab=514)
    out4 = ort.infer(feed4)["eps"].clone()
    rows = [1, 5]  # sample 1 of the uncond and cond halves
    feed1 = {k: (v[rows] if v.ndim and v.shape[0] == 8 else v) for k, v in feed4.items()}
    out1 = ort.infer(feed1)["eps"]
    assert agreement(out1, out4[rows]).rel_l2 < 1e-5


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_backend_checks_names_shapes_and_dtypes_at_the_boundary(bundle_dir, kind):
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec("vae_decoder")
    ort = runtime(kind)(spec, bundle.graph("vae_decoder")).activate()
    with pytest.raises(BackendError, match=r"vae_decoder.latent: shape \(1, 4, 16, 16\), expected \(1, 4, 32, 32\)"):
        ort.infer({"latent": torch.zeros(1, 4, 16, 16)})
    with pytest.raises(BackendError, match="dtype torch.float16, expected float32"):
        ort.infer({"latent": torch.zeros(1, 4, 32, 32, dtype=torch.float16)})
    with pytest.raises(BackendError, match=r"missing inputs \['latent'\], unexpected \['z'\]"):
        ort.infer({"z": torch.zeros(1, 4, 32, 32)})


def test_openvino_refuses_a_gpu_device_and_names_its_install(bundle_dir, monkeypatch):
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec("vae_decoder")
    with pytest.raises(BackendError, match="runs on the CPU, not 'cuda:0'"):
        OpenVinoBackend(spec, bundle.graph("vae_decoder"), "cuda:0")
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # as if not installed
    with pytest.raises(BackendError, match=r"pip install 'adabldm\[native\]'"):
        OpenVinoBackend(spec, bundle.graph("vae_decoder")).activate()


def test_openvino_refuses_a_graph_of_other_inputs(bundle_dir):
    pytest.importorskip("openvino")
    bundle = Bundle.open(bundle_dir)
    with pytest.raises(BackendError, match=r"graph inputs \['latent'\], expected \['image', 'noise'\]"):
        OpenVinoBackend(bundle.spec("vae_encoder"), bundle.graph("vae_decoder")).activate()
