"""Image quality figures recorded per sample: PSNR, over all pixels or a region, and the
quality of a synthetic defect image against its OK source (:func:`sample_quality`).

PSNR is one formula, in float64: 10 log10(peak^2 / MSE), inf for identical images. ``peak``
is the range of the values: 255 for uint8 images, 2 for images in [-1, 1]. scipy and
scikit-image are imported inside the functions that use them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


def _float64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device and of any dtype (bf16 too)
        x = x.detach().cpu().double()
    return np.asarray(x, dtype=np.float64)


def psnr(a, b, peak: float = 255.0) -> float:
    """PSNR (dB) of two images (numpy arrays or torch tensors) of one shape, over all
    their values; inf if they are identical."""
    a, b = _float64(a), _float64(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes {a.shape} and {b.shape} do not match")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def masked_psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray, peak: float = 255.0) -> float:
    """PSNR (dB) of uint8 images (H, W, C) over the pixels where ``region`` (H, W) is True.

    Returns inf for identical regions and nan for an empty region.
    """
    if a.shape != b.shape or a.shape[:2] != region.shape:
        raise ValueError(f"shapes {a.shape}, {b.shape} and region {region.shape} do not match")
    if not region.any():
        return float("nan")
    return psnr(a[region], b[region], peak)


# ---------------------------------------------------------------------------------------
# Per-sample quality of a synthetic defect image against its OK source

# Half-width (px) of the band along M's border that ``seam`` is measured on: the pixels
# within this Euclidean distance of the border, on either side.
SEAM_BAND_PX = 2
# ``leakage`` is the change outside M dilated by this radius (px, Euclidean): one latent
# cell (the VAE's stride), since the latent blend may regenerate up to a cell around M.
LEAKAGE_DILATION_PX = 8
# ``defect_strength`` divides by the change outside M floored at this (gray levels), so an
# untouched background gives a large finite ratio instead of a division by zero.
STRENGTH_FLOOR = 1e-6


@dataclass(frozen=True)
class SampleQuality:
    """The figures of one sample (image against its source, M the defect mask).

    Each is nan where its region is empty (e.g. a mask covering the whole image).
    """

    bg_psnr: float  # dB, outside M; inf if the background is untouched (higher is better)
    bg_ssim: float  # SSIM map (7x7 windows, skimage) averaged outside M, in [-1, 1] (higher is better)
    defect_strength: float  # mean |change| inside M / the same outside M (1: nothing stands out)
    seam: float  # RMS gradient (gray levels / px) of the change on M's border band (lower is smoother)
    leakage: float  # mean |change| (gray levels) outside M dilated by LEAKAGE_DILATION_PX (lower is better)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _check_sample(source: np.ndarray, image: np.ndarray, mask: np.ndarray) -> None:
    if source.dtype != np.uint8 or image.dtype != np.uint8:
        raise ValueError(f"source {source.dtype} and image {image.dtype}: expected uint8 images")
    if source.ndim != 3 or source.shape[2] != 3 or image.shape != source.shape:
        raise ValueError(f"source {source.shape} and image {image.shape}: expected two (H, W, 3) images")
    if mask.shape != source.shape[:2] or mask.dtype != bool:
        raise ValueError(f"mask {mask.shape} {mask.dtype} does not match image {source.shape}: expected (H, W) bool")


def _region_mean(values: np.ndarray, region: np.ndarray) -> float:
    return float(values[region].mean()) if region.any() else float("nan")


def change(source: np.ndarray, image: np.ndarray) -> np.ndarray:
    """|image - source| averaged over the channels, (H, W) float64 in gray levels."""
    return np.abs(image.astype(np.float64) - source.astype(np.float64)).mean(axis=2)


def border_band(mask: np.ndarray, radius: float = SEAM_BAND_PX) -> np.ndarray:
    """(H, W) bool: the pixels within ``radius`` (Euclidean) of M's border, inside or
    outside M. The image's edge is no border (a mask touching it has no seam there)."""
    from scipy.ndimage import distance_transform_edt

    if mask.all() or not mask.any():
        return np.zeros_like(mask)
    outside = distance_transform_edt(~mask)  # distance of a background pixel to M
    inside = distance_transform_edt(mask)  # distance of an M pixel to the background
    return (~mask & (outside <= radius)) | (mask & (inside <= radius))


def beyond(mask: np.ndarray, radius: float = LEAKAGE_DILATION_PX) -> np.ndarray:
    """(H, W) bool: the pixels farther than ``radius`` (Euclidean) from every pixel of M."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return np.ones_like(mask)
    return distance_transform_edt(~mask) > radius


def seam_score(source: np.ndarray, image: np.ndarray, mask: np.ndarray, radius: float = SEAM_BAND_PX) -> float:
    """RMS over M's border band of the gradient magnitude (central differences) of the
    signed change d = mean over channels of (image - source).

    On d, not the image, so the source's own edges do not count; the root of the mean
    square, so a step (the whole change across one pixel: a hard paste) scores higher than
    the same change spread over the band (a smooth blend)."""
    d = (image.astype(np.float64) - source.astype(np.float64)).mean(axis=2)
    gy, gx = np.gradient(d)
    band = border_band(mask, radius)
    return float(np.sqrt(np.mean(gx[band] ** 2 + gy[band] ** 2))) if band.any() else float("nan")


def background_ssim(source: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
    """skimage's SSIM map (default 7x7 uniform windows, data range 255, per channel, then
    averaged over the channels) averaged over the pixels outside M. Windows near M see the
    defect, so a strong defect lowers it slightly there. nan without background."""
    from skimage.metrics import structural_similarity

    if mask.all():
        return float("nan")
    _, full = structural_similarity(source, image, channel_axis=2, data_range=255, full=True)
    return _region_mean(full.mean(axis=2), ~mask)


def sample_quality(source: np.ndarray, image: np.ndarray, mask: np.ndarray) -> SampleQuality:
    """The quality figures of a synthetic defect ``image`` made from the OK ``source``.

    source, image: (H, W, 3) uint8 (at least 7x7, SSIM's window); mask: (H, W) bool, M.
    """
    _check_sample(source, image, mask)
    diff = change(source, image)
    inside, outside = _region_mean(diff, mask), _region_mean(diff, ~mask)
    return SampleQuality(
        bg_psnr=masked_psnr(image, source, ~mask),
        bg_ssim=background_ssim(source, image, mask),
        defect_strength=float(inside / max(outside, STRENGTH_FLOOR)),
        seam=seam_score(source, image, mask),
        leakage=_region_mean(diff, beyond(mask)),
    )
