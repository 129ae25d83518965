"""Shared fixtures: the tiny model is built once per session (it is seeded, so identical).

Tests that need CUDA (and some TensorRT) are marked ``gpu`` and skip without it, through
the ``cuda`` and ``tensorrt`` fixtures here; they live beside the CPU tests of their module."""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made
# steps 5-25x slower. Read when torch first starts OpenMP, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The commands default to the shipped demo model; the suite runs them on the tiny one unless
# a test passes --model (the demo tests do). Subprocesses inherit it.
os.environ["ADABLDM_MODEL"] = "tiny"

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from adabldm_export.bundle import ExportConfig, export_bundle

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


@pytest.fixture(scope="session")
def small_textures():
    """64 px brick and gravel OK images: the GPU tests' pipelines run at the tiny model's 64 px."""
    from skimage import data

    return [OkImage("brick", prepare_ok_image(data.brick(), 64)), OkImage("gravel", prepare_ok_image(data.gravel(), 64))]


@pytest.fixture(scope="session")
def bundle_dir(tiny, tmp_path_factory):
    """The tiny model exported once for the whole session (batch sizes 1 and 4)."""
    out = tmp_path_factory.mktemp("bundle")
    export_bundle(tiny, ExportConfig(out=out, batch_sizes=(1, 4), capture_steps=6, force=True))
    return out


def has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def cuda():
    """The CUDA device; skips the test where there is none."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")


@pytest.fixture
def tensorrt(cuda):
    """The tensorrt module on a CUDA machine; skips the test otherwise."""
    if not has_tensorrt():
        pytest.skip("needs the tensorrt package")
    import tensorrt as trt

    return trt


@pytest.fixture
def one_torch_thread():
    """The tiny model gains nothing from threads on a shared 2-core machine (modules use it
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; tests/engine's
    conftest applies its own to every test there)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def load_benchmark():
    """``load_benchmark("bench_gpu")``: benchmarks/bench_gpu.py as a module, for this test
    module (the scripts import benchmarks/common.py, so their folder is on sys.path meanwhile)."""
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


@pytest.fixture
def sigterm_when():
    """``sigterm_when(args, ready, env=None, wait=300)`` -> (exit code, output): runs
    ``python args...`` (one OpenMP thread), sends it SIGTERM once ``ready()`` holds, and
    returns its code and its stdout and stderr together. Fails if it ends first or ``ready``
    does not hold within ``wait`` seconds."""
    import signal
    import subprocess
    import time

    def run(args, ready, env=None, wait: float = 300):
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + wait
            while not ready():
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, f"not ready within {wait} s"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
        return proc.returncode, output

    return run
