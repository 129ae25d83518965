"""The blended DDIM step as plain tensor ops on precomputed coefficients.

The reference loop (:func:`adabldm_ref.sampler.sample_blended`) asks diffusers'
DDIMScheduler for every step, with Python-side indexing by timestep. Here the same maths
(DDIM with eta = 0, the latent blend of stage 2, the re-noising of stage 3) reads its
coefficients from a table made once, so one step is a fixed sequence of tensor ops with
no host synchronisation: it can be captured in a CUDA graph (engine/graphed.py).
Li et al., arXiv 2402.19330, Sec. 3; DDIM: Song et al., arXiv 2010.02502, eq. 12.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from diffusers import DDIMScheduler

from adabldm_ref.config import SamplerConfig
from adabldm_ref.sampler import BlendTargets, Codec, EpsFn, NoiseSource, pixel_blend, renoise_index, stage_plan


@dataclass(frozen=True)
class DdimTable:
    """Per-step DDIM coefficients for one step count, on one device.

    timesteps: (S,) float32, t_i (981, 961, ..., 1 for 50 steps).
    coef: (S, 4) float32, per step: sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev), sqrt(1 - a_prev)
    with a = alphas_cumprod, prev = t - 1000 / S (a_prev = final alpha past the start).
    """

    timesteps: torch.Tensor
    coef: torch.Tensor

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """q_sample(x0, t_i): sqrt(a_t) x0 + sqrt(1 - a_t) noise (diffusers' add_noise)."""
        return self.coef[i, 0] * x0 + self.coef[i, 1] * noise


def ddim_table(scheduler: DDIMScheduler, steps: int, device: str | torch.device = "cpu") -> DdimTable:
    """The coefficients diffusers' DDIMScheduler.step/add_noise use for ``steps`` steps."""
    scheduler.set_timesteps(steps)
    ts = scheduler.timesteps.long()
    ac = scheduler.alphas_cumprod.to(torch.float32)
    prev = ts - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)
    a_t = ac[ts]
    a_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], final)
    beta_t, beta_prev = 1 - a_t, 1 - a_prev
    coef = torch.stack([a_t**0.5, beta_t**0.5, a_prev**0.5, beta_prev**0.5], dim=1)
    return DdimTable(ts.to(torch.float32).to(device), coef.to(device))


def ddim_blend_step(
    eps_fn: EpsFn,
    z: torch.Tensor,
    t: torch.Tensor,
    coef: torch.Tensor,
    blend: torch.Tensor,
    z_ok: torch.Tensor,
    m_keep: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent blend, CFG eps, DDIM update (eta 0): returns (z_prev, pred_x0).

    z, z_ok, noise: (B, 4, h, w) float32; m_keep: (B, 1, h, w), 1 = keep the OK latent;
    t: () float32 timestep; coef: (4,) row of :class:`DdimTable`; blend: () float32, 1 in
    the latent-editing window, else 0 (then z passes unchanged and ``noise`` is unused).
    """
    sqrt_a, sqrt_1ma, sqrt_a_prev, sqrt_1ma_prev = coef.unbind()
    keep = m_keep * blend
    z_ok_t = sqrt_a * z_ok + sqrt_1ma * noise  # q_sample(z_OK, t)
    z = z_ok_t * keep + z * (1 - keep)  # latent blend
    eps = eps_fn(z, t)
    pred_x0 = (z - sqrt_1ma * eps) / sqrt_a
    z_prev = sqrt_a_prev * pred_x0 + sqrt_1ma_prev * eps
    return z_prev, pred_x0


class StepFn(Protocol):
    def __call__(
        self, i: int, z: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@torch.no_grad()
def sample_blended_static(
    step: StepFn,
    z: torch.Tensor,
    table: DdimTable,
    cfg: SamplerConfig,
    targets: BlendTargets,
    codec: Codec,
    noise: NoiseSource,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """:func:`adabldm_ref.sampler.sample_blended` over a step function; returns z_0.

    ``step(i, z, noise)`` does the latent blend (when ``noise`` is given), the CFG eps and
    the DDIM update of step i (see :class:`adabldm_engine.graphed.StepRunner`). Noise is
    drawn in the reference's order, so both loops give the same samples.
    """
    if len(table) != cfg.steps:
        raise ValueError(f"DDIM table of {len(table)} steps, sampler config has {cfg.steps}")
    plan = stage_plan(cfg)
    blend = cfg.blend and targets is not None
    shape = tuple(z.shape[1:])
    for i in range(cfg.steps):
        latent_noise = noise.randn(*shape) if blend and plan.latent_edit(i) else None
        z, pred_x0 = step(i, z, latent_noise)
        if blend and plan.pixel_edit(i):
            z0_b = pixel_blend(codec, pred_x0, targets, noise)
            j = renoise_index(i, cfg.steps, cfg.renoise)
            z = z0_b if j is None else table.add_noise(z0_b, noise.randn(*shape), j)
        if callback is not None:
            callback(i)
    return z.clone()
