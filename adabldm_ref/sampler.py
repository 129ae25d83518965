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


def pixel_blend(codec: Codec, pred_x0: torch.Tensor, targets: BlendTargets, noise: NoiseSource) -> torch.Tensor:
    """The pixel stage's x0: decode, keep the OK image outside the defect mask, re-encode
    (the encoder's noise drawn here, in the reference's order)."""
    x0 = codec.decode(pred_x0)
    x_b = x0 * targets.mask + targets.x_ok * (1 - targets.mask)  # pixel blend
    return codec.encode(x_b, noise.randn(*pred_x0.shape[1:]))


class Step(Protocol):
    def __call__(self, i: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoising step i from latent z (B, 4, h, w): (z_prev, pred_x0)."""


@dataclass(frozen=True)
class DdimSchedule:
    """Per-step DDIM coefficients for one step count: the schedule as data.

    timesteps: (S,) float32, t_i (981, 961, ..., 1 for 50 steps).
    coef: (S, 4) float32, per step: sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev), sqrt(1 - a_prev)
    with a = alphas_cumprod, prev = t - 1000 / S (a_prev = final alpha past the start).
    """

    timesteps: torch.Tensor
    coef: torch.Tensor

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """q_sample(x0, t_i): sqrt(a_t) x0 + sqrt(1 - a_t) noise (diffusers' add_noise, same arithmetic)."""
        return self.coef[i, 0] * x0 + self.coef[i, 1] * noise

    def to(self, device: str | torch.device) -> "DdimSchedule":
        return DdimSchedule(self.timesteps.to(device), self.coef.to(device))


def stepped_scheduler(scheduler: DDIMScheduler, steps: int) -> DDIMScheduler:
    """A private copy of ``scheduler`` set to ``steps`` steps (the given one is not mutated)."""
    own = DDIMScheduler.from_config(scheduler.config)
    own.set_timesteps(steps)
    return own


def ddim_schedule(scheduler: DDIMScheduler, steps: int, device: str | torch.device = "cpu") -> DdimSchedule:
    """The coefficients diffusers' DDIMScheduler.step/add_noise use for ``steps`` steps."""
    own = stepped_scheduler(scheduler, steps)
    ts = own.timesteps.long()
    ac = own.alphas_cumprod.to(torch.float32)
    prev = ts - own.config.num_train_timesteps // own.num_inference_steps
    final = torch.as_tensor(own.final_alpha_cumprod, dtype=torch.float32)
    a_t = ac[ts]
    a_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], final)
    beta_t, beta_prev = 1 - a_t, 1 - a_prev
    coef = torch.stack([a_t**0.5, beta_t**0.5, a_prev**0.5, beta_prev**0.5], dim=1)
    return DdimSchedule(ts.to(torch.float32).to(device), coef.to(device))


class SchedulerStep:
    """The reference's step: CFG eps, then diffusers' ``DDIMScheduler.step`` (its own copy)."""

    def __init__(self, eps_fn: EpsFn, scheduler: DDIMScheduler, eta: float = 0.0):
        self.eps_fn, self.scheduler, self.eta = eps_fn, scheduler, eta

    def __call__(self, i: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.scheduler.timesteps[i]
        out = self.scheduler.step(self.eps_fn(z, t), t, z, eta=self.eta)
        return out.prev_sample, out.pred_original_sample


@torch.no_grad()
def sample_blended(
    step: Step,
    z: torch.Tensor,
    schedule: DdimSchedule,
    cfg: SamplerConfig,
    targets: BlendTargets | None,
    codec: Codec | None,
    noise: NoiseSource,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run DDIM from z = z_T (B, 4, h, w) with ``step``; blend in the stage windows; return z_0.

    The one denoising loop: ``step`` is the reference's (:class:`SchedulerStep`) or the
    runtime's static-buffer one; the blends and the noise order are here, the same for both.
    With ``targets=None`` (or ``cfg.blend`` False) this is plain ControlNet DDIM.
    """
    if len(schedule) != cfg.steps:
        raise ValueError(f"DDIM schedule of {len(schedule)} steps, sampler config has {cfg.steps}")
    plan = stage_plan(cfg)
    blend = cfg.blend and targets is not None
    latent_shape = tuple(z.shape[1:])
    for i in range(cfg.steps):
        if blend and plan.latent_edit(i):
            z_ok_t = schedule.add_noise(targets.z_ok, noise.randn(*latent_shape), i)
            z = z_ok_t * targets.m_keep + z * (1 - targets.m_keep)  # latent blend
        z, pred_x0 = step(i, z)
        if blend and plan.pixel_edit(i):
            z0_b = pixel_blend(codec, pred_x0, targets, noise)
            j = renoise_index(i, cfg.steps, cfg.renoise)
            z = z0_b if j is None else schedule.add_noise(z0_b, noise.randn(*latent_shape), j)
        if callback is not None:
            callback(i)
    return z.clone()  # a step may return its own buffers
