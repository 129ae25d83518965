"""Validation of exported graphs against their PyTorch modules, on random and captured inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .specs import NetworkSpec, random_inputs

TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2}  # relative L2 error per precision


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


def split_feeds(unet_control_feeds: Sequence[dict], controlnet) -> tuple[list[dict], list[dict]]:
    """Feeds of the split ControlNet and UNet graphs derived from folded-network feeds."""
    cn_names, cn_feeds, unet_feeds = controlnet.spec.input_names, [], []
    for feed in unet_control_feeds:
        cn_feed = {n: feed[n] for n in cn_names}
        residuals = {k: v.clone() for k, v in controlnet.infer(cn_feed).items()}
        cn_feeds.append(cn_feed)
        unet_feeds.append({n: feed[n] for n in ("sample", "timestep", "text_ctx")} | residuals)
    return cn_feeds, unet_feeds
