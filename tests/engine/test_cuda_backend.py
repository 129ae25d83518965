"""The PyTorch GPU backend: casts, layout, FP32 fallback and parity (CPU), and on a CUDA
machine FP16 / compiled parity and the CUDA-graph-captured pipeline (GPU)."""
from __future__ import annotations

import copy

import pytest
import torch
from adabldm_core import metrics
from adabldm_core.specs import random_inputs
from adabldm_engine.backends import BackendError, activated
from adabldm_engine.cuda_backend import (
    TorchCudaBackend,
    TorchCudaConfig,
    torch_cuda_engines,
)
from adabldm_engine.runtime import bundle_engines, torch_engines
from adabldm_export.validate import agreement

NETWORKS = ("text_encoder", "vae_encoder", "vae_decoder", "unet_control")


def _rel_errors(engines, reference, device, batch=2):
    errors = {}
    for name in NETWORKS:
        spec = reference[name].spec
        feed = random_inputs(spec, batch, torch.Generator().manual_seed(1), vocab=514)
        want = reference[name].infer(feed)[spec.output_names[0]]
        got = engines[name].infer({k: v.to(device) for k, v in feed.items()})[spec.output_names[0]]
        assert got.dtype == torch.float32 and got.shape == want.shape
        errors[name] = agreement(got.cpu(), want).rel_l2
    return errors


@pytest.mark.parametrize(
    "kwargs, message",
    [({"dtype": "int8"}, "dtype 'int8': expected one of fp16, bf16, fp32"),
     ({"compile_mode": "reduce-overhead"}, "compile_mode 'reduce-overhead'.*would nest")],
)
def test_config_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TorchCudaConfig(**kwargs)


@pytest.mark.parametrize("dtype, tol", [("fp16", 1e-2), ("bf16", 3e-2)])
def test_reduced_precision_parity_on_cpu(tiny, dtype, tol):
    engines = activated(torch_cuda_engines(tiny, 64, TorchCudaConfig(dtype=dtype), device="cpu"))
    errors = _rel_errors(engines, activated(torch_engines(tiny, 64)), "cpu")
    assert all(0 < e < tol for e in errors.values()), errors


def test_compiled_unet_control_matches_eager_on_cpu(tiny):
    """torch.compile (Inductor's CPU code) of the UNet+ControlNet wrapper, as the
    torch-compile backend builds it: the same outputs as the fp32 reference engine."""
    cfg = TorchCudaConfig(dtype="fp32", compile=True, channels_last=False)
    compiled = activated(torch_cuda_engines(tiny, 64, cfg, device="cpu"))["unet_control"]
    reference = activated(torch_engines(tiny, 64))["unet_control"]
    feed = random_inputs(reference.spec, 2, torch.Generator().manual_seed(1), vocab=514)
    got, want = compiled.infer(feed)["eps"], reference.infer(feed)["eps"]
    assert isinstance(compiled.module, torch._dynamo.eval_frame.OptimizedModule)
    assert agreement(got, want).rel_l2 < 1e-5


def test_backend_works_on_a_private_copy_in_channels_last(tiny):
    engines = activated(torch_cuda_engines(tiny, 64, TorchCudaConfig(dtype="bf16"), device="cpu"))
    backend = engines["unet_control"].activate()
    conv = backend.module.unet.unet.conv_in
    assert conv.weight.dtype == torch.bfloat16 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert tiny.unet.conv_in.weight.dtype == torch.float32  # the model itself is untouched
    assert conv is not tiny.unet.conv_in


def test_vae_that_overflows_in_fp16_falls_back_to_fp32(tiny):
    loud = copy.deepcopy(tiny)
    with torch.no_grad():
        loud.vae.decoder.conv_out.weight.mul_(1e5)  # outputs far past FP16's 65504
    engines = activated(torch_cuda_engines(loud, 64, TorchCudaConfig(dtype="fp16"), device="cpu"))
    assert engines["vae_decoder"].dtype == torch.float32
    assert engines["vae_encoder"].dtype == engines["unet_control"].dtype == torch.float16
    feed = {"latent": torch.randn(1, 4, 8, 8)}
    assert torch.isfinite(engines["vae_decoder"].infer(feed)["image"]).all()


def _bundle_stub(tmp_path, tiny):
    """A Bundle object over a manifest naming the tiny model (no files: dispatch only)."""
    from adabldm_engine.bundle import Bundle

    from adabldm_ref.networks import network_specs

    nets = {n: {**s.to_dict(), "file": f"onnx/{n}.onnx", "sha256": {f"onnx/{n}.onnx": "0" * 64}}
            for n, s in network_specs(tiny, 64).items()}
    return Bundle(tmp_path, {"model": {"name": "tiny", "identity": tiny.identity()}, "resolution": 64, "networks": nets})


@pytest.mark.parametrize("backend", ["torch-cuda", "torch-compile"])
def test_gpu_backends_refuse_the_cpu(tmp_path, tiny, backend):
    with pytest.raises(BackendError, match=f"--backend {backend} runs on a CUDA device, not 'cpu'"):
        activated(bundle_engines(_bundle_stub(tmp_path, tiny), backend, device="cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_fp16_parity_on_cuda(tiny, cuda, compile):
    engines = activated(torch_cuda_engines(tiny, 64, TorchCudaConfig(dtype="fp16", compile=compile), device=cuda))
    errors = _rel_errors(engines, activated(torch_engines(tiny, 64)), cuda)
    assert all(e < 1e-2 for e in errors.values()), errors


@pytest.mark.gpu
def test_bundle_dispatch_gives_graph_safe_fp16_engines(tmp_path, tiny, cuda):
    engines = activated(bundle_engines(_bundle_stub(tmp_path, tiny), "torch-cuda", device="cuda"))
    assert set(engines) == set(NETWORKS)
    assert all(isinstance(e, TorchCudaBackend) and e.graph_safe for e in engines.values())


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_graphed_fp16_pipeline_matches_the_fp32_reference_images(tiny, small_textures, cuda, compile):
    """End-to-end: 8 steps, every stage, CUDA-graph replays of the FP16 step vs the fp32
    reference on the CPU; final images (decoded z*) agree to FP16 accuracy."""
    from adabldm_engine.runtime import engine_pipeline

    from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
    from adabldm_ref.pipeline import ProceduralMasks, plan_sample

    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=8), adapt=AdaptConfig(iters=0))
    oks = small_textures[:1]  # brick
    plans = [plan_sample(i, cfg, oks, ProceduralMasks(("blob",))) for i in range(2)]
    ref = engine_pipeline(activated(torch_engines(tiny, 64)), tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg)
    gpu = engine_pipeline(activated(torch_cuda_engines(tiny, 64, TorchCudaConfig(compile=compile), cuda)),
                          tiny.tokenizer, copy.deepcopy(tiny.vae).to(cuda), tiny.latent_scale, cfg, device=cuda,
                          static_step=True)
    assert gpu.stepper.graphs
    x_ref = ref.codec.decode(ref.diffuse(plans)[0])
    x_gpu = gpu.codec.decode(gpu.diffuse(plans)[0]).cpu()
    psnr = metrics.psnr(x_gpu, x_ref, peak=2.0)  # images in [-1, 1]
    assert psnr > 35.0, psnr


def test_static_loop_over_reduced_precision_engines_on_cpu(tiny, small_textures):
    """The GPU path's composition without a GPU: the static-buffer loop (no graph on the
    CPU) over bf16 TorchCudaBackends, two batches through one runner; images (decoded z*)
    close to the fp32 reference's."""
    from adabldm_engine.runtime import engine_pipeline

    from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
    from adabldm_ref.pipeline import ProceduralMasks, plan_sample

    cfg = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=8), adapt=AdaptConfig(iters=0))
    oks = small_textures[:1]  # brick
    ref = engine_pipeline(activated(torch_engines(tiny, 64)), tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg)
    fast = engine_pipeline(activated(torch_cuda_engines(tiny, 64, TorchCudaConfig(dtype="bf16"), "cpu")),
                           tiny.tokenizer, tiny.vae, tiny.latent_scale, cfg, static_step=True)
    assert not fast.stepper.graphs and fast.denoiser.net.graph_safe
    for batch in ([0, 1], [2, 3]):
        plans = [plan_sample(i, cfg, oks, ProceduralMasks(("blob",))) for i in batch]
        x_ref = ref.codec.decode(ref.diffuse(plans)[0])
        x_fast = fast.codec.decode(fast.diffuse(plans)[0])
        psnr = metrics.psnr(x_fast, x_ref, peak=2.0)  # images in [-1, 1]
        assert 35.0 < psnr < 100.0, psnr  # bf16: close, and not the fp32 path by mistake
    assert list(fast.stepper._runners) == [2]
