"""Shared fixtures: the tiny model is built once per session (it is seeded, so identical)."""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made
# steps 5-25x slower. Read when torch first starts OpenMP, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def load_benchmark():
    """``load_benchmark("bench_gpu")``: benchmarks/bench_gpu.py as a module, for this test
    module (the scripts import their siblings, so their folder is on sys.path meanwhile)."""
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    loaded = []

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
    sys.path.remove(folder)
