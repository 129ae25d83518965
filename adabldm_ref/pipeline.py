"""The AdaBLDM reference pipeline: one call turns OK images + defect masks into samples.

Per sample: seed -> trimap, defect mask M, latent mask -> blended DDIM (stages 1-3) ->
online decoder adaptation (stage 4). Every sample has its own seed derived from
(base seed, sample index), so a sample never changes with batch size or order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from adabldm_core.metrics import masked_psnr
from diffusers import DDIMScheduler
from PIL import Image

from .adaptation import AdaptResult, adapt_decoder
from .config import LATENT_STRIDE, AdaptConfig, GenerationConfig
from .masks import (
    Placement,
    PlacementError,
    SizedToForeground,
    component_sides,
    foreground_mask,
    latent_keep_mask,
    make_trimap,
    place_defect,
    resize_gray,
)
from .models import Models, encode_prompts, make_scheduler
from .procedural import KINDS, procedural_mask
from .sampler import (
    BlendTargets,
    Codec,
    ControlNetCFG,
    DdimSchedule,
    EpsFn,
    NoiseSource,
    SchedulerStep,
    Step,
    VaeCodec,
    ddim_schedule,
    sample_blended,
    stepped_scheduler,
)


def sample_seed(base_seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded ``base_seed``."""
    state = np.random.SeedSequence([base_seed, index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Gray (H, W), RGB or RGBA (H, W, 3|4) uint8 -> RGB (H, W, 3) uint8."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise ValueError(f"image of shape {image.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")


def prepare_ok_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """Any-size gray/RGB/RGBA uint8 image -> (resolution, resolution, 3) uint8."""
    rgb = to_rgb(image)
    if rgb.shape[:2] != (resolution, resolution):
        rgb = np.asarray(Image.fromarray(rgb).resize((resolution, resolution), Image.BICUBIC))
    return np.ascontiguousarray(rgb)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [-1, 1] -> (H, W, 3) uint8."""
    y = ((x[0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class OkImage:
    """A defect-free image at the working resolution, with an optional foreground mask."""

    name: str
    rgb: np.ndarray  # (R, R, 3) uint8
    foreground: np.ndarray | None = None  # (R, R) bool; None: from MaskConfig.foreground


class MaskSource(Protocol):
    def draw(self, rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
        """(name, (size, size) uint8 defect mask) for one sample."""


@dataclass(frozen=True)
class RealMasks:
    """Few-shot real defect masks (any size; resized to the working resolution)."""

    masks: tuple[tuple[str, np.ndarray], ...]

    def draw(self, rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
        name, mask = self.masks[int(rng.integers(len(self.masks)))]
        return name, resize_gray(mask, size)


@dataclass(frozen=True)
class ProceduralMasks:
    """Generated blobs, scratches and cracks, for users without real masks."""

    kinds: tuple[str, ...] = KINDS

    def draw(self, rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        return f"procedural:{kind}", procedural_mask(kind, rng, size)


@dataclass(frozen=True)
class SamplePlan:
    """Everything about one sample decided before diffusion."""

    index: int
    seed: int
    source: str
    mask_source: str
    rgb: np.ndarray  # (R, R, 3) uint8 OK image
    trimap: np.ndarray  # (R, R) uint8, 0 / 127 / 255
    mask: np.ndarray  # (R, R) bool, M
    m_keep: np.ndarray  # (R/8, R/8) float32, 1 = keep OK latent
    placement: Placement


@dataclass
class Sample:
    plan: SamplePlan
    image: np.ndarray  # adapted, (R, R, 3) uint8
    blended: np.ndarray  # before adaptation, (R, R, 3) uint8
    timings: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def mask_uint8(self) -> np.ndarray:
        return self.plan.mask.astype(np.uint8) * 255


def sized_to_foreground(masks: MaskSource, fg: np.ndarray | None, resolution: int) -> MaskSource:
    """Procedural masks drawn at the size of one of the foreground's components (sized
    for a texture, they fit nowhere on a small object); any other source as it is. On a
    full foreground (None: the whole image) the source itself: the same draws as without sizing."""
    if not isinstance(masks, ProceduralMasks) or fg is None or fg.all():
        return masks
    sides, areas = component_sides(fg)
    return masks if sides == (resolution,) else SizedToForeground(masks, sides, areas)


def plan_sample(
    index: int, cfg: GenerationConfig, ok_images: Sequence[OkImage], masks: MaskSource
) -> SamplePlan:
    """Sample ``index`` uses OK image ``index % len(ok_images)`` and a seeded defect mask."""
    if not ok_images:
        raise ValueError("no OK images to generate from")
    seed = sample_seed(cfg.seed, index)
    rng = np.random.default_rng(seed)
    ok = ok_images[index % len(ok_images)]
    fg = ok.foreground
    if fg is None:
        gray = np.asarray(Image.fromarray(ok.rgb).convert("L"))
        fg = foreground_mask(gray, cfg.masks.foreground)
    mask_name, source_mask = sized_to_foreground(masks, fg, cfg.resolution).draw(rng, cfg.resolution)
    try:
        mask, placement = place_defect(source_mask, fg, cfg.masks, rng)
    except PlacementError as exc:  # name the mask and the image: which one to fix or drop
        raise PlacementError(f"{mask_name} on {ok.name}: {exc}") from None
    trimap = make_trimap(fg, mask)
    m_keep = latent_keep_mask(trimap, LATENT_STRIDE, cfg.masks)
    return SamplePlan(index, seed, ok.name, mask_name, ok.rgb, trimap, mask, m_keep, placement)


# ---------------------------------------------------------------------------------------
# The parts of a pipeline


class Denoiser(Protocol):
    def eps_fn(self, hint: torch.Tensor) -> EpsFn:
        """eps(z, t) with classifier-free guidance for a batch of (B, 3, H, W) trimaps."""


class Stepper(Protocol):
    def step_for(self, denoiser: Denoiser, hint: torch.Tensor) -> Step:
        """The denoising step of one batch."""


class Adapter(Protocol):
    def __call__(self, z: torch.Tensor, x_fg: torch.Tensor, x_ok: torch.Tensor,
                 mask: torch.Tensor) -> list[AdaptResult]:
        """Stage 4 for each row: z* (B, 4, h, w), x_fg / x_ok (B, 3, H, W), M (B, 1, H, W)."""


def cfg_contexts(embeddings: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(2b, 77, d) UNet context (uncond rows first) and ControlNet context (the empty prompt's)
    from embeddings (2, 77, d), the prompt's then the empty prompt's."""
    prompt_emb, empty_emb = embeddings.split(1)
    text_ctx = torch.cat([empty_emb.expand(b, -1, -1), prompt_emb.expand(b, -1, -1)])
    return text_ctx, empty_emb.expand(2 * b, -1, -1).contiguous()


@dataclass(frozen=True)
class ModuleDenoiser:
    """The reference modules: UNet + ControlNet with CFG in one 2B batch.

    embeddings: (2, 77, d), the prompt's then the empty prompt's."""

    unet: torch.nn.Module
    controlnet: torch.nn.Module
    embeddings: torch.Tensor
    guidance: float
    control_scale: float

    def eps_fn(self, hint: torch.Tensor) -> ControlNetCFG:
        text_ctx, control_ctx = cfg_contexts(self.embeddings, hint.shape[0])
        return ControlNetCFG(self.unet, self.controlnet, text_ctx, control_ctx, hint, self.guidance, self.control_scale)


@dataclass(frozen=True)
class SchedulerStepper:
    """The reference's steps: diffusers' ``DDIMScheduler.step`` on a private scheduler."""

    scheduler: DDIMScheduler  # set to the step count; owned here, never set again
    eta: float = 0.0

    def step_for(self, denoiser: Denoiser, hint: torch.Tensor) -> SchedulerStep:
        return SchedulerStep(denoiser.eps_fn(hint), self.scheduler, self.eta)


@dataclass(frozen=True)
class ReferenceAdapter:
    """Stage 4 the reference's way: a fresh decoder copy per sample, one after another."""

    vae: torch.nn.Module
    cfg: AdaptConfig
    latent_scale: float

    def __call__(self, z, x_fg, x_ok, mask) -> list[AdaptResult]:
        return [
            adapt_decoder(self.vae, z[b : b + 1], x_fg[b : b + 1], x_ok[b : b + 1], mask[b : b + 1],
                          self.cfg, self.latent_scale)
            for b in range(z.shape[0])
        ]


def sample_quality(plan: SamplePlan, blended: np.ndarray, image: np.ndarray, adapted: AdaptResult) -> dict[str, float]:
    """The figures recorded per sample: background PSNR before/after adaptation, its loss."""
    keep = ~plan.mask
    return {
        "bg_psnr_before": masked_psnr(blended, plan.rgb, keep),
        "bg_psnr_after": masked_psnr(image, plan.rgb, keep),
        "adapt_loss_first": adapted.loss_first,
        "adapt_loss_final": adapted.loss_final,
    }


# ---------------------------------------------------------------------------------------
# The pipeline


class Pipeline:
    """AdaBLDM composed of its parts: networks (a denoiser and a codec), a denoising step
    and an adapter, each chosen once by a builder (:func:`reference_pipeline`,
    ``adabldm_engine.runtime.engine_pipeline``). The loop, the plans and the bookkeeping
    are the same whatever the parts. ``parts`` are closed with the pipeline (``with``).
    """

    def __init__(self, cfg: GenerationConfig, denoiser: Denoiser, codec: Codec, stepper: Stepper,
                 adapter: Adapter, schedule: DdimSchedule, device: str | torch.device = "cpu",
                 parts: Sequence = ()):
        self.cfg, self.device = cfg, torch.device(device)
        self.denoiser, self.codec, self.stepper, self.adapter = denoiser, codec, stepper, adapter
        self.schedule = schedule
        self.parts = tuple(parts)
        self.closed = False

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the parts' resources (engine sessions, contexts); idempotent."""
        if not self.closed:
            self.closed = True
            for part in self.parts:
                part.deactivate()

    def batch_inputs(self, plans: Sequence[SamplePlan]):
        """(noise source, z_T, blend targets, trimap hint) of a batch, noise drawn per sample."""
        dev = self.device
        noise = NoiseSource([torch.Generator().manual_seed(p.seed) for p in plans], dev)
        x_ok = torch.cat([to_tensor(p.rgb) for p in plans]).to(dev)
        mask = torch.stack([torch.from_numpy(p.mask).float()[None] for p in plans]).to(dev)
        m_keep = torch.stack([torch.from_numpy(p.m_keep)[None] for p in plans]).to(dev)
        hint = torch.stack([torch.from_numpy(p.trimap).float().div(255).expand(3, -1, -1) for p in plans])
        r = self.cfg.resolution // LATENT_STRIDE
        z_t = noise.randn(4, r, r)  # drawn first: z_T is the first noise of each sample
        z_ok = self.codec.encode(x_ok, noise.randn(4, r, r))
        return noise, z_t, BlendTargets(z_ok=z_ok, m_keep=m_keep, x_ok=x_ok, mask=mask), hint.to(dev)

    @torch.no_grad()
    def diffuse(self, plans: Sequence[SamplePlan], callback: Callable[[int], None] | None = None):
        """Stages 1-3 for a batch: (z*, x_ok, mask), z* (B, 4, h, w) scaled latents."""
        if self.closed:
            raise RuntimeError("pipeline is closed")
        noise, z_t, targets, hint = self.batch_inputs(plans)
        step = self.stepper.step_for(self.denoiser, hint)
        z = sample_blended(step, z_t, self.schedule, self.cfg.sampler, targets, self.codec, noise, callback)
        return z, targets.x_ok, targets.mask

    def run(
        self,
        plans: Sequence[SamplePlan],
        finish: Callable[[SamplePlan], bool] | None = None,
        callback: Callable[[int], None] | None = None,
    ) -> list[Sample]:
        """Generate one batch: diffusion batched, adaptation per sample.

        ``finish`` selects the plans to adapt and return (default: all); the others still
        take part in the batched diffusion, so a batch is always computed the same way.
        """
        t0 = time.perf_counter()
        z, x_ok, mask = self.diffuse(plans, callback)
        with torch.no_grad():
            x_fg = self.codec.decode(z)
        diffusion_s = (time.perf_counter() - t0) / len(plans)
        rows = [b for b, plan in enumerate(plans) if finish is None or finish(plan)]
        t1 = time.perf_counter()
        adapted = self.adapter(z[rows], x_fg[rows], x_ok[rows], mask[rows])
        adapt_s = (time.perf_counter() - t1) / max(len(rows), 1)
        samples = []
        for b, result in zip(rows, adapted):
            blended, image = to_uint8(x_fg[b : b + 1]), to_uint8(result.image)
            samples.append(Sample(plans[b], image=image, blended=blended,
                                  timings={"diffusion_s": diffusion_s, "adapt_s": adapt_s},
                                  quality=sample_quality(plans[b], blended, image, result)))
        return samples

    def generate(
        self,
        num: int,
        ok_images: Sequence[OkImage],
        masks: MaskSource,
        batch_size: int = 1,
        start: int = 0,
    ) -> list[Sample]:
        """Samples ``start .. start+num-1`` (same result for any ``batch_size``)."""
        plans = [plan_sample(i, self.cfg, ok_images, masks) for i in range(start, start + num)]
        out: list[Sample] = []
        for k in range(0, num, batch_size):
            out.extend(self.run(plans[k : k + batch_size]))
        return out


def reference_pipeline(models: Models, cfg: GenerationConfig, device: str | torch.device = "cpu",
                       adapter: Adapter | None = None) -> Pipeline:
    """The reference: the diffusers modules, diffusers' DDIM step, the per-sample adaptation
    loop (or ``adapter``). Text embeddings are computed once here."""
    embeddings = encode_prompts(models, [cfg.prompt, ""]).to(device)
    s = cfg.sampler
    scheduler = make_scheduler()
    return Pipeline(
        cfg,
        ModuleDenoiser(models.unet, models.controlnet, embeddings, s.guidance, s.control_scale),
        VaeCodec(models.vae, models.latent_scale),
        SchedulerStepper(stepped_scheduler(scheduler, s.steps), s.eta),
        adapter or ReferenceAdapter(models.vae, cfg.adapt, models.latent_scale),
        ddim_schedule(scheduler, s.steps, device),
        device,
    )
