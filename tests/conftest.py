"""Shared fixtures: the tiny model is built once per session (it is seeded, so identical)."""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made
# steps 5-25x slower. Read when torch first starts OpenMP, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from adabldm_ref.models import build_tiny
from adabldm_ref.pipeline import OkImage, prepare_ok_image


@pytest.fixture(scope="session")
def tiny():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return build_tiny()


@pytest.fixture(scope="session")
def textures():
    from skimage import data

    return [
        OkImage("brick", prepare_ok_image(data.brick(), 256)),
        OkImage("gravel", prepare_ok_image(data.gravel(), 256)),
    ]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
