"""TensorRT engines from a bundle's ONNX graphs, through TensorRT's Python API.

FP16 engines are built *strongly typed* from an FP16 copy of each graph (the only FP16
route TensorRT 11 keeps, and TensorRT 10's recommended one); each FP16 engine is run once
on seeded inputs, and a VAE network whose outputs are non-finite is rebuilt in FP32
(:func:`adabldm_core.precision.choose_precision`). Engines go to the bundle's engine
cache (:mod:`adabldm_engine.trt_cache`), keyed by TensorRT version, GPU compute
capability, ONNX hash, build settings and profile. ``tensorrt`` is imported only here,
lazily, so the CLI and every CPU path work without it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from adabldm_calibration.capture import FOLDER
from adabldm_calibration.precision_map import fp16_block_lists
from adabldm_core.io import write_bytes
from adabldm_core.precision import (
    PrecisionDecision,
    choose_precision,
    fp16_onnx,
    probe_finite,
)
from adabldm_engine.bundle import Bundle
from adabldm_engine.trt_backend import EngineFile, TrtBackend
from adabldm_engine.trt_cache import (
    BuildItem,
    EngineCache,
    EngineProfile,
    Environment,
    TrtBuildConfig,
    current_environment,
    plan_builds,
    record_for,
    require_tensorrt,
    stale_reasons,
    trt_logger,
)

log = logging.getLogger("adabldm.export")


class TrtBuildError(RuntimeError):
    """TensorRT could not parse or build a graph."""

def _network_flags(trt) -> int:
    """Strongly typed networks (TensorRT >= 9.1; in TensorRT 11 the only kind)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _parse(trt, builder, onnx_path: Path):
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger(trt))
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TrtBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def _add_profile(builder, network, config, profile: EngineProfile) -> None:
    """Shapes for every input with a dynamic dimension (the batch axis)."""
    shapes = {name: (lo, opt, hi) for name, lo, opt, hi in profile.shapes}
    trt_profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if -1 not in tuple(tensor.shape):
            continue
        if tensor.name not in shapes:
            raise TrtBuildError(f"graph input {tensor.name} {tuple(tensor.shape)} has no shapes in the profile")
        trt_profile.set_shape(tensor.name, *shapes[tensor.name])
        dynamic = True
    if dynamic and config.add_optimization_profile(trt_profile) < 0:
        raise TrtBuildError(f"TensorRT refused the optimization profile {shapes} (min <= opt <= max per input?)")


def _timing_cache(config, path: Path | None):
    """Attach the stored timing cache (an empty one if absent, unreadable or not this
    TensorRT/GPU's: it only saves build time, so a bad one is not worth failing for)."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    why = "not this TensorRT/GPU's"
    try:
        cache = config.create_timing_cache(data)
        attached = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except Exception as exc:  # noqa: BLE001  (TensorRT raises RuntimeError-like errors of its own)
        attached, why = False, f"unreadable: {exc}"
    if not attached:
        log.warning("timing cache %s is %s; starting an empty one", path, why)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_engine(onnx_path: Path, profile: EngineProfile, cfg: TrtBuildConfig, timing_cache: Path | None) -> bytes:
    """A serialized engine of ``onnx_path`` for ``profile``; the graph's types decide the
    precision (strongly typed). The timing cache file is read and updated."""
    trt = require_tensorrt()
    builder = trt.Builder(trt_logger(trt))
    network, _parser = _parse(trt, builder, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    config.builder_optimization_level = cfg.opt_level
    _add_profile(builder, network, config, profile)
    if timing_cache is not None:
        _timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TrtBuildError(f"TensorRT failed to build {onnx_path} (its log above says why)")
    if timing_cache is not None:  # atomically: a killed build must not leave half a cache
        write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


CHECK_VOCAB = 256  # token ids every tokenizer here has (the tiny one has 514, CLIP 49408)


def check_plan(plan: bytes, spec, profile: EngineProfile, device: str = "cuda"):
    """Run a plan once on seeded inputs at the profile's opt batch; its FiniteCheck."""

    backend = TrtBackend(spec, [EngineFile(Path(f"<new {spec.name} plan>"), profile, plan=plan)], device)
    try:
        return probe_finite(backend, profile.opt, device, vocab=CHECK_VOCAB)
    finally:
        backend.deactivate()


def precision_map_nodes(bundle_root: Path, names) -> dict[str, list[str]]:
    """ONNX nodes per network that the bundle's precision map keeps in FP32 ({} without one)."""

    return fp16_block_lists(Path(bundle_root) / FOLDER, names)


def _build_one(bundle, item: BuildItem, cfg: TrtBuildConfig, env: Environment, cache: EngineCache,
               device: str, block_nodes: tuple[str, ...] = ()) -> dict:
    """Build one engine (FP16 with the FP32 fallback decision, or FP32) and store it."""
    entry = bundle.manifest["networks"][item.network]
    spec, graph = bundle.spec(item.network), bundle.graph(item.network)
    timing = cache.timing_cache_path(env) if cfg.timing_cache else None
    t0 = time.perf_counter()
    decision = PrecisionDecision("fp32", "")
    if cfg.precision == "fp16":
        fp16 = cache.fp16_graph(item.network, entry["sha256"][entry["file"]], block_nodes)
        if not fp16.is_file():
            fp16_onnx(graph, fp16, block_nodes)
        plan = build_engine(fp16, item.profile, cfg, timing)
        decision = choose_precision(item.network, "fp16", check_plan(plan, spec, item.profile, device), cfg.fp32_fallback)
    if decision.precision == "fp32":
        if decision.reason:
            log.warning("%s", decision.reason)
        plan = build_engine(graph, item.profile, cfg, timing)
    record = record_for(item.network, item.key, env, entry["sha256"], cfg, item.profile, decision.precision,
                        decision.reason, time.perf_counter() - t0, block_nodes)
    cache.write(record, plan)
    return {**record, "cached": False}


def build_bundle_engines(bundle_root: str | Path, cfg: TrtBuildConfig = TrtBuildConfig(),
                         progress: Callable[[str], None] = lambda s: None, device: str = "cuda") -> list[dict]:
    """Build (or find cached) every engine ``cfg`` asks for; their records, in order."""

    env = current_environment(device)
    bundle = Bundle.open(bundle_root)
    cache = EngineCache(bundle.root)
    names = list(bundle.manifest["networks"])
    specs = {n: bundle.spec(n) for n in names}
    shas = {n: bundle.manifest["networks"][n]["sha256"] for n in names}
    blocks = precision_map_nodes(bundle.root, names) if cfg.precision == "fp16" else {}
    records = []
    for item in plan_builds(specs, shas, bundle.manifest["batch_sizes"], cfg, env, blocks):
        what = f"{item.network} batch {item.profile.lo}" + ("" if item.profile.static else f"-{item.profile.hi}")
        cached = None if cfg.force else cache.cached(item.network, item.key)
        if cached is not None and not stale_reasons(cached, env, shas[item.network]):
            progress(f"TensorRT {what}: cached ({cached['precision']}, {env.gpu}, TensorRT {env.tensorrt})")
            records.append({**cached, "cached": True})
            continue
        progress(f"TensorRT {what}: building {cfg.precision} ({env.gpu}, TensorRT {env.tensorrt})")
        records.append(_build_one(bundle, item, cfg, env, cache, device, tuple(blocks.get(item.network, ()))))
    return records
