"""The downstream segmenter: a small supervised U-Net, its training and its anomaly maps.

Architecture (Ronneberger et al., MICCAI 2015, narrowed): RGB in [-1, 1] -> four encoder
stages of two 3x3 conv + GroupNorm(8) + ReLU, widths w, 2w, 4w, 8w (w = 16 by default),
2x2 max-pool between them; a decoder of bilinear 2x upsampling, concatenation with the
encoder stage of the same size and two 3x3 convs; a 1x1 conv to one logit per pixel.
0.12 M parameters at w = 8 (the default: on a shared 2-core CPU a step of 8 images at
128 px takes about 1 s), 0.49 M at w = 16. The anomaly map is the sigmoid of the logit.

Training (one arm, one seed): ``steps`` Adam steps (lr 1e-3, cosine decay to 0), each on
a batch of ``batch`` images: half defect pairs drawn uniformly from the arm's defect set,
half OK images (empty masks) from the OK training images, each under a random flip and
90-degree turn. Loss: binary cross-entropy + soft Dice over the batch. The seed sets the
initial weights and every draw, so two arms with one seed start from the same network.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Pairs


@dataclass(frozen=True)
class SegmenterConfig:
    size: int = 128  # px, square; small enough for the CPU, large enough for 3-6 px defects
    width: int = 8  # channels of the first stage (w); 16 on a GPU
    steps: int = 400  # optimiser steps per arm and seed
    batch: int = 8  # images per step: half defect pairs, half OK images
    lr: float = 1e-3  # Adam, cosine-decayed to 0 over ``steps``
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 8:
            raise ValueError(f"--size {self.size}: expected a multiple of 8, at least 16 (three 2x poolings)")
        if self.steps < 1 or self.batch < 2 or self.width < 8:
            raise ValueError(f"--steps {self.steps}, batch {self.batch}, width {self.width}: expected >= 1, >= 2, >= 8")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """(B, 3, S, S) float in [-1, 1] -> (B, 1, S, S) logits; S a multiple of 8."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.down = nn.ModuleList([_block(3, w[0]), _block(w[0], w[1]), _block(w[1], w[2]), _block(w[2], w[3])])
        self.up = nn.ModuleList([_block(w[3] + w[2], w[2]), _block(w[2] + w[1], w[1]), _block(w[1] + w[0], w[0])])
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)


def to_tensor(images: np.ndarray, device: str) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 in [-1, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for xi, yi in zip(x, y):
        k, flip = int(torch.randint(0, 4, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))
        xi, yi = torch.rot90(xi, k, (-2, -1)), torch.rot90(yi, k, (-2, -1))
        xs.append(xi.flip(-1) if flip else xi)
        ys.append(yi.flip(-1) if flip else yi)
    return torch.stack(xs), torch.stack(ys)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (1 - 2|P.T| / (|P| + |T|), over the batch)."""
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


def train_segmenter(defects: Pairs, ok: Pairs, cfg: SegmenterConfig, seed: int, bar=None) -> UNet:
    """A U-Net trained on ``defects`` (image, mask) pairs and ``ok`` images."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = UNet(cfg.width).to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    half = cfg.batch // 2
    dx, dy = to_tensor(defects.images, "cpu"), torch.from_numpy(defects.masks).float()[:, None]
    ox = to_tensor(ok.images, "cpu")
    model.train()
    for _ in range(cfg.steps):
        di = torch.randint(0, len(defects), (half,), generator=g)
        oi = torch.randint(0, len(ok), (cfg.batch - half,), generator=g)
        x = torch.cat([dx[di], ox[oi]])
        y = torch.cat([dy[di], torch.zeros(len(oi), *dy.shape[1:])])
        x, y = _augment(x, y, g)
        loss = loss_fn(model(x.to(cfg.device)), y.to(cfg.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
    return model.eval()


@torch.no_grad()
def anomaly_maps(model: UNet, images: np.ndarray, device: str, batch: int = 16) -> np.ndarray:
    """(N, S, S) float32 sigmoid maps of (N, S, S, 3) uint8 images."""
    out = [torch.sigmoid(model(to_tensor(images[i:i + batch], device)))[:, 0].float().cpu().numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out)
