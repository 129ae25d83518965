from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from adabldm_engine.backends import BackendError, OrtBackend, TorchBackend
from adabldm_engine.runtime import EnginePipeline, bundle_engines
from adabldm_export.bundle import MANIFEST, Bundle, BundleError, ExportConfig, export_bundle
from adabldm_export.specs import network_modules, random_inputs
from adabldm_export.validate import ExportValidationError, agreement
from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.models import build_tiny
from adabldm_ref.pipeline import AdaBLDM, ProceduralMasks, plan_sample
from adabldm_ref.quality import masked_psnr

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


@pytest.mark.parametrize("name", NETWORKS)
def test_each_graph_matches_its_module_on_fresh_inputs(bundle_dir, tiny, name):
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec(name)
    ort, ref = OrtBackend(spec, bundle.graph(name)), TorchBackend(spec, network_modules(tiny)[name]())
    for batch in (1, 3, 4):  # 3: inside the dynamic range, never seen at export
        feed = random_inputs(spec, batch, torch.Generator().manual_seed(100 + batch), vocab=514)
        expected = {k: v.clone() for k, v in ref.infer(feed).items()}
        got = ort.infer(feed)
        for out, r in expected.items():
            a = agreement(got[out], r)
            assert a.rel_l2 < 1e-4, (name, batch, out, a)


def test_dynamic_batch_gives_the_same_per_sample_results(bundle_dir):
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec("unet_control")
    ort = OrtBackend(spec, bundle.graph("unet_control"))
    feed4 = random_inputs(spec, 4, torch.Generator().manual_seed(5), vocab=514)
    out4 = ort.infer(feed4)["eps"].clone()
    rows = [1, 5]  # sample 1 of the uncond and cond halves
    feed1 = {k: (v[rows] if v.ndim and v.shape[0] == 8 else v) for k, v in feed4.items()}
    out1 = ort.infer(feed1)["eps"]
    assert agreement(out1, out4[rows]).rel_l2 < 1e-5


def test_backend_checks_names_shapes_and_dtypes_at_the_boundary(bundle_dir):
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec("vae_decoder")
    ort = OrtBackend(spec, bundle.graph("vae_decoder"))
    with pytest.raises(BackendError, match=r"vae_decoder.latent: shape \(1, 4, 16, 16\), expected \(1, 4, 32, 32\)"):
        ort.infer({"latent": torch.zeros(1, 4, 16, 16)})
    with pytest.raises(BackendError, match="dtype torch.float16, expected float32"):
        ort.infer({"latent": torch.zeros(1, 4, 32, 32, dtype=torch.float16)})
    with pytest.raises(BackendError, match=r"missing inputs \['latent'\], unexpected \['z'\]"):
        ort.infer({"z": torch.zeros(1, 4, 32, 32)})


@pytest.fixture(scope="module")
def parity_samples(bundle_dir, tiny, textures):
    cfg = GenerationConfig(sampler=SamplerConfig(steps=10), adapt=AdaptConfig(iters=5))
    bundle = Bundle.open(bundle_dir)
    engines = bundle_engines(bundle, "onnxruntime")
    pipe = EnginePipeline(engines, bundle.tokenizer(), bundle.adapt_vae(), bundle.manifest["latent_scale"], cfg)
    plans = [plan_sample(i, cfg, textures, ProceduralMasks()) for i in range(2)]
    return AdaBLDM(tiny, cfg).run(plans), pipe.run(plans)


def test_onnxruntime_pipeline_matches_the_reference_end_to_end(parity_samples):
    ref, ort = parity_samples
    for r, o in zip(ref, ort):
        full = np.ones(r.image.shape[:2], bool)
        psnr = masked_psnr(o.image, r.image, full)
        print(f"sample {r.plan.index}: PSNR onnxruntime vs reference {psnr:.1f} dB")
        assert psnr >= 40.0
        assert np.array_equal(o.plan.mask, r.plan.mask)


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
    from adabldm_engine.graphed import GraphedEnginePipeline

    pipe = _job_pipeline(bundle_dir, tmp_path, "onnxruntime", "cpu")
    assert isinstance(pipe, EnginePipeline) and not isinstance(pipe, GraphedEnginePipeline)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_job_replays_the_step_from_a_cuda_graph_on_cuda(bundle_dir, tmp_path, cuda_graphs):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from adabldm_engine.graphed import GraphedEnginePipeline

    pipe = _job_pipeline(bundle_dir, tmp_path, "torch-cuda", "cuda", cuda_graphs)
    assert isinstance(pipe, GraphedEnginePipeline) is cuda_graphs
    if cuda_graphs:
        assert pipe.graphs  # torch-cuda calls are graph safe
