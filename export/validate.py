"""Validation of exported graphs against their PyTorch modules, on random and captured inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from adabldm_core.precision import Precision
from adabldm_core.specs import NetworkSpec, active, random_inputs

TOLERANCES = {Precision.FP32: 1e-4, Precision.FP16: 1e-2}  # relative L2 error per precision (EXPORT_PRECISIONS)


class ExportValidationError(RuntimeError):
    """An exported graph disagrees with its module beyond the tolerance."""


@dataclass(frozen=True)
class Agreement:
    max_abs: float
    rel_l2: float


def agreement(got: torch.Tensor, ref: torch.Tensor) -> Agreement:
    got, ref = got.double(), ref.double()
    rel = (got - ref).norm() / ref.norm().clamp_min(1e-30)
    return Agreement(float((got - ref).abs().max()), float(rel))


def compare(engine, reference, feeds: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Worst max-abs and rel-L2 per output of ``engine`` vs ``reference`` over ``feeds``."""
    worst: dict[str, dict[str, float]] = {}
    with active(engine, reference):
        for feed in feeds:
            ref = {k: v.clone() for k, v in reference.infer(feed).items()}
            got = engine.infer(feed)
            for name, r in ref.items():
                a = agreement(got[name], r)
                w = worst.setdefault(name, {"max_abs": 0.0, "rel_l2": 0.0})
                w["max_abs"], w["rel_l2"] = max(w["max_abs"], a.max_abs), max(w["rel_l2"], a.rel_l2)
    return worst


def random_feeds(spec: NetworkSpec, batch_sizes: Sequence[int], vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [random_inputs(spec, b, g, vocab) for b in batch_sizes]
