"""Engine settings, profiles, cache keys and stale-engine refusal: no TensorRT needed."""
from __future__ import annotations

import dataclasses
import json

import pytest
from adabldm_engine.trt_cache import (
    EngineCache,
    EngineProfile,
    Environment,
    StaleEngineError,
    TrtBuildConfig,
    engine_key,
    engine_profiles,
    plan_builds,
    record_for,
    stale_reasons,
)

ENV = Environment("10.3.0", "9.0", "NVIDIA H100 80GB HBM3")
SHA = {"onnx/unet_control.onnx": "a" * 64}


@pytest.fixture(scope="module")
def specs(tiny):
    from adabldm_ref.networks import network_specs

    return network_specs(tiny, 256)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "int8"}, "TensorRT precision 'int8': expected one of fp16, fp32"),
        ({"workspace_gib": 0}, "workspace 0 GiB: expected a positive size"),
        ({"opt_level": 7}, "builder optimization level 7: expected 0 to 5"),
    ],
)
def test_build_config_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrtBuildConfig(**kwargs)


def test_static_profiles_one_per_batch(specs):
    profiles = engine_profiles(specs["unet_control"], (4, 1, 4), dynamic=False)
    assert [(p.lo, p.opt, p.hi) for p in profiles] == [(1, 1, 1), (4, 4, 4)]
    assert all(p.static for p in profiles)
    shapes = {name: (lo, opt, hi) for name, lo, opt, hi in profiles[1].shapes}
    assert shapes["sample"] == ((8, 4, 32, 32),) * 3  # CFG: 2B rows
    assert shapes["hint"] == ((8, 3, 256, 256),) * 3
    assert shapes["timestep"] == ((), (), ())


def test_dynamic_profile_min_opt_max(specs):
    (p,) = engine_profiles(specs["vae_decoder"], (1, 2, 8), dynamic=True)
    assert (p.lo, p.opt, p.hi, p.static) == (1, 8, 8, False)
    assert dict((n, (a, b, c)) for n, a, b, c in p.shapes)["latent"] == ((1, 4, 32, 32), (8, 4, 32, 32), (8, 4, 32, 32))
    assert p.covers(1) and p.covers(5) and not p.covers(9)
    assert p.to_dict()["shapes"]["latent"] == specs["vae_decoder"].profile((1, 2, 8))["latent"]  # spec's own profile


def test_text_encoder_profile_covers_the_prompt_batch(specs):
    (p,) = engine_profiles(specs["text_encoder"], (1, 4), dynamic=False)
    assert (p.lo, p.opt, p.hi) == (1, 2, 4) and p.covers(2)


def test_profile_round_trips_through_json(specs):
    (p,) = engine_profiles(specs["unet_control"], (2,), dynamic=False)
    assert EngineProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_bad_batch_sizes_refused(specs):
    with pytest.raises(ValueError, match=r"batch sizes \(0,\): expected positive"):
        engine_profiles(specs["vae_decoder"], (0,), dynamic=False)


def _key(specs, env=ENV, sha=SHA, cfg=TrtBuildConfig(), batch=1, blocks=()):
    (profile,) = engine_profiles(specs["unet_control"], (batch,), dynamic=False)
    return engine_key("unet_control", sha, env, cfg, profile, blocks)


def test_key_is_stable_and_changes_with_everything_it_depends_on(specs):
    base = _key(specs)
    assert base == _key(specs) and len(base) == 20
    changed = {
        "tensorrt": _key(specs, env=dataclasses.replace(ENV, tensorrt="10.4.0")),
        "gpu": _key(specs, env=dataclasses.replace(ENV, compute_capability="8.9")),
        "onnx": _key(specs, sha={"onnx/unet_control.onnx": "b" * 64}),
        "precision": _key(specs, cfg=TrtBuildConfig(precision="fp32")),
        "workspace": _key(specs, cfg=TrtBuildConfig(workspace_gib=2.0)),
        "opt_level": _key(specs, cfg=TrtBuildConfig(opt_level=5)),
        "profile": _key(specs, batch=4),
        "precision map": _key(specs, blocks=("/unet/conv_out/Conv",)),
    }
    assert len({base, *changed.values()}) == len(changed) + 1, changed


def test_key_ignores_what_does_not_change_the_engine(specs):
    assert _key(specs, env=dataclasses.replace(ENV, gpu="another H100 name")) == _key(specs)
    assert _key(specs, cfg=TrtBuildConfig(force=True)) == _key(specs)
    assert _key(specs, cfg=TrtBuildConfig(dynamic=True)) == _key(specs)  # the profile carries it
    assert _key(specs, cfg=TrtBuildConfig(precision="fp32"), blocks=("n",)) == _key(specs, cfg=TrtBuildConfig(precision="fp32"))


def test_plan_builds_lists_every_engine(specs):
    shas = {n: {f"onnx/{n}.onnx": n * 2} for n in specs}
    items = plan_builds(specs, shas, (1, 4), TrtBuildConfig(), ENV)
    got = [(i.network, i.profile.lo, i.profile.hi) for i in items]
    assert got == [("text_encoder", 1, 4), ("vae_encoder", 1, 1), ("vae_encoder", 4, 4), ("vae_decoder", 1, 1),
                   ("vae_decoder", 4, 4), ("unet_control", 1, 1), ("unet_control", 4, 4)]
    assert len({i.key for i in items}) == len(items)
    only = plan_builds(specs, shas, (1, 4), TrtBuildConfig(networks=("unet_control",), dynamic=True), ENV)
    assert [(i.network, i.profile.lo, i.profile.hi) for i in only] == [("unet_control", 1, 4)]
    with pytest.raises(ValueError, match=r"networks \['unet'\]: expected names from the bundle"):
        plan_builds(specs, shas, (1,), TrtBuildConfig(networks=("unet",)), ENV)


def _record(specs, env=ENV, sha=SHA, cfg=TrtBuildConfig()):
    (profile,) = engine_profiles(specs["unet_control"], (1,), dynamic=False)
    key = engine_key("unet_control", sha, env, cfg, profile)
    return record_for("unet_control", key, env, sha, cfg, profile, "fp16", "", 12.3)


def test_stale_reasons_name_each_mismatch(specs):
    rec = _record(specs)
    assert stale_reasons(rec, ENV, SHA) == []
    [why] = stale_reasons(rec, dataclasses.replace(ENV, tensorrt="10.5.1"), SHA)
    assert why == "built with TensorRT 10.3.0, this machine has 10.5.1"
    [why] = stale_reasons(rec, Environment("10.3.0", "8.9", "NVIDIA L4"), SHA)
    assert "compute capability 9.0 (NVIDIA H100 80GB HBM3), this GPU is 8.9 (NVIDIA L4)" in why
    [why] = stale_reasons(rec, ENV, {"onnx/unet_control.onnx": "c" * 64})
    assert "other ONNX files" in why


def test_cache_round_trip_and_refusals(specs, tmp_path):
    cache = EngineCache(tmp_path)
    redo = "build them here: adabldm-export --trt --out B"
    with pytest.raises(StaleEngineError, match="bundle has no TensorRT engine for unet_control"):
        cache.usable("unet_control", ENV, SHA, redo)
    rec = _record(specs)
    path = cache.write(rec, b"serialized engine bytes")
    assert path == tmp_path / "trt" / f"unet_control.{rec['key']}.plan"
    stored = cache.cached("unet_control", rec["key"])
    assert stored["plan_bytes"] == 23 and stored["precision"] == "fp16"
    assert [r["key"] for r in cache.usable("unet_control", ENV, SHA, redo)] == [rec["key"]]
    newer = dataclasses.replace(ENV, tensorrt="10.9.0")
    with pytest.raises(StaleEngineError) as err:
        cache.usable("unet_control", newer, SHA, redo)
    msg = str(err.value)
    assert "are stale (built with TensorRT 10.3.0, this machine has 10.9.0)" in msg and msg.endswith(redo)
    path.write_bytes(b"tampered")  # a modified plan is not a cache hit
    assert cache.cached("unet_control", rec["key"]) is None


def test_of_two_engines_for_one_batch_the_newest_build_comes_first(specs, tmp_path):
    cache = EngineCache(tmp_path)
    fp16 = _record(specs)
    cache.write(fp16, b"fp16 plan")
    fp32 = _record(specs, cfg=TrtBuildConfig(precision="fp32"))
    cache.write(fp32, b"fp32 plan")
    assert fp32["key"] != fp16["key"] and fp32["built_at"] > fp16["built_at"]
    keys = [r["key"] for r in cache.usable("unet_control", ENV, SHA, "redo")]
    assert keys == [fp32["key"], fp16["key"]]


def test_fp16_graph_names_follow_source_and_precision_map(tmp_path):
    cache = EngineCache(tmp_path)
    a = cache.fp16_graph("vae_decoder", "a" * 64)
    assert a == cache.fp16_graph("vae_decoder", "a" * 64)
    assert a != cache.fp16_graph("vae_decoder", "b" * 64)
    assert a != cache.fp16_graph("vae_decoder", "a" * 64, ["/decoder/conv_out/Conv"])
    assert cache.timing_cache_path(ENV).name == "timing-10.3.0-sm90.cache"
