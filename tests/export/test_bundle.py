from __future__ import annotations

import json
import shutil

import pytest
import torch
from adabldm_engine.bundle import MANIFEST, Bundle, BundleError
from adabldm_engine.graphed import StaticStepper
from adabldm_engine.runtime import bundle_engines
from adabldm_export.bundle import ExportConfig, export_bundle
from adabldm_export.validate import ExportValidationError

from adabldm_ref.config import GenerationConfig
from adabldm_ref.models import build_tiny
from adabldm_ref.pipeline import SchedulerStepper

NETWORKS = ("text_encoder", "vae_encoder", "vae_decoder", "unet_control")


def test_manifest_describes_every_network(bundle_dir, tiny):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    assert set(m["networks"]) == set(NETWORKS)
    assert m["model"]["identity"] == tiny.identity()
    assert m["resolution"] == 256 and m["batch_sizes"] == [1, 4] and m["latent_shape"] == [4, 32, 32]
    assert m["scheduler"]["beta_schedule"] == "scaled_linear" and m["latent_scale"] == pytest.approx(0.18215)
    unet = m["networks"]["unet_control"]
    assert [t["name"] for t in unet["inputs"]] == ["sample", "timestep", "text_ctx", "control_ctx", "hint", "control_scale"]
    assert unet["trt_profile"]["sample"] == [[2, 4, 32, 32], [8, 4, 32, 32], [8, 4, 32, 32]]
    assert {"torch", "onnx", "onnxruntime", "diffusers"} <= set(m["tools"])
    for entry in m["networks"].values():
        assert entry["validation"]["passed"] and entry["opset"] == 17
    report = json.loads((bundle_dir / "validation.json").read_text())
    assert set(report) == set(NETWORKS)


def test_tampered_or_unfinished_bundles_are_refused(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    graph = copy / "onnx" / "vae_decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"modified since export: .*vae_decoder.onnx.*re-export"):
        Bundle.open(copy)
    (copy / "onnx" / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match="bundle file missing"):
        Bundle.open(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="no manifest.json .*unfinished"):
        Bundle.open(copy)
    with pytest.raises(BundleError, match="bundle not found"):
        Bundle.open(tmp_path / "nowhere")


def test_bundle_for_another_resolution_or_model_is_refused(bundle_dir):
    bundle = Bundle.open(bundle_dir)
    with pytest.raises(BundleError, match="is for 256 px, not 512 px; .*adabldm-export --resolution 512"):
        bundle.check(resolution=512)
    with pytest.raises(BundleError, match="exported from model .*weights differ.*re-export"):
        bundle_engines(bundle, "torch", models=build_tiny(seed=7))


def test_adaptation_decoder_comes_from_the_bundle(bundle_dir, tiny):
    vae = Bundle.open(bundle_dir).adapt_vae()
    ref = tiny.vae.state_dict()
    for k, v in vae.state_dict().items():
        if k.startswith(("decoder.", "post_quant_conv.")):
            assert torch.equal(v, ref[k])


def test_export_fails_past_the_tolerance_and_keeps_the_report(tiny, tmp_path, monkeypatch):
    import adabldm_export.bundle as bundle_mod

    monkeypatch.setitem(bundle_mod.TOLERANCES, "fp32", 1e-15)
    with pytest.raises(ExportValidationError, match="disagree with PyTorch: .*rel. L2"):
        export_bundle(tiny, ExportConfig(out=tmp_path, batch_sizes=(1,), capture_steps=4, simplify=False))
    assert (tmp_path / "validation.json").exists() and not (tmp_path / MANIFEST).exists()


def _job_pipeline(bundle_dir, tmp_path, backend: str, device: str, cuda_graphs: bool = True):
    from adabldm_engine.job import JobConfig, make_pipeline

    cfg = JobConfig(out=tmp_path / "out", num=1, generation=GenerationConfig(resolution=256), bundle=bundle_dir,
                    backend=backend, device=device, cuda_graphs=cuda_graphs)
    return make_pipeline(cfg)[0]


def test_job_runs_the_plain_loop_off_cuda(bundle_dir, tmp_path):

    pipe = _job_pipeline(bundle_dir, tmp_path, "onnxruntime", "cpu")
    assert isinstance(pipe.stepper, SchedulerStepper)  # the plain loop's step


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_job_replays_the_step_from_a_cuda_graph_on_cuda(bundle_dir, tmp_path, cuda_graphs):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")

    pipe = _job_pipeline(bundle_dir, tmp_path, "torch-cuda", "cuda", cuda_graphs)
    assert isinstance(pipe.stepper, StaticStepper) is cuda_graphs
    if cuda_graphs:
        assert pipe.stepper.graphs  # torch-cuda calls are graph safe
