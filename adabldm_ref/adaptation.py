"""Online decoder adaptation (ALGORITHM.md, stage 4; the paper's "online adaptation").

For each sample a fresh copy of the VAE decoder is fine-tuned so that decoding the final
latent keeps the generated defect inside M and reproduces the OK image outside it.
The model's own decoder is never modified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import AdaptConfig


@dataclass(frozen=True)
class AdaptResult:
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1]: D_theta(z*)
    loss_first: float  # before any update
    loss_final: float  # of the returned image


def adaptation_loss(
    x: torch.Tensor, x_fg: torch.Tensor, x_ok: torch.Tensor, mask: torch.Tensor, preservation: float
) -> torch.Tensor:
    """MSE(x*M, x_fg*M) + lambda * MSE(x*(1-M), x_ok*(1-M)), each averaged over all pixels."""
    keep = 1 - mask
    return F.mse_loss(x * mask, x_fg * mask) + preservation * F.mse_loss(x * keep, x_ok * keep)


def adapt_decoder(
    vae,
    z_star: torch.Tensor,
    x_fg: torch.Tensor,
    x_ok: torch.Tensor,
    mask: torch.Tensor,
    cfg: AdaptConfig,
    latent_scale: float,
) -> AdaptResult:
    """Fine-tune a copy of ``vae.decoder`` for one sample; return D_theta(z*).

    z_star: (1, 4, h, w) scaled final latent; x_fg = D(z*) and x_ok: (1, 3, H, W) in
    [-1, 1]; mask: (1, 1, H, W), 1 = defect. AdamW on the decoder only (the
    post-quantisation conv stays frozen, as the authors), no schedule.
    """
    if z_star.shape[0] != 1:
        raise ValueError(f"adapt_decoder takes one sample, got a batch of {z_star.shape[0]}")
    decoder = copy.deepcopy(vae.decoder).requires_grad_(True)
    with torch.no_grad():
        h = vae.post_quant_conv(z_star / latent_scale)  # frozen: same value every iteration
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    with torch.no_grad():
        first = adaptation_loss(decoder(h), x_fg, x_ok, mask, cfg.preservation).item()
    with torch.enable_grad():
        for _ in range(cfg.iters):
            opt.zero_grad(set_to_none=True)
            adaptation_loss(decoder(h), x_fg, x_ok, mask, cfg.preservation).backward()
            opt.step()
    with torch.no_grad():
        image = decoder(h)
        final = adaptation_loss(image, x_fg, x_ok, mask, cfg.preservation).item()
    return AdaptResult(image=image, loss_first=first, loss_final=final)
