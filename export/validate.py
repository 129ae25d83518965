"""Validation of exported graphs against their PyTorch modules, on random and captured inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.models import Models
from adabldm_ref.pipeline import OkImage, ProceduralMasks, plan_sample, prepare_ok_image

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


def capture_feeds(models: Models, resolution: int, steps: int = 10, per_network: int = 4) -> dict[str, list[dict]]:
    """The inputs each network really sees in a short reference run on a real texture.

    One sample on scikit-image's brick, every stage of the blended sampler; up to
    ``per_network`` feeds per network, spread over the run (free, latent and pixel stages).
    """
    from skimage import data

    from adabldm_engine.runtime import EnginePipeline, RecordingBackend, torch_engines

    engines = {k: RecordingBackend(v) for k, v in torch_engines(models, resolution).items()}
    cfg = GenerationConfig(resolution=resolution, sampler=SamplerConfig(steps=steps), adapt=AdaptConfig(iters=0))
    pipe = EnginePipeline(engines, models.tokenizer, models.vae, models.latent_scale, cfg)
    ok = [OkImage("skimage:brick", prepare_ok_image(data.brick(), resolution))]
    pipe.run([plan_sample(0, cfg, ok, ProceduralMasks(("blob",)))])
    captured = {}
    for name, engine in engines.items():
        feeds = engine.feeds
        if len(feeds) > per_network:
            idx = torch.linspace(0, len(feeds) - 1, per_network).round().long().tolist()
            feeds = [feeds[i] for i in idx]
        captured[name] = feeds
    return captured


def split_feeds(unet_control_feeds: Sequence[dict], controlnet) -> tuple[list[dict], list[dict]]:
    """Feeds of the split ControlNet and UNet graphs derived from folded-network feeds."""
    cn_names, cn_feeds, unet_feeds = controlnet.spec.input_names, [], []
    for feed in unet_control_feeds:
        cn_feed = {n: feed[n] for n in cn_names}
        residuals = {k: v.clone() for k, v in controlnet.infer(cn_feed).items()}
        cn_feeds.append(cn_feed)
        unet_feeds.append({n: feed[n] for n in ("sample", "timestep", "text_ctx")} | residuals)
    return cn_feeds, unet_feeds
