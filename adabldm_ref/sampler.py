"""Three-stage blended DDIM with classifier-free guidance and a ControlNet.

Li et al., "A Novel Approach to Industrial Defect Generation through Blended Latent
Diffusion Model with Online Adaptation", arXiv 2402.19330, Sec. 3 (stages 1-3).
The scheduler maths (``step``, ``add_noise``) is diffusers' DDIMScheduler, not re-derived.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel

from .config import SamplerConfig

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StagePlan:
    """Step indices (0-based, of ``steps``) where each blended stage starts.

    Free diffusion: i < latent_start. Latent editing: latent_start <= i <= pixel_start.
    Pixel editing: i >= pixel_start (step ``pixel_start`` does both, as the authors).
    """

    steps: int
    latent_start: int
    pixel_start: int

    def latent_edit(self, i: int) -> bool:
        return self.latent_start <= i <= self.pixel_start

    def pixel_edit(self, i: int) -> bool:
        return i >= self.pixel_start


def stage_plan(cfg: SamplerConfig) -> StagePlan:
    """26/50 and 45/50 for 50 steps; the same fractions for any other step count."""
    return StagePlan(
        cfg.steps, round(cfg.latent_start * cfg.steps), round(cfg.pixel_start * cfg.steps)
    )


class NoiseSource:
    """Standard normal noise drawn per sample from that sample's own generator.

    A sample's noise never depends on which other samples share its batch.
    """

    def __init__(self, generators: list[torch.Generator], device: torch.device | str = "cpu"):
        self.generators = generators
        self.device = device

    def randn(self, *shape: int) -> torch.Tensor:
        """(B, *shape) float32 noise, row b from generator b (drawn on the CPU)."""
        rows = [torch.randn(shape, generator=g) for g in self.generators]
        return torch.stack(rows).to(self.device)


class Codec(Protocol):
    def encode(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class VaeCodec:
    """Scaled SD VAE: z = s * (mean + std * noise), x = D(z / s); x in [-1, 1]."""

    def __init__(self, vae, latent_scale: float):
        self.vae = vae
        self.scale = latent_scale

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std of (B, 3, H, W) images, each (B, 4, H/8, W/8)."""
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.std

    def encode(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, std = self.moments(x)
        return self.scale * (mean + std * noise)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale).sample


class ControlNetCFG:
    """eps(z, t) with classifier-free guidance, UNet and ControlNet in one 2B batch.

    ``text_ctx`` and ``control_ctx`` are (2B, 77, d): unconditional rows first, as
    diffusers. AdaBLDM gives the ControlNet the empty prompt's embedding in both halves.
    ``hint`` is the (B, 3, H, W) trimap in [0, 1].
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        text_ctx: torch.Tensor,
        control_ctx: torch.Tensor,
        hint: torch.Tensor,
        guidance: float,
        control_scale: float,
    ):
        self.unet, self.controlnet = unet, controlnet
        self.text_ctx, self.control_ctx = text_ctx, control_ctx
        self.hint = torch.cat([hint, hint])
        self.guidance, self.control_scale = guidance, control_scale

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        zz = torch.cat([z, z])
        down, mid = self.controlnet(
            zz,
            t,
            encoder_hidden_states=self.control_ctx,
            controlnet_cond=self.hint,
            conditioning_scale=self.control_scale,
            return_dict=False,
        )
        eps = self.unet(
            zz,
            t,
            encoder_hidden_states=self.text_ctx,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        return guide(eps, self.guidance)


def guide(eps: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance over a 2B batch of eps, unconditional rows first: (B, ...)."""
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


@dataclass(frozen=True)
class BlendTargets:
    """What blending keeps of the OK image (one row per sample).

    z_ok: (B, 4, h, w) scaled OK latent; m_keep: (B, 1, h, w), 1 = keep the OK latent;
    x_ok: (B, 3, H, W) in [-1, 1]; mask: (B, 1, H, W) pixel defect mask M, 1 = defect.
    """

    z_ok: torch.Tensor
    m_keep: torch.Tensor
    x_ok: torch.Tensor
    mask: torch.Tensor


def renoise_index(i: int, steps: int, mode: str) -> int | None:
    """Step whose timestep the pixel-blended x0 is re-noised to after step i (None: stay clean).

    "next" (the fix) re-noises to the following step's timestep and leaves the last x0
    clean; "current" (the authors' code) re-noises to step i's own timestep.
    """
    if mode == "current":
        return i
    return i + 1 if i + 1 < steps else None


def renoise_timestep(timesteps: torch.Tensor, i: int, mode: str) -> torch.Tensor | None:
    """Timestep the pixel-blended x0 is re-noised to after step i (None: stay clean)."""
    j = renoise_index(i, len(timesteps), mode)
    return None if j is None else timesteps[j]


def pixel_blend(codec: Codec, pred_x0: torch.Tensor, targets: BlendTargets, noise: NoiseSource) -> torch.Tensor:
    """The pixel stage's x0: decode, keep the OK image outside the defect mask, re-encode
    (the encoder's noise drawn here, in the reference's order)."""
    x0 = codec.decode(pred_x0)
    x_b = x0 * targets.mask + targets.x_ok * (1 - targets.mask)  # pixel blend
    return codec.encode(x_b, noise.randn(*pred_x0.shape[1:]))


@torch.no_grad()
def sample_blended(
    eps_fn: EpsFn,
    z: torch.Tensor,
    scheduler: DDIMScheduler,
    cfg: SamplerConfig,
    targets: BlendTargets | None,
    codec: Codec | None,
    noise: NoiseSource,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run DDIM from z = z_T (B, 4, h, w); blend in the stage windows; return z_0.

    With ``targets=None`` (or ``cfg.blend`` False) this is plain ControlNet DDIM.
    """
    scheduler.set_timesteps(cfg.steps)
    timesteps = scheduler.timesteps
    plan = stage_plan(cfg)
    blend = cfg.blend and targets is not None
    latent_shape = tuple(z.shape[1:])
    for i, t in enumerate(timesteps):
        if blend and plan.latent_edit(i):
            z_ok_t = scheduler.add_noise(targets.z_ok, noise.randn(*latent_shape), t)
            z = z_ok_t * targets.m_keep + z * (1 - targets.m_keep)  # latent blend
        step = scheduler.step(eps_fn(z, t), t, z, eta=cfg.eta)
        z = step.prev_sample
        if blend and plan.pixel_edit(i):
            z0_b = pixel_blend(codec, step.pred_original_sample, targets, noise)
            t_re = renoise_timestep(timesteps, i, cfg.renoise)
            z = z0_b if t_re is None else scheduler.add_noise(z0_b, noise.randn(*latent_shape), t_re)
        if callback is not None:
            callback(i)
    return z
