"""TensorRT: engine choice and refusals without TensorRT (CPU); with TensorRT and CUDA,
FP16 engines of the tiny bundle against PyTorch, end to end, cached and stale (GPU)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from adabldm_core.metrics import psnr
from adabldm_engine.backends import BackendError, activated
from adabldm_engine.trt_backend import EngineFile, TrtBackend
from adabldm_engine.trt_cache import EngineProfile, StaleEngineError
from click.testing import CliRunner

from ..conftest import has_tensorrt

no_tensorrt = pytest.mark.skipif(has_tensorrt(), reason="checks the refusal where tensorrt is missing")


def _file(lo, hi, name="x"):
    return EngineFile(Path(f"{name}.plan"), EngineProfile(lo, hi, hi, ()))


@pytest.fixture(scope="module")
def latent_spec(tiny):
    from adabldm_ref.networks import network_specs

    return network_specs(tiny, 64)["vae_decoder"]


def test_engine_choice_prefers_static_then_tightest_dynamic(latent_spec):
    backend = TrtBackend(latent_spec, [_file(1, 8, "dyn8"), _file(4, 4, "s4"), _file(1, 1, "s1"), _file(2, 6, "dyn6")])
    assert backend._file_for(4).path.name == "s4.plan"
    assert backend._file_for(1).path.name == "s1.plan"
    assert backend._file_for(3).path.name == "dyn6.plan"
    assert backend._file_for(8).path.name == "dyn8.plan"
    with pytest.raises(BackendError, match=r"no TensorRT engine for batch 9 \(engines serve batch 1-8, 4, 1, 2-6\)"):
        backend._file_for(9)
    with pytest.raises(BackendError, match="no TensorRT engine files given"):
        TrtBackend(latent_spec, [])


@no_tensorrt
def test_backend_without_tensorrt_says_what_to_install(latent_spec):
    backend = TrtBackend(latent_spec, [_file(1, 1)])
    with pytest.raises(BackendError, match=r"needs the tensorrt package \(pip install 'adabldm\[gpu\]'\)"):
        backend.activate()


@no_tensorrt
def test_bundle_dispatch_without_tensorrt_is_refused(tmp_path, tiny):
    from adabldm_engine.runtime import bundle_engines

    from .test_cuda_backend import _bundle_stub

    with pytest.raises(BackendError, match="TensorRT engines need the tensorrt package"):
        activated(bundle_engines(_bundle_stub(tmp_path, tiny), "tensorrt", device="cuda"))


@no_tensorrt
def test_export_trt_without_tensorrt_fails_before_exporting(tmp_path):
    from adabldm_export.cli import main

    result = CliRunner().invoke(main, ["--out", str(tmp_path / "b"), "--trt"])
    assert result.exit_code == 1
    assert "error: TensorRT engines need the tensorrt package" in result.output
    assert not (tmp_path / "b").exists()  # nothing exported


def test_clis_offer_the_gpu_options():
    from adabldm_engine.cli import main as run_main
    from adabldm_export.cli import main as export_main

    export_help = CliRunner().invoke(export_main, ["--help"]).output
    for option in ("--trt", "--trt-dynamic", "--trt-precision", "--trt-workspace"):
        assert option in export_help
    run_help = CliRunner().invoke(run_main, ["--help"]).output
    assert "torch-cuda|torch-compile|tensorrt" in run_help


# ---------------------------------------------------------------------------------------
# GPU with TensorRT


@pytest.fixture(scope="module")
def trt_bundle(tiny, tmp_path_factory):
    """The tiny model exported at 64 px (batches 1, 2) with its FP16 TensorRT engines."""
    if not (torch.cuda.is_available() and has_tensorrt()):
        pytest.skip("needs CUDA and the tensorrt package")
    from adabldm_engine.trt_cache import TrtBuildConfig
    from adabldm_export.bundle import ExportConfig, export_bundle
    from adabldm_export.trt_build import build_bundle_engines

    out = tmp_path_factory.mktemp("trt_bundle")
    export_bundle(tiny, ExportConfig(out=out, resolution=64, batch_sizes=(1, 2), capture_steps=4, force=True))
    records = build_bundle_engines(out, TrtBuildConfig(opt_level=2))
    return out, records


@pytest.mark.gpu
def test_fp16_engines_were_built_for_every_network_and_batch(trt_bundle):
    _, records = trt_bundle
    built = sorted((r["network"], r["profile"]["batch"][0], r["profile"]["batch"][2]) for r in records)
    assert built == [("text_encoder", 1, 2), ("unet_control", 1, 1), ("unet_control", 2, 2),
                     ("vae_decoder", 1, 1), ("vae_decoder", 2, 2), ("vae_encoder", 1, 1), ("vae_encoder", 2, 2)]
    assert all(r["precision"] == "fp16" and not r["fallback_reason"] and not r["cached"] for r in records)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 2])
def test_per_engine_parity_with_pytorch_fp32(trt_bundle, tiny, batch):
    from adabldm_core.specs import random_inputs
    from adabldm_engine.bundle import Bundle
    from adabldm_engine.runtime import bundle_engines, torch_engines
    from adabldm_export.validate import agreement

    engines = activated(bundle_engines(Bundle.open(trt_bundle[0]), "tensorrt", device="cuda"))
    reference = activated(torch_engines(tiny, 64))
    for name, engine in engines.items():
        spec = engine.spec
        feed = random_inputs(spec, batch if name != "text_encoder" else 2, torch.Generator().manual_seed(batch), vocab=514)
        want = reference[name].infer(feed)[spec.output_names[0]]
        got = engine.infer({k: v.cuda() for k, v in feed.items()})[spec.output_names[0]]
        assert agreement(got.cpu(), want).rel_l2 < 1e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_end_to_end_images_match_the_reference(trt_bundle, tiny, small_textures, tmp_path, graphs):
    from adabldm_engine.bundle import Bundle
    from adabldm_engine.runtime import bundle_engines, engine_pipeline, torch_engines

    from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
    from adabldm_ref.pipeline import ProceduralMasks, plan_sample

    bundle = Bundle.open(trt_bundle[0])
    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=8), adapt=AdaptConfig(iters=2))
    oks = small_textures[:1]  # brick
    plans = [plan_sample(i, cfg, oks, ProceduralMasks(("blob",))) for i in range(2)]
    ref = engine_pipeline(activated(torch_engines(tiny, 64)), tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg).run(plans)
    trt = engine_pipeline(activated(bundle_engines(bundle, "tensorrt", device="cuda")), bundle.tokenizer(),
                          bundle.adapt_vae().cuda(), bundle.manifest["latent_scale"], cfg, device="cuda",
                          static_step=graphs)
    if graphs:
        assert trt.stepper.graphs
    for a, b in zip(ref, trt.run(plans)):
        assert psnr(a.image, b.image) >= 30.0


@pytest.mark.gpu
def test_second_build_is_served_from_the_cache(trt_bundle):
    from adabldm_engine.trt_cache import TrtBuildConfig
    from adabldm_export.trt_build import build_bundle_engines

    again = build_bundle_engines(trt_bundle[0], TrtBuildConfig(opt_level=2))
    assert all(r["cached"] for r in again)
    assert [r["key"] for r in again] == [r["key"] for r in trt_bundle[1]]


@pytest.mark.gpu
def test_stale_or_modified_engines_are_refused(trt_bundle, tmp_path):
    from adabldm_engine.bundle import Bundle
    from adabldm_engine.runtime import bundle_engines

    copy = tmp_path / "bundle"
    shutil.copytree(trt_bundle[0], copy)
    for rec_path in (copy / "trt").glob("unet_control.*.json"):
        rec = json.loads(rec_path.read_text())
        rec["tensorrt"] = "0.0.1"
        rec_path.write_text(json.dumps(rec))
    with pytest.raises(StaleEngineError, match="built with TensorRT 0.0.1, this machine has"):
        activated(bundle_engines(Bundle.open(copy), "tensorrt", device="cuda"))
    shutil.rmtree(copy)
    shutil.copytree(trt_bundle[0], copy)
    plan = sorted((copy / "trt").glob("vae_decoder.*.plan"))[0]
    plan.write_bytes(plan.read_bytes()[:-16] + bytes(16))
    engines = activated(bundle_engines(Bundle.open(copy), "tensorrt", device="cuda"))
    with pytest.raises(StaleEngineError, match="changed since it was built"):
        for batch in (1, 2):
            engines["vae_decoder"].infer({"latent": torch.randn(batch, 4, 8, 8, device="cuda")})


@pytest.mark.gpu
def test_onnxruntime_cuda_parity(trt_bundle, tiny):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    from adabldm_core.specs import random_inputs
    from adabldm_engine.bundle import Bundle
    from adabldm_engine.runtime import bundle_engines, torch_engines
    from adabldm_export.validate import agreement

    engines = activated(bundle_engines(Bundle.open(trt_bundle[0]), "onnxruntime", device="cuda"))
    reference = activated(torch_engines(tiny, 64))
    for name in ("vae_decoder", "unet_control"):
        spec = engines[name].spec
        feed = random_inputs(spec, 2, torch.Generator().manual_seed(0), vocab=514)
        got = engines[name].infer({k: v.cuda() for k, v in feed.items()})[spec.output_names[0]]
        assert agreement(got.cpu(), reference[name].infer(feed)[spec.output_names[0]]).rel_l2 < 1e-3, name
