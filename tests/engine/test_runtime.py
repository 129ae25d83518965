"""EnginePipeline over the onnxruntime (and openvino) engines of the exported tiny bundle
against the reference pipeline, end to end (CPU)."""
from __future__ import annotations

import numpy as np
import pytest
from adabldm_core.metrics import masked_psnr
from adabldm_engine.bundle import Bundle
from adabldm_engine.runtime import bundle_engines, engine_pipeline

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.pipeline import ProceduralMasks, plan_sample, reference_pipeline


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def parity_samples(request, bundle_dir, tiny, textures):
    if request.param == "openvino":
        pytest.importorskip("openvino")
    cfg = GenerationConfig(sampler=SamplerConfig(steps=10), adapt=AdaptConfig(iters=5))
    bundle = Bundle.open(bundle_dir)
    engines = bundle_engines(bundle, request.param)
    pipe = engine_pipeline(engines, bundle.tokenizer(), bundle.adapt_vae(), bundle.manifest["latent_scale"], cfg)
    plans = [plan_sample(i, cfg, textures, ProceduralMasks()) for i in range(2)]
    return reference_pipeline(tiny, cfg).run(plans), pipe.run(plans)


def test_engine_pipeline_matches_the_reference_end_to_end(parity_samples):
    ref, ort = parity_samples
    for r, o in zip(ref, ort):
        full = np.ones(r.image.shape[:2], bool)
        psnr = masked_psnr(o.image, r.image, full)
        print(f"sample {r.plan.index}: PSNR engines vs reference {psnr:.1f} dB")
        assert psnr >= 40.0
        assert np.array_equal(o.plan.mask, r.plan.mask)
