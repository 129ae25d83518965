"""PSNR over all values and over a region: one float64 formula, 10 log10(peak^2 / MSE)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from adabldm_core.metrics import masked_psnr, psnr


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
