"""What the native runner (``adabldm-native``, native/ and CMakeLists.txt) reads: one
sample's inputs and noise, written by ``adabldm-run --dump-noise DIR``.

DIR/NNNN/ per sample:
  sample.json      seed, index, model identity, prompt, sampler and latent-mask settings
  ok.png           the OK image at the working resolution (RGB)
  trimap.png       0 / 127 / 255
  mask.png         the defect mask M (0 / 255)
  embeddings.npy   (2, 77, d) float32: the prompt's text embeddings, then the empty prompt's
                   (the runner has no tokenizer: it takes them precomputed)
  noise.npy        (N, 4, h, w) float32: every standard normal draw of the sample, in the
                   order the sampler makes them (z_T, the OK image's encoder noise, then
                   the loop's: a latent-blend draw per latent step; an encoder draw and a
                   re-noise draw per pixel step, no re-noise after the last with "next")
The tape is the sample's own torch generator (seeded by the plan's seed) drawn N times,
which is what :class:`adabldm_ref.sampler.NoiseSource` draws for that sample in any batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from adabldm_core.io import write_json, write_npy, write_png

from adabldm_ref.config import LATENT_STRIDE, GenerationConfig, SamplerConfig
from adabldm_ref.pipeline import SamplePlan
from adabldm_ref.sampler import renoise_index, stage_plan

FORMAT_VERSION = 1
FILES = ("sample.json", "ok.png", "trimap.png", "mask.png", "embeddings.npy", "noise.npy")


def noise_draws(cfg: SamplerConfig) -> int:
    """How many (4, h, w) normal draws one sample makes (the length of its noise tape)."""
    n = 2  # z_T, then the OK image's encoder noise (Pipeline.batch_inputs)
    if not cfg.blend:
        return n
    plan = stage_plan(cfg)
    for i in range(cfg.steps):
        n += plan.latent_edit(i)
        if plan.pixel_edit(i):
            n += 1 + (renoise_index(i, cfg.steps, cfg.renoise) is not None)
    return n


def noise_tape(seed: int, shape: tuple[int, ...], draws: int) -> np.ndarray:
    """(draws, *shape) float32: the sample's generator drawn ``draws`` times, in order."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(shape, generator=g) for _ in range(draws)]).numpy()


def sample_record(plan: SamplePlan, cfg: GenerationConfig, identity: str) -> dict:
    s, m = cfg.sampler, cfg.masks
    return {
        "format_version": FORMAT_VERSION,
        "index": plan.index,
        "seed": plan.seed,
        "identity": identity,
        "resolution": cfg.resolution,
        "prompt": cfg.prompt,
        "sampler": {"steps": s.steps, "guidance": s.guidance, "control_scale": s.control_scale, "eta": s.eta,
                    "latent_start": s.latent_start, "pixel_start": s.pixel_start, "renoise": s.renoise,
                    "blend": s.blend},
        "masks": {"binarize_at": m.binarize_at, "latent_dilation": m.latent_dilation, "keep_thin": m.keep_thin},
        "noise_draws": noise_draws(s),
    }


def write_native_inputs(folder: Path, plan: SamplePlan, cfg: GenerationConfig, embeddings: torch.Tensor,
                        identity: str) -> Path:
    """Write one sample's inputs for adabldm-native into ``folder`` (each file atomically;
    sample.json last). embeddings: (2, 77, d), the prompt's then the empty prompt's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h = cfg.resolution // LATENT_STRIDE
    write_png(folder / "ok.png", plan.rgb)
    write_png(folder / "trimap.png", plan.trimap)
    write_png(folder / "mask.png", plan.mask.astype(np.uint8) * 255)
    write_npy(folder / "embeddings.npy", embeddings.detach().float().cpu().numpy())
    write_npy(folder / "noise.npy", noise_tape(plan.seed, (4, h, h), noise_draws(cfg.sampler)))
    write_json(folder / "sample.json", sample_record(plan, cfg, identity))
    return folder
