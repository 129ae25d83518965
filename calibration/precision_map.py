"""FP16 precision map: the layers of each network that must stay FP32.

Measured on the CPU, on captured feeds: the network runs in float16 (weights and
activations; convolutions accumulate in float32 as GPU FP16 kernels do, and because
PyTorch's CPU FP16 convolution is a slow reference path) and is compared with float32.
A layer is kept in FP32 for one of two reasons:

- overflow: its FP32 activations exceed ``overflow_limit`` (FP16 tops out at 65504), or
  the FP16 run first turns non-finite inside it. The smallest enclosing module whose
  output is back in range is kept, so the large tensor never crosses into FP16.
- error: of the layers with the largest local FP16 error (and the blocks around them,
  since a layer's FP16 input is rounded at its boundary), the one whose FP32 removes
  most of the network's output error, again and again while the error is above
  ``target_rel_l2`` or one alone removes ``dominant_share`` of it.

The map names torch modules and the ONNX nodes they became (the TorchScript exporter
names nodes after module scopes: ``/unet/unet/down_blocks.0/resnets.0/conv1/Conv``). An
FP16 ONNX conversion blocks those nodes (:func:`adabldm_core.precision.fp16_onnx`; a strongly typed TensorRT
engine built from it inherits the map), a weakly typed TensorRT build sets those layers'
precision (``adabldm_calibration.trt.keep_fp32_layers``). Written to
``<bundle>/calibration/precision.json``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from adabldm_core.io import read_versioned_json, write_json
from adabldm_core.precision import FP16_MAX
from adabldm_core.specs import NetworkSpec
from torch import nn

CANDIDATE_TYPES = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)  # layers with weights
MAP_FILE = "precision.json"
MAP_VERSION = 1


@dataclass(frozen=True)
class PrecisionConfig:
    """How the map is searched. Written into precision.json."""

    # FP32 |activation| above which FP16 is unsafe: half the FP16 range (65504) leaves
    # headroom for the sums inside an FP16 kernel.
    overflow_limit: float = 32768.0
    # Keep adding the best layer while the network's FP16 rel. L2 error is above this
    # (the export's FP16 tolerance).
    target_rel_l2: float = 1e-2
    # Below the target, keep a layer only if it alone removes this share of the error.
    dominant_share: float = 0.5
    candidates: int = 6  # layers with the largest local FP16 error tried in full runs (with their blocks)
    max_keep: int = 8  # at most this many layers kept for error (overflow always kept)
    feeds: int = 3  # captured feeds per network used (spread over the run)

    def __post_init__(self):
        if not 0 < self.overflow_limit <= FP16_MAX:
            raise ValueError(f"overflow limit {self.overflow_limit}: expected 0 < limit <= {FP16_MAX}")
        if not 0 < self.dominant_share <= 1:
            raise ValueError(f"dominant share {self.dominant_share}: expected a fraction in (0, 1]")
        if min(self.candidates, self.max_keep, self.feeds) < 0 or self.feeds == 0:
            raise ValueError("candidates and max_keep must be >= 0, feeds >= 1")


@dataclass(frozen=True)
class KeptModule:
    name: str  # torch module name inside the exported wrapper ("" = the whole network)
    reason: str  # "overflow" or "error"
    value: float  # overflow: largest FP32 |activation| inside; error: network rel. L2 once kept


@dataclass(frozen=True)
class NetworkPrecision:
    network: str
    keep: tuple[KeptModule, ...]
    rel_l2_fp16: float  # everything in FP16 (inf: the output overflowed)
    rel_l2_with_map: float  # the kept modules in FP32
    max_abs_fp32: float  # the largest FP32 activation of any module
    local_errors: tuple[tuple[str, float], ...]  # the candidates' local FP16 rel. L2, largest first

    @property
    def modules(self) -> list[str]:
        return [k.name for k in self.keep]


# ---------------------------------------------------------------------------------------
# Running a module in mixed precision


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _cast(obj, dtype: torch.dtype):
    """``obj`` with every floating tensor (in tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_cast(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [_cast(o, dtype) for o in obj]
    if isinstance(obj, dict) and type(obj) is dict:
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


def _fp32_accumulation(conv: nn.Conv2d) -> None:
    """FP16 in and out, FP32 inside (as GPU FP16 convolutions; fast on the CPU)."""
    def conv_forward(x, weight, bias):
        b = None if bias is None else bias.float()
        return nn.Conv2d._conv_forward(conv, x.float(), weight.float(), b).to(x.dtype)

    conv._conv_forward = conv_forward


def half_copy(module: nn.Module) -> nn.Module:
    """A float16 copy of ``module`` (its convolutions accumulate in float32)."""
    half = copy.deepcopy(module).eval().half()
    for sub in half.modules():
        if isinstance(sub, nn.Conv2d):
            _fp32_accumulation(sub)
    return half


@contextmanager
def fp32_modules(half: nn.Module, source: nn.Module, keep: Iterable[str]) -> Iterator[nn.Module]:
    """``half`` with the modules in ``keep`` in float32 (weights from ``source``, the FP32
    original): inputs cast up, outputs back down, as an FP16 ONNX conversion does around
    blocked nodes (whose weights it leaves in FP32).
    """
    keep = list(keep)
    outer = [n for n in keep if not any(o != n and inside(n, o) for o in keep)]  # nested: already FP32
    handles, subs = [], [half.get_submodule(name) for name in outer]
    for name, sub in zip(outer, subs):
        sub.float().load_state_dict(source.get_submodule(name).state_dict())
        handles.append(sub.register_forward_pre_hook(
            lambda m, args, kwargs: (_cast(args, torch.float32), _cast(kwargs, torch.float32)), with_kwargs=True))
        handles.append(sub.register_forward_hook(lambda m, args, out: _cast(out, torch.float16)))
    try:
        yield half
    finally:
        for h in handles:
            h.remove()
        for sub in subs:
            sub.half()


@torch.no_grad()
def run(module: nn.Module, spec: NetworkSpec, feeds: Sequence[Mapping[str, torch.Tensor]], dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """Outputs (float32) of ``module`` on each feed, its float inputs cast to ``dtype``."""
    outs = []
    for feed in feeds:
        out = module(*(_cast(feed[n], dtype) for n in spec.input_names))
        outs.append([t.float() for t in _tensors(out)])
    return outs


def rel_l2(got: Sequence[Sequence[torch.Tensor]], ref: Sequence[Sequence[torch.Tensor]]) -> float:
    """Worst relative L2 error over feeds and outputs (inf when ``got`` is not finite)."""
    worst = 0.0
    for g_feed, r_feed in zip(got, ref):
        for g, r in zip(g_feed, r_feed):
            if not torch.isfinite(g).all():
                return math.inf
            g, r = g.double(), r.double()
            worst = max(worst, float((g - r).norm() / r.norm().clamp_min(1e-30)))
    return worst


# ---------------------------------------------------------------------------------------
# Measurements


def _run_hooked(module: nn.Module, spec: NetworkSpec, feeds, dtype: torch.dtype, handles) -> list[list[torch.Tensor]]:
    """Run ``module`` on ``feeds`` once (its outputs, as :func:`run`), then remove the hooks ``handles``."""
    try:
        return run(module, spec, feeds, dtype)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def activation_ranges(module: nn.Module, spec: NetworkSpec, feeds) -> dict[str, float]:
    """Largest FP32 |output| of every module that is called (name -> max abs)."""
    return ranges_and_outputs(module, spec, feeds)[0]


@torch.no_grad()
def ranges_and_outputs(module: nn.Module, spec: NetworkSpec, feeds) -> tuple[dict[str, float], list[list[torch.Tensor]]]:
    """:func:`activation_ranges` and the FP32 outputs (as :func:`run`) of the same pass."""
    amax: dict[str, float] = {}

    def record(name):
        def hook(m, args, out):
            for t in _tensors(out):
                if t.is_floating_point() and t.numel():
                    amax[name] = max(amax.get(name, 0.0), float(t.detach().abs().max()))
        return hook

    handles = [sub.register_forward_hook(record(name)) for name, sub in module.named_modules()]
    outputs = _run_hooked(module, spec, feeds, torch.float32, handles)
    return amax, outputs


def inside(name: str, ancestor: str) -> bool:
    """True if module ``name`` is ``ancestor`` or lies inside it ("" is the whole network)."""
    return ancestor == "" or name == ancestor or name.startswith(ancestor + ".")


@torch.no_grad()
def nonfinite_origins(half: nn.Module, spec: NetworkSpec, feeds) -> set[str]:
    """The innermost modules whose FP16 output is non-finite although their inputs are finite."""
    flagged: set[str] = set()
    finite_in: dict[str, list[bool]] = {}

    def pre(name):
        def hook(m, args, kwargs):
            finite_in.setdefault(name, []).append(all(torch.isfinite(t).all() for t in _tensors((args, kwargs))
                                                      if t.is_floating_point()))
        return hook

    def post(name):
        def hook(m, args, out):
            inputs_finite = finite_in[name].pop()
            if inputs_finite and not all(torch.isfinite(t).all() for t in _tensors(out) if t.is_floating_point()):
                flagged.add(name)
        return hook

    handles = []
    for name, sub in half.named_modules():
        handles.append(sub.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(sub.register_forward_hook(post(name)))
    _run_hooked(half, spec, feeds, torch.float16, handles)
    return {n for n in flagged if not any(o != n and inside(o, n) for o in flagged)}


def large_weights(module: nn.Module, limit: float) -> list[str]:
    """Modules holding a weight beyond ``limit`` (FP16 would store it as inf or close to it)."""
    return sorted({name.rpartition(".")[0] for name, p in module.named_parameters()
                   if p.is_floating_point() and float(p.detach().abs().max()) > limit})


def overflow_modules(amax: Mapping[str, float], origins: Iterable[str], limit: float) -> dict[str, float]:
    """The smallest modules holding every overflow with their output back in range.

    From each module whose FP32 output exceeds ``limit`` (or where FP16 turned
    non-finite), climb to the nearest called ancestor whose output is within ``limit``;
    returns {module: largest |activation| inside it}, none inside another.
    """
    found: dict[str, float] = {}
    for name in [n for n, a in amax.items() if a > limit] + list(origins):
        owner = name
        while owner and (owner not in amax or amax[owner] > limit):
            owner = owner.rpartition(".")[0]
        peak = max((a for n, a in amax.items() if inside(n, owner)), default=math.inf)
        found[owner] = max(found.get(owner, 0.0), peak)
    return {n: a for n, a in found.items() if not any(o != n and inside(n, o) for o in found)}


@torch.no_grad()
def local_errors(module: nn.Module, spec: NetworkSpec, feeds) -> dict[str, float]:
    """Per layer with weights: rel. L2 of its FP16 output on its own FP32 input."""
    errors: dict[str, float] = {}

    def measure(name, layer):
        twin = half_copy(layer)

        def hook(m, args, out):
            got = twin(*_cast(args, torch.float16)).float()
            e = rel_l2([[got]], [[out]])
            errors[name] = max(errors.get(name, 0.0), e)
        return hook

    handles = [sub.register_forward_hook(measure(name, sub)) for name, sub in module.named_modules()
               if isinstance(sub, CANDIDATE_TYPES)]
    _run_hooked(module, spec, feeds, torch.float32, handles)
    return errors


# ---------------------------------------------------------------------------------------
# The search


def error_candidates(layers: Sequence[str], called: Iterable[str]) -> list[str]:
    """``layers`` and the module around each (the nearest called parent, not the network).

    Keeping one layer in FP32 still rounds its input to FP16 at the boundary; where that
    rounding is the error, only the block holding producer and consumer removes it.
    """
    called = set(called)
    out: list[str] = []
    for name in layers:
        parent = name.rpartition(".")[0]
        while parent and parent not in called:
            parent = parent.rpartition(".")[0]
        out += [n for n in (name, parent) if n and n not in out]
    return out


def find_precision_map(network: str, spec: NetworkSpec, module: nn.Module, feeds: Sequence[Mapping[str, torch.Tensor]],
                       cfg: PrecisionConfig = PrecisionConfig()) -> NetworkPrecision:
    """Which modules of ``module`` to keep in FP32 for FP16 inference on ``feeds``."""
    module = module.eval()
    amax, ref = ranges_and_outputs(module, spec, feeds)
    half = half_copy(module)

    def error(keep: Sequence[str]) -> float:
        """The network's rel. L2 error in FP16 with ``keep`` in FP32."""
        with fp32_modules(half, module, keep) as mixed:
            return rel_l2(run(mixed, spec, feeds, torch.float16), ref)

    err_fp16 = error(())
    overflow, err = _overflow_keep(half, module, spec, feeds, amax, cfg, error, err_fp16)
    keep = [KeptModule(n, "overflow", a) for n, a in sorted(overflow.items())]
    local = local_errors(module, spec, feeds) if cfg.candidates and math.isfinite(err) else {}
    ranked = sorted(((n, e) for n, e in local.items() if not any(inside(n, k.name) for k in keep)),
                    key=lambda x: -x[1])
    candidates = error_candidates([n for n, _ in ranked[: cfg.candidates]], amax)
    keep, err = _error_keep(keep, err, candidates, cfg, error)
    return NetworkPrecision(network, tuple(keep), err_fp16, err, max(amax.values(), default=0.0), tuple(ranked[:16]))


def _overflow_keep(half, module, spec, feeds, amax, cfg: PrecisionConfig, error, err_fp16: float):
    """Modules kept for overflow ({name: largest |activation|}) and the error with them in FP32."""
    overflow = overflow_modules(amax, large_weights(module, cfg.overflow_limit), cfg.overflow_limit)
    err = error(list(overflow)) if overflow else err_fp16
    for _ in range(3):  # overflow that FP32 magnitudes do not show (inside a kernel)
        if math.isfinite(err):
            break
        with fp32_modules(half, module, overflow) as mixed:
            origins = nonfinite_origins(mixed, spec, feeds)
        merged = overflow_modules(amax, [*overflow, *origins], cfg.overflow_limit)
        if set(merged) == set(overflow):
            break
        overflow, err = merged, error(list(merged))
    return overflow, err


def _error_keep(keep: list[KeptModule], err: float, candidates: list[str], cfg: PrecisionConfig, error):
    """Greedy: add the candidate whose FP32 lowers the error most, while it is worth it."""
    keep = list(keep)
    while candidates and sum(k.reason == "error" for k in keep) < cfg.max_keep:
        trials = {c: error([*(k.name for k in keep), c]) for c in candidates}
        best = min(trials, key=trials.get)
        gain = err - trials[best]
        if not (gain > 0 and (err > cfg.target_rel_l2 or gain >= cfg.dominant_share * err)):
            break
        keep.append(KeptModule(best, "error", trials[best]))
        candidates = [c for c in candidates if not inside(c, best) and not inside(best, c)]
        err = trials[best]
    return keep, err


# ---------------------------------------------------------------------------------------
# The map in the bundle


def json_number(x: float):
    """JSON-safe float: non-finite values as strings ("inf"), as strict JSON has none."""
    return x if math.isfinite(x) else str(x)


def map_entry(result: NetworkPrecision, block_nodes: Sequence[str], onnxruntime: Mapping | None = None) -> dict:
    return {
        "keep_fp32": [{"module": k.name, "reason": k.reason, "value": json_number(k.value)} for k in result.keep],
        "onnx_nodes": list(block_nodes),
        "rel_l2_fp16": json_number(result.rel_l2_fp16),
        "rel_l2_with_map": json_number(result.rel_l2_with_map),
        "max_abs_fp32": json_number(result.max_abs_fp32),
        "local_errors": [[n, json_number(e)] for n, e in result.local_errors],
        "onnxruntime_fp16": dict(onnxruntime or {}),
    }


def write_precision_map(folder: str | Path, entries: Mapping[str, dict], cfg: PrecisionConfig, capture_sha256: str) -> Path:

    path = Path(folder) / MAP_FILE
    write_json(path, {"format_version": MAP_VERSION, "settings": dataclasses.asdict(cfg),
                      "capture_sha256": capture_sha256, "networks": dict(entries)})
    return path


def read_precision_map(folder: str | Path) -> dict[str, dict]:
    """{network: entry} of ``folder``/precision.json; {} when the bundle has no map."""

    path = Path(folder) / MAP_FILE
    if not path.is_file():
        return {}
    data = read_versioned_json(path, MAP_VERSION, "precision-map", "run adabldm-calibrate --precision-map again")
    return data["networks"]


def fp16_block_lists(folder: str | Path, networks) -> dict[str, list[str]]:
    """{network: ONNX nodes an FP16 build must keep in FP32} of ``networks`` that have any
    ({} without a map); the map is read once."""
    entries = read_precision_map(folder)
    return {name: nodes for name in networks if (nodes := list(entries.get(name, {}).get("onnx_nodes", [])))}
