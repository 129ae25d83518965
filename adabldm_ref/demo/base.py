"""The demo base model: its architecture, its texture data, and its two training stages.

Same classes as SD-1.5 (AutoencoderKL at latent stride 8, UNet2DConditionModel, the local
CLIP-style text encoder and byte-level tokenizer), small enough to train on a 2-core CPU.
1. The VAE is trained as an autoencoder on random crops of scikit-image's brick, gravel and
   grass (flips, 90-degree rotations); the right quarter of each texture is held out and
   its crops give the validation PSNR.
2. The UNet is trained as a text-conditioned latent diffusion model (epsilon MSE at uniform
   timesteps of the 1000-step scaled-linear schedule) on latent crops of the same textures,
   prompt ``a {texture}`` (or ``a texture``), the empty prompt with probability ``empty_p``
   so that classifier-free guidance works. The text encoder stays at its seeded weights.
Every draw comes from one seeded generator: the same settings give the same weights
(on the same torch version and thread count).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..config import LATENT_SCALE, SchedulerConfig
from ..models import Models, encode_prompts, tiny_tokenizer

TEXTURES = ("brick", "gravel", "grass")  # scikit-image's, 512 x 512 gray
HOLDOUT = 128  # the right 128 columns of each texture are validation only


@dataclass(frozen=True)
class DemoSize:
    """Widths of the demo networks (``small``: the shipped one; ``test``: seconds in CI)."""

    vae_channels: tuple[int, ...] = (16, 32, 32, 64)  # 4 blocks: stride 8 as SD's VAE
    vae_layers: int = 1
    unet_channels: tuple[int, ...] = (32, 64, 64)  # (64, 128, 128): 9 s a step here, too slow
    unet_layers: int = 1
    text_width: int = 32  # CLIP hidden size (SD: 768)
    norm_groups: int = 16


TEST_SIZE = DemoSize(vae_channels=(8, 16, 16, 16), unet_channels=(16, 32, 32), text_width=32, norm_groups=8)


def build_demo_networks(size: DemoSize = DemoSize(), seed: int = 0) -> Models:
    """Untrained demo networks (seeded); ``controlnet`` is a placeholder from the UNet."""
    from diffusers import ControlNetModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=size.text_width, intermediate_size=2 * size.text_width,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            projection_dim=size.text_width, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=size.unet_layers,
            block_out_channels=size.unet_channels,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=size.text_width, attention_head_dim=8, norm_num_groups=size.norm_groups,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=size.vae_channels,
            layers_per_block=size.vae_layers, latent_channels=4, norm_num_groups=size.norm_groups,
            sample_size=256, scaling_factor=LATENT_SCALE,
        )
        controlnet = ControlNetModel.from_unet(unet)
    return Models(unet, controlnet, vae, text_encoder, tokenizer, name="demo")


# ---------------------------------------------------------------------------------------
# Data


def texture_arrays() -> dict[str, np.ndarray]:
    """name -> (512, 512) uint8 gray texture from scikit-image."""
    from skimage import data

    return {name: getattr(data, name)() for name in TEXTURES}


def split_textures(textures: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(train (3, 3, 384, 384): the top-left square, held-out (3, 3, 512, 128): the right
    strip) float32 RGB in [-1, 1]; the bottom-left 128 x 384 is unused."""
    x = torch.stack([torch.from_numpy(a).float() / 127.5 - 1.0 for a in textures.values()])[:, None]
    x = x.expand(-1, 3, -1, -1)
    return x[..., : -HOLDOUT, : -HOLDOUT].contiguous(), x[..., -HOLDOUT:].contiguous()


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations of (..., H, W)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def random_crops(images: torch.Tensor, n: int, crop: int, g: torch.Generator, step: int = 1) -> torch.Tensor:
    """n random crops (n, C, crop, crop) with random dihedral transforms; offsets multiple of ``step``."""
    out = []
    for _ in range(n):
        i = int(torch.randint(0, len(images), (1,), generator=g))
        img = images[i]
        h, w = img.shape[-2:]
        y = int(torch.randint(0, (h - crop) // step + 1, (1,), generator=g)) * step
        x = int(torch.randint(0, (w - crop) // step + 1, (1,), generator=g)) * step
        out.append(dihedral(img[:, y:y + crop, x:x + crop], int(torch.randint(0, 8, (1,), generator=g))))
    return torch.stack(out)


def validation_crops(held_out: torch.Tensor, crop: int = 128) -> torch.Tensor:
    """Fixed non-overlapping crops of the held-out strips: (3 * 512 // crop, 3, crop, crop)."""
    return torch.cat([held_out[:, :, y:y + crop, :crop] for y in range(0, held_out.shape[-2], crop)])


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (peak 2), over all values."""
    mse = float(F.mse_loss(a.clamp(-1, 1), b))
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


# ---------------------------------------------------------------------------------------
# Stage 1: the VAE


def cosine_to_tenth(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The rate falls from lr to lr / 10 along half a cosine over ``steps`` (both demo stages)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))


def update(loss: torch.Tensor, opt, sched, clip=None) -> float:
    """One optimiser step on ``loss`` (gradient norm clipped to 1 over ``clip`` if given); its value."""
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    sched.step()
    return loss.item()


def log_progress(log, stage: str, step: int, steps: int, losses: list[float], t0: float) -> None:
    """Every 100 steps and at the last: the mean loss of the last 100 and the seconds so far."""
    if step % 100 == 0 or step == steps - 1:
        log(f"{stage} step {step}/{steps} loss {np.mean(losses[-100:]):.5f} ({time.perf_counter() - t0:.0f} s)")


@dataclass(frozen=True)
class VaeRecipe:
    steps: int = 1200
    batch: int = 4
    crop: int = 64  # fully convolutional: 64 px crops train the 256 px decoder
    lr: float = 1e-3  # Adam, cosine to 10% over the steps
    kl_weight: float = 1e-6  # a near-deterministic autoencoder, latents close to unit scale


def train_vae(vae: AutoencoderKL, train: torch.Tensor, held_out: torch.Tensor, recipe: VaeRecipe,
              seed: int, log=print) -> dict:
    """Train ``vae`` in place; returns figures (validation PSNR per texture, seconds, latent std)."""
    g = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=recipe.lr)
    sched = cosine_to_tenth(opt, recipe.steps)
    t0, losses = time.perf_counter(), []
    for step in range(recipe.steps):
        x = random_crops(train, recipe.batch, recipe.crop, g)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        loss = F.mse_loss(vae.decode(z).sample, x) + recipe.kl_weight * post.kl().mean()
        losses.append(update(loss, opt, sched))
        log_progress(log, "vae", step, recipe.steps, losses, t0)
    vae.eval().requires_grad_(False)
    val = validation_crops(held_out)
    with torch.no_grad():
        mean = vae.encode(val).latent_dist.mean
        rec = vae.decode(mean).sample
    per = len(val) // len(TEXTURES)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": float(np.mean(losses[-50:])),
        "val_psnr_db": {n: round(psnr_db(rec[i * per:(i + 1) * per], val[i * per:(i + 1) * per]), 2)
                        for i, n in enumerate(TEXTURES)},
        "latent_std_scaled": round(float(mean.std()) * LATENT_SCALE, 3),
    }


# ---------------------------------------------------------------------------------------
# Stage 2: the UNet


@dataclass(frozen=True)
class UnetRecipe:
    steps: int = 600
    batch: int = 8
    latent_crop: int = 16  # 128 px of texture; the 32 x 32 latent of 256 px sees the same statistics
    lr: float = 3e-4  # AdamW, cosine to 10%
    empty_p: float = 0.1  # empty-prompt dropout for classifier-free guidance
    generic_p: float = 0.2  # prompt "a texture" instead of "a {texture}" (the run's default object)


def texture_latents(vae: AutoencoderKL, train: torch.Tensor, scale: float = LATENT_SCALE) -> torch.Tensor:
    """Scaled posterior means of the 8 dihedral copies of each training texture: (3, 8, 4, h, w)."""
    with torch.no_grad():
        return torch.stack([
            torch.stack([vae.encode(dihedral(t[None], k)).latent_dist.mean[0] for k in range(8)])
            for t in train
        ]) * scale


def train_unet(models: Models, latents: torch.Tensor, recipe: UnetRecipe, seed: int, log=print) -> dict:
    """Train ``models.unet`` in place on ``latents`` (3, 8, 4, h, w); returns figures."""
    g = torch.Generator().manual_seed(seed)
    prompts = ["", "a texture", *(f"a {n}" for n in TEXTURES)]
    emb = encode_prompts(models, prompts)  # (5, 77, d): fixed text encoder
    alphas = torch.linspace(SchedulerConfig.beta_start**0.5, SchedulerConfig.beta_end**0.5, 1000) ** 2
    abar = torch.cumprod(1 - alphas, 0)
    unet = models.unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.01)
    sched = cosine_to_tenth(opt, recipe.steps)
    c, t0, losses = recipe.latent_crop, time.perf_counter(), []
    n_tex, n_rot, _, h, w = latents.shape
    for step in range(recipe.steps):
        tex = torch.randint(0, n_tex, (recipe.batch,), generator=g)
        rot = torch.randint(0, n_rot, (recipe.batch,), generator=g)
        z0 = []
        for a, b in zip(tex.tolist(), rot.tolist()):
            lat = latents[a, b]
            y = int(torch.randint(0, lat.shape[-2] - c + 1, (1,), generator=g))
            x = int(torch.randint(0, lat.shape[-1] - c + 1, (1,), generator=g))
            z0.append(lat[:, y:y + c, x:x + c])
        z0 = torch.stack(z0)
        u = torch.rand(recipe.batch, generator=g)
        which = torch.where(u < recipe.empty_p, 0, torch.where(u < recipe.empty_p + recipe.generic_p, 1, 2 + tex))
        t = torch.randint(0, 1000, (recipe.batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        ab = abar[t].view(-1, 1, 1, 1)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=emb[which]).sample, noise)
        losses.append(update(loss, opt, sched, clip=unet.parameters()))
        log_progress(log, "unet", step, recipe.steps, losses, t0)
    unet.eval().requires_grad_(False)
    return {"seconds": round(time.perf_counter() - t0, 1), "final_loss": float(np.mean(losses[-100:]))}


def recipes_dict(vae: VaeRecipe, unet: UnetRecipe, size: DemoSize) -> dict:
    return {"size": asdict(size), "vae": asdict(vae), "unet": asdict(unet)}
