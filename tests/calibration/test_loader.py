"""The captured-feed loader: Polygraphy's protocol, re-batching, and the export validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from adabldm_calibration.capture import FOLDER, CaptureError, load_capture
from adabldm_calibration.loader import CapturedLoader, spread
from adabldm_engine.bundle import Bundle
from adabldm_export.bundle import VALIDATION_FEEDS


@pytest.fixture(scope="module")
def stored(calib_bundle):
    return Bundle.open(calib_bundle), load_capture(calib_bundle / FOLDER)


def test_loader_yields_numpy_feeds_with_the_graph_names_and_dtypes(stored):
    bundle, cap = stored
    spec = bundle.spec("unet_control")
    feeds = list(CapturedLoader(cap, "unet_control", spec))
    assert len(feeds) == 5  # one run of 2 samples, 5 steps
    for feed in feeds:
        assert list(feed) == spec.input_names
        assert all(isinstance(v, np.ndarray) and v.flags.c_contiguous for v in feed.values())
        assert feed["timestep"].shape == () and feed["control_scale"].shape == ()
        assert feed["sample"].dtype == np.float32
    ids = next(iter(CapturedLoader(cap, "text_encoder", bundle.spec("text_encoder"))))["input_ids"]
    assert ids.dtype == np.int64


def test_rebatching_keeps_cfg_rows_together_and_never_mixes_timesteps(stored):
    bundle, cap = stored
    spec = bundle.spec("unet_control")
    whole = cap.feeds["unet_control"][0]  # 2 samples: rows [u0, u1, c0, c1]
    singles = CapturedLoader(cap, "unet_control", spec, batch=1)
    assert len(singles) == 10
    first, second = singles.feeds[0], singles.feeds[1]
    assert torch.equal(first["sample"], whole["sample"][[0, 2]]) and torch.equal(second["sample"], whole["sample"][[1, 3]])
    assert torch.equal(first["hint"], whole["hint"][[0, 2]]) and torch.equal(first["text_ctx"], whole["text_ctx"][[0, 2]])
    assert float(first["timestep"]) == float(second["timestep"]) == float(whole["timestep"])
    pairs = CapturedLoader(cap, "unet_control", spec, batch=2)
    assert len(pairs) == 5 and all(torch.equal(a["sample"], b["sample"]) for a, b in zip(pairs.feeds, cap.feeds["unet_control"]))
    with pytest.raises(CaptureError, match="fewer than 3 samples per timestep"):
        CapturedLoader(cap, "unet_control", spec, batch=3)
    with pytest.raises(CaptureError, match="network 'unet' not in the capture"):
        CapturedLoader(cap, "unet")


def test_limit_spreads_over_the_run():
    assert spread(10, 4) == [0, 3, 6, 9] and spread(3, 4) == [0, 1, 2] and spread(5, None) == [0, 1, 2, 3, 4]


def test_export_validation_is_fed_by_the_loader(calib_export, stored):
    """Every captured feed the loader gives is one the export compared graph and module on."""
    _, compared = calib_export
    bundle, cap = stored
    for name in ("text_encoder", "vae_encoder", "vae_decoder", "unet_control"):
        spec = bundle.spec(name)
        expected = CapturedLoader(cap, name, spec, batch=1, limit=VALIDATION_FEEDS).torch_feeds()
        seen = compared[name]
        for feed in expected:
            assert any(all(torch.equal(feed[k], f[k]) for k in spec.input_names) for f in seen), name
        entry = bundle.manifest["networks"][name]["validation"]
        assert entry["feeds"] == {"random": 2, "captured": len(expected)} and entry["passed"]
    assert bundle.manifest["calibration"]["capture"] == "calibration/capture.json"


def test_polygraphy_comparator_runs_on_the_loader(stored):
    """Polygraphy's own ONNX Runtime runner consumes the loader as its data loader."""
    pytest.importorskip("polygraphy")
    from adabldm_engine.backends import OrtBackend
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    bundle, cap = stored
    spec = bundle.spec("vae_decoder")
    loader = CapturedLoader(cap, "vae_decoder", spec, batch=1)
    results = Comparator.run([OnnxrtRunner(SessionFromOnnx(str(bundle.graph("vae_decoder"))))], data_loader=loader)
    (_, iterations), = results.items()
    assert len(iterations) == len(loader) == 4
    ort = OrtBackend(spec, bundle.graph("vae_decoder")).activate()
    for it, feed in zip(iterations, loader.torch_feeds()):
        np.testing.assert_allclose(it["image"], ort.infer(feed)["image"].numpy(), rtol=0, atol=1e-5)
