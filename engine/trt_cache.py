"""TensorRT engine settings, optimisation profiles and the engine cache of a bundle.

Nothing here imports TensorRT: these are the decisions around a build (which shapes,
which key, whether a stored engine may be used), so they are tested on any machine.

bundle/trt/
  <network>.<key>.plan    serialized engine
  <network>.<key>.json    its record: TensorRT version, GPU compute capability, ONNX
                          sha256, build settings, profile, precision, plan sha256
  fp16/<network>.<sha>.onnx   the FP16 graph the FP16 engines were built from
  timing-<trt>-sm<cc>.cache   the builder's timing cache (per TensorRT and GPU)
The key hashes everything an engine depends on; an engine whose record does not match
this machine's TensorRT, GPU or the bundle's ONNX files is never used.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from adabldm_core.io import file_sha256, write_bytes, write_json
from adabldm_core.precision import FP32_FALLBACK, PRECISIONS, Precision
from adabldm_core.specs import NetworkSpec

TRT_DIR = "trt"
RECORD_VERSION = 1
# The text encoder runs once per job on [prompt, ""]: batch 2 whatever the sample batch.
PROMPT_BATCH = 2


class StaleEngineError(ValueError):
    """No engine in the bundle fits this machine's TensorRT/GPU or the bundle's graphs."""


@dataclass(frozen=True)
class TrtBuildConfig:
    """How ``adabldm-export --trt`` builds engines (everything but ``force`` is keyed)."""

    # Engine precision. "fp16": strongly typed from an FP16 copy of each graph (FP32 I/O).
    precision: Precision = Precision.FP16
    # False: one static engine per (resolution, batch size), the fastest kernels and
    # CUDA-graph friendly; True: one engine per network with a min..max batch profile.
    dynamic: bool = False
    # Builder scratch memory cap; TensorRT skips tactics that need more.
    workspace_gib: float = 4.0
    # builder_optimization_level 0-5: higher searches more tactics (slower builds).
    opt_level: int = 3
    # Networks rebuilt in FP32 when their FP16 engine gives non-finite values (the VAE).
    fp32_fallback: tuple[str, ...] = FP32_FALLBACK
    # Networks to build; empty: every network of the bundle.
    networks: tuple[str, ...] = ()
    # Reuse and extend the timing cache in bundle/trt (per TensorRT version and GPU).
    timing_cache: bool = True
    # Rebuild engines even when a matching one is cached.
    force: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision.of(self.precision, PRECISIONS, "TensorRT precision"))
        if not 0 < self.workspace_gib <= 1024:
            raise ValueError(f"workspace {self.workspace_gib} GiB: expected a positive size up to 1024 GiB")
        if self.opt_level not in range(6):
            raise ValueError(f"builder optimization level {self.opt_level}: expected 0 to 5")

    def key_settings(self) -> dict:
        """The settings that change the engine (and so its cache key)."""
        return {"precision": self.precision, "workspace_gib": self.workspace_gib, "opt_level": self.opt_level,
                "fp32_fallback": sorted(self.fp32_fallback)}


@dataclass(frozen=True)
class EngineProfile:
    """One TensorRT optimisation profile: sample batches lo..hi, tuned for ``opt``."""

    lo: int
    opt: int
    hi: int
    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]  # name, min, opt, max

    @property
    def static(self) -> bool:
        return self.lo == self.hi

    def covers(self, batch: int) -> bool:
        return self.lo <= batch <= self.hi

    def to_dict(self) -> dict:
        return {"batch": [self.lo, self.opt, self.hi],
                "shapes": {n: [list(a), list(b), list(c)] for n, a, b, c in self.shapes}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "EngineProfile":
        lo, opt, hi = d["batch"]
        shapes = tuple((n, tuple(a), tuple(b), tuple(c)) for n, (a, b, c) in d["shapes"].items())
        return cls(int(lo), int(opt), int(hi), shapes)


def _profile(spec: NetworkSpec, lo: int, opt: int, hi: int) -> EngineProfile:
    shapes = tuple((t.name, t.concrete(lo), t.concrete(opt), t.concrete(hi)) for t in spec.inputs)
    return EngineProfile(lo, opt, hi, shapes)


def engine_profiles(spec: NetworkSpec, batch_sizes: Sequence[int], dynamic: bool) -> list[EngineProfile]:
    """Profiles to build for ``spec``: static min=opt=max per batch size, or one dynamic
    profile min..max tuned for the largest batch. The text encoder always gets one
    dynamic profile that covers the prompt batch (2)."""
    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes {tuple(batch_sizes)}: expected positive integers")
    if spec.name == "text_encoder":
        hi = max(PROMPT_BATCH, sizes[-1])
        return [_profile(spec, 1, PROMPT_BATCH, hi)]
    if dynamic:
        return [_profile(spec, sizes[0], sizes[-1], sizes[-1])]
    return [_profile(spec, b, b, b) for b in sizes]


@dataclass(frozen=True)
class Environment:
    """What an engine is bound to: TensorRT's version and the GPU's compute capability."""

    tensorrt: str
    compute_capability: str  # "9.0" for an H100
    gpu: str = ""  # name, for messages only (not keyed: same chip, same engine)

    def keyed(self) -> dict:
        return {"tensorrt": self.tensorrt, "compute_capability": self.compute_capability}


def engine_key(network: str, onnx_sha256: Mapping[str, str], env: Environment, cfg: TrtBuildConfig,
               profile: EngineProfile, block_nodes: Sequence[str] = ()) -> str:
    """A short hash of everything the engine depends on (``block_nodes``: ONNX nodes an
    FP16 build keeps in FP32, from a calibration precision map)."""
    payload = {"record_version": RECORD_VERSION, "network": network, "onnx_sha256": dict(sorted(onnx_sha256.items())),
               **env.keyed(), "settings": cfg.key_settings(), "profile": profile.to_dict()}
    if cfg.precision == "fp16" and block_nodes:
        payload["fp16_block_nodes"] = sorted(block_nodes)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def stale_reasons(record: Mapping, env: Environment, onnx_sha256: Mapping[str, str]) -> list[str]:
    """Why a stored engine cannot run here (empty: it can)."""
    reasons = []
    if record.get("record_version") != RECORD_VERSION:
        reasons.append(f"record format {record.get('record_version')}, expected {RECORD_VERSION}")
    if record.get("tensorrt") != env.tensorrt:
        reasons.append(f"built with TensorRT {record.get('tensorrt')}, this machine has {env.tensorrt}")
    if record.get("compute_capability") != env.compute_capability:
        reasons.append(f"built for compute capability {record.get('compute_capability')}"
                       f" ({record.get('gpu') or 'unknown GPU'}), this GPU is {env.compute_capability} ({env.gpu})")
    if dict(record.get("onnx_sha256", {})) != dict(onnx_sha256):
        reasons.append("built from other ONNX files (sha256 differs from the bundle's manifest)")
    return reasons


class EngineCache:
    """The engines stored in ``bundle/trt``, read and written through their records."""

    def __init__(self, bundle_root: str | Path):
        self.root = Path(bundle_root) / TRT_DIR

    def plan_path(self, network: str, key: str) -> Path:
        return self.root / f"{network}.{key}.plan"

    def record_path(self, network: str, key: str) -> Path:
        return self.root / f"{network}.{key}.json"

    def timing_cache_path(self, env: Environment) -> Path:
        return self.root / f"timing-{env.tensorrt}-sm{env.compute_capability.replace('.', '')}.cache"

    def fp16_graph(self, network: str, onnx_sha256: str, block_nodes: Sequence[str] = ()) -> Path:
        """The FP16 copy of a graph, named by the FP32 graph's hash and the nodes kept in
        FP32 (reused while both hold)."""
        digest = hashlib.sha256(json.dumps([onnx_sha256, sorted(block_nodes)]).encode()).hexdigest()
        return self.root / "fp16" / f"{network}.{digest[:16]}.onnx"

    def records(self, network: str) -> list[dict]:
        """Every record stored for ``network`` (unreadable records are skipped)."""
        out = []
        for path in sorted(self.root.glob(f"{network}.*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def cached(self, network: str, key: str) -> dict | None:
        """The record of a finished engine under ``key`` whose plan is intact, else None."""
        rec_path, plan = self.record_path(network, key), self.plan_path(network, key)
        if not (rec_path.is_file() and plan.is_file()):
            return None
        try:
            record = json.loads(rec_path.read_text())
        except json.JSONDecodeError:
            return None
        return record if record.get("plan_sha256") == file_sha256(plan) else None

    def write(self, record: dict, plan: bytes) -> Path:
        """Store a plan and then its record (a plan without a record is unfinished)."""
        path = self.plan_path(record["network"], record["key"])
        write_bytes(path, plan)
        record = {**record, "plan_sha256": hashlib.sha256(plan).hexdigest(), "plan_bytes": len(plan)}
        write_json(self.record_path(record["network"], record["key"]), record)
        return path

    def usable(self, network: str, env: Environment, onnx_sha256: Mapping[str, str], redo: str) -> list[dict]:
        """Records of ``network`` that run here, newest build first (so that of two engines
        serving the same batch, say an FP16 and a later FP32 build, the last one built is
        used); StaleEngineError naming why none does."""
        records = self.records(network)
        fit = [r for r in records if not stale_reasons(r, env, onnx_sha256)]
        if fit:
            return sorted(fit, key=lambda r: r.get("built_at", ""), reverse=True)
        if not records:
            raise StaleEngineError(f"bundle has no TensorRT engine for {network} in {self.root}; {redo}")
        why = "; ".join(sorted({reason for r in records for reason in stale_reasons(r, env, onnx_sha256)}))
        raise StaleEngineError(f"the TensorRT engines for {network} in {self.root} are stale ({why}); {redo}")


@dataclass(frozen=True)
class BuildItem:
    """One engine to build (or find cached): a network under one profile."""

    network: str
    profile: EngineProfile
    key: str


def plan_builds(specs: Mapping[str, NetworkSpec], onnx_sha256: Mapping[str, Mapping[str, str]],
                batch_sizes: Sequence[int], cfg: TrtBuildConfig, env: Environment,
                block_nodes: Mapping[str, Sequence[str]] | None = None) -> list[BuildItem]:
    """Every engine ``cfg`` asks for, with its cache key; unknown network names refused."""
    names = list(cfg.networks) or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"networks {unknown}: expected names from the bundle: {', '.join(specs)}")
    blocks = block_nodes or {}
    return [
        BuildItem(name, profile, engine_key(name, onnx_sha256[name], env, cfg, profile, blocks.get(name, ())))
        for name in names
        for profile in engine_profiles(specs[name], batch_sizes, cfg.dynamic)
    ]


def record_for(network: str, key: str, env: Environment, onnx_sha256: Mapping[str, str], cfg: TrtBuildConfig,
               profile: EngineProfile, precision: str, reason: str, build_s: float,
               block_nodes: Sequence[str] = ()) -> dict:
    """The JSON record stored beside a plan."""
    return {"record_version": RECORD_VERSION, "network": network, "key": key, **env.keyed(), "gpu": env.gpu,
            "onnx_sha256": dict(onnx_sha256), "settings": cfg.key_settings(), "profile": profile.to_dict(),
            "precision": precision, "fallback_reason": reason, "build_s": round(build_s, 1),
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "fp16_block_nodes": sorted(block_nodes) if precision == "fp16" else [],
            "build_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}}


# ---------------------------------------------------------------------------------------
# Finding TensorRT (imported lazily, only here)

INSTALL_HINT = ("install TensorRT for your CUDA (`pip install tensorrt-cu12`, or the `gpu` extra:"
                " pip install 'adabldm[gpu]') on a machine with an NVIDIA GPU")


class TrtUnavailableError(RuntimeError):
    """TensorRT or a CUDA GPU is missing."""


def require_tensorrt():
    """The ``tensorrt`` module, or TrtUnavailableError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TrtUnavailableError(f"TensorRT engines need the tensorrt package: {INSTALL_HINT}") from exc
    import torch

    if not torch.cuda.is_available():
        raise TrtUnavailableError("TensorRT engines need a CUDA GPU; torch sees none (torch.cuda.is_available() is False)")
    return trt


def current_environment(device: str = "cuda") -> Environment:
    """This machine's TensorRT version and the compute capability of ``device``."""
    trt = require_tensorrt()
    import torch

    dev = torch.device(device)
    major, minor = torch.cuda.get_device_capability(dev)
    return Environment(trt.__version__, f"{major}.{minor}", torch.cuda.get_device_name(dev))


_LOGGER = None


def trt_logger(trt):
    """One TensorRT logger per process (TensorRT expects a single one)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER
