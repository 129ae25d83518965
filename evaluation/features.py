"""Set figures of a synthetic set: a built-in diversity score, and IC-LPIPS / KID over
networks the user supplies as local files (nothing is ever downloaded).

Built-in features (no weights to fetch): a fixed random-weight convolutional net --
three 3x3 conv (stride 2) + ReLU stages of 32, 64, 128 channels, weights drawn from
N(0, 2 / fan_in) with torch seed 0 -- applied to a 64 x 64 crop around the defect (the
bounding box of M, padded by a quarter of its size, made square); the feature vector is
each stage's per-channel mean and standard deviation (448 values). Random conv features keep texture statistics (Ulyanov et al., CVPR 2018, "Deep Image
Prior"; Gatys-style Gram statistics of random nets), enough to tell a set of near-copies
from a varied one. The diversity score is the mean pairwise cosine distance (1 - cos) of
the feature vectors: 0 for identical defects, larger the more they differ (the features
are non-negative, so values stay well below 1: a few hundredths for one texture's
defects). It compares sets scored the same way; it is not LPIPS.

User networks (TorchScript files, ``torch.jit.load``, on the CPU):
- ``--lpips-weights FILE``: a module ``(x, y) -> (N,)`` distances of (N, 3, 64, 64) float
  images in [-1, 1] (e.g. LPIPS with its AlexNet/VGG backbone, scripted by the user).
  IC-LPIPS (Ojha et al., CVPR 2021): each generated crop joins the cluster of its nearest
  real training defect; the mean pairwise distance inside each cluster, averaged over the
  clusters with two or more members.
- ``--inception-weights FILE``: a module ``x -> (N, D)`` features of (N, 3, 299, 299) float
  images in [0, 1] (e.g. Inception-v3's pool features). KID (Binkowski et al., ICLR 2018):
  the unbiased MMD^2 with the cubic kernel (x.y / D + 1)^3, over whole images, generated
  against the real defect images.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from adabldm_core.io import InputError
from PIL import Image

CROP = 64
WIDTHS = (32, 64, 128)


def defect_crop(image: np.ndarray, mask: np.ndarray, size: int = CROP) -> np.ndarray:
    """(size, size, 3) uint8: the square around M's bounding box, padded by a quarter."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min(), 8) * 0.625
    h, w = mask.shape
    top, left = int(max(0, cy - half)), int(max(0, cx - half))
    bottom, right = int(min(h, cy + half + 1)), int(min(w, cx + half + 1))
    return np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((size, size), Image.BILINEAR))


def random_features(crops: np.ndarray) -> np.ndarray:
    """(N, 448) float64 features of (N, S, S, 3) uint8 crops (the fixed random net)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).double().div(127.5).sub(1.0)
    feats, cin = [], 3
    for width in WIDTHS:
        weight = torch.randn(width, cin, 3, 3, generator=g, dtype=torch.float64) * np.sqrt(2.0 / (cin * 9))
        x = F.relu(F.conv2d(x, weight, stride=2, padding=1))
        feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        cin = width
    return torch.cat(feats, 1).numpy()


def diversity(features: np.ndarray) -> float:
    """Mean pairwise cosine distance of the feature rows (nan for fewer than 2). The rows
    are not standardised over the set, so a set of near-copies scores near 0 however
    small its differences are."""
    if len(features) < 2:
        return float("nan")
    z = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    cos = z @ z.T
    iu = np.triu_indices(len(z), 1)
    return float(np.mean(1.0 - cos[iu]))


def load_user_net(path: Path | None, option: str, what: str):
    """A TorchScript module from a local file; an InputError names the option when absent."""
    if path is None:
        raise InputError(f"{what} needs {option} FILE: a local TorchScript file of its network (nothing is downloaded)")
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: file not found")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 -- torch raises several kinds for a file that is not TorchScript
        raise InputError(f"{option} {path}: not a TorchScript module ({exc})") from None


def _tensor(images: np.ndarray, size: int, unit: bool):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x if unit else x * 2 - 1


def ic_lpips(net, generated: np.ndarray, real: np.ndarray) -> float:
    """IC-LPIPS of (N, 64, 64, 3) generated crops clustered on (K, 64, 64, 3) real crops."""
    import torch

    g, r = _tensor(generated, CROP, False), _tensor(real, CROP, False)
    with torch.no_grad():
        to_real = torch.stack([net(g, r[k].expand_as(g)).reshape(-1) for k in range(len(r))], 1)  # (N, K)
        cluster = to_real.argmin(1)
        means = []
        for k in range(len(r)):
            members = g[cluster == k]
            if len(members) < 2:
                continue
            i, j = torch.triu_indices(len(members), len(members), 1)
            means.append(float(net(members[i], members[j]).mean()))
    return float(np.mean(means)) if means else float("nan")


def kid(net, generated: np.ndarray, real: np.ndarray) -> float:
    """Unbiased MMD^2 (cubic polynomial kernel) of the network's features."""
    import torch

    with torch.no_grad():
        x = net(_tensor(generated, 299, True)).double().reshape(len(generated), -1)
        y = net(_tensor(real, 299, True)).double().reshape(len(real), -1)
    if len(x) < 2 or len(y) < 2:
        raise InputError("KID needs at least 2 generated and 2 real images")
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1))
                 - 2 * kxy.mean())


def crops_of(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([defect_crop(i, m) for i, m in zip(images, masks)])
