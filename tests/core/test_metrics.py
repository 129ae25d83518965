"""PSNR over all values and over a region: one float64 formula, 10 log10(peak^2 / MSE)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from adabldm_core.metrics import (
    LEAKAGE_DILATION_PX,
    border_band,
    masked_psnr,
    psnr,
    sample_quality,
)


def test_psnr_of_uint8_images_in_float64():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # uint8 arithmetic would wrap; float64 does not
    assert psnr(a, a) == math.inf
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (255**2 / 48)))
    assert psnr(b, a) == psnr(a, b)


def test_psnr_of_tensors_in_minus_one_to_one_with_peak_two():
    x = torch.zeros(1, 3, 4, 4)
    assert psnr(x, x + 0.02, peak=2.0) == pytest.approx(10 * math.log10(4 / 0.0004))
    y = (x + 0.02).to(torch.bfloat16)  # reduced precision: compared in float64 as stored
    assert psnr(x, y, peak=2.0) == pytest.approx(10 * math.log10(4 / float(y[0, 0, 0, 0]) ** 2))


def test_psnr_refuses_different_shapes():
    with pytest.raises(ValueError, match=r"shapes \(2, 2\) and \(2, 3\) do not match"):
        psnr(np.zeros((2, 2)), np.zeros((2, 3)))


def test_masked_psnr_is_psnr_of_the_region():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2))
    region = np.zeros((8, 8), bool)
    region[2:5, 1:7] = True
    assert masked_psnr(a, b, region) == psnr(a[region], b[region])
    assert masked_psnr(a, b, np.ones((8, 8), bool)) == psnr(a, b)
    assert math.isnan(masked_psnr(a, b, np.zeros((8, 8), bool)))


# ---------------------------------------------------------------------------------------
# sample_quality: a synthetic defect image against its OK source

C1 = (0.01 * 255) ** 2  # SSIM's luminance constant at data range 255


def _half_plane(size: int = 32, col: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[:, col:] = True  # M: the right half; its border is the vertical line between col-1 and col
    return mask


def test_sample_quality_of_a_step_change_by_hand():
    source = np.full((32, 32, 3), 100, np.uint8)
    mask = _half_plane()
    image = np.where(mask[..., None], 140, 102).astype(np.uint8).repeat(3, axis=2)  # +40 in M, +2 outside
    q = sample_quality(source, image, mask)
    assert q.bg_psnr == pytest.approx(10 * math.log10(255**2 / 4))
    assert q.defect_strength == pytest.approx(40 / 2)
    assert q.leakage == pytest.approx(2.0)  # the columns 0..7, farther than 8 px from M
    # d steps by 38 between columns 15 and 16: central differences give 19 on each of them,
    # 0 on the other two columns of the 4-column band (columns 14..17): RMS = sqrt(2 * 19^2 / 4)
    assert q.seam == pytest.approx(math.sqrt(2 * 19**2 / 4))
    assert set(q.as_dict()) == {"bg_psnr", "bg_ssim", "defect_strength", "seam", "leakage"}


def test_border_band_is_within_the_radius_on_both_sides_not_the_image_edge():
    band = border_band(_half_plane(), radius=2)
    assert np.array_equal(np.flatnonzero(band.any(axis=0)), [14, 15, 16, 17])
    assert band[:, 14:18].all()  # the full height: the image's top and bottom edges are no border
    assert not border_band(np.ones((8, 8), bool)).any() and not border_band(np.zeros((8, 8), bool)).any()


def test_background_ssim_of_constant_images_is_the_luminance_term():
    source = np.full((32, 32, 3), 100, np.uint8)
    image = np.full((32, 32, 3), 110, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[10:14, 10:14] = True
    # zero variances: the contrast-structure term is C2 / C2 = 1
    expected = (2 * 100 * 110 + C1) / (100**2 + 110**2 + C1)
    assert sample_quality(source, image, mask).bg_ssim == pytest.approx(expected)
    assert sample_quality(source, source, mask).bg_ssim == pytest.approx(1.0)


def test_background_ssim_averages_the_map_outside_the_mask_only():
    rng = np.random.default_rng(1)
    source = rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[:, :4] = True  # far from the right half: windows there see no change
    image = source.copy()
    image[mask] = 0
    far = sample_quality(source, image, mask).bg_ssim
    assert far < 1.0  # windows beside M see the defect
    image[:, 20:] = source[:, 20:] // 2  # a change outside M lowers it
    assert sample_quality(source, image, mask).bg_ssim < far


def test_a_hard_paste_has_a_worse_seam_than_a_smooth_blend_whatever_the_source():
    from scipy.ndimage import gaussian_filter

    mask = np.zeros((48, 48), bool)
    mask[16:32, 12:36] = True
    hard = 40.0 * mask
    smooth = 40.0 * gaussian_filter(mask.astype(np.float64), sigma=2.0)
    scores = []
    for seed in (0, 1):
        source = np.random.default_rng(seed).integers(50, 200, (48, 48, 3), dtype=np.uint8)
        pasted = [(source + np.round(d)[..., None]).astype(np.uint8) for d in (hard, smooth)]
        scores.append([sample_quality(source, p, mask).seam for p in pasted])
    (hard0, smooth0), (hard1, smooth1) = scores
    assert hard0 > 1.5 * smooth0
    assert (hard0, smooth0) == pytest.approx((hard1, smooth1))  # the change counts, not the texture


def test_leakage_is_the_change_beyond_the_dilated_mask():
    source = np.full((33, 33, 3), 100, np.uint8)
    mask = np.zeros((33, 33), bool)
    mask[16, 16] = True
    image = source.copy()
    image[16, 16 + LEAKAGE_DILATION_PX] = 200  # on the dilation's edge: not leakage
    assert sample_quality(source, image, mask).leakage == 0.0
    image[16, 16 + LEAKAGE_DILATION_PX + 1] = 190  # one pixel beyond it: 90 gray levels
    yy, xx = np.mgrid[:33, :33]
    beyond = ((yy - 16) ** 2 + (xx - 16) ** 2) > LEAKAGE_DILATION_PX**2
    assert sample_quality(source, image, mask).leakage == pytest.approx(90 / beyond.sum())


def test_sample_quality_is_nan_where_a_region_is_empty():
    source = np.full((16, 16, 3), 100, np.uint8)
    image = source + np.uint8(5)
    full = sample_quality(source, image, np.ones((16, 16), bool))
    assert all(math.isnan(v) for v in (full.bg_psnr, full.bg_ssim, full.seam, full.leakage))
    empty = sample_quality(source, image, np.zeros((16, 16), bool))
    assert math.isnan(empty.defect_strength) and math.isnan(empty.seam)
    assert empty.leakage == pytest.approx(5.0) and empty.bg_psnr == pytest.approx(10 * math.log10(255**2 / 25))


def test_sample_quality_refuses_bad_inputs():
    image = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), bool)
    with pytest.raises(ValueError, match=r"mask \(16, 8\) bool does not match image \(16, 16, 3\)"):
        sample_quality(image, image, mask[:, :8])
    with pytest.raises(ValueError, match="expected uint8"):
        sample_quality(image.astype(np.float32), image, mask)
    with pytest.raises(ValueError, match=r"expected two \(H, W, 3\) images"):
        sample_quality(image, image[:8], mask)
    with pytest.raises(ValueError, match="expected \\(H, W\\) bool"):
        sample_quality(image, image, mask.astype(np.uint8))
