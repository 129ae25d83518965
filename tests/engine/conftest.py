"""Fixtures of the bulk-job tests: tiny settings, small generated input images, and
reference runs made once per session (tests copy them before changing anything)."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from adabldm_engine.adaptation import ROI_ADAPT
from adabldm_engine.job import JobConfig, run_job
from PIL import Image

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig

# 64 px, 4 DDIM steps, 2 adaptation steps: well under a second per sample on a CPU.
TINY = {"resolution": 64, "steps": 4, "adapt_iters": 2}
NUM = 3


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from threads, and two spinning threads on a busy
    2-core machine make a run 5-50 times slower; restored after each test."""
    with torch_threads(1):
        yield


def tiny_generation(resolution=TINY["resolution"], steps=TINY["steps"], adapt_iters=TINY["adapt_iters"], **kw):
    return GenerationConfig(
        resolution=resolution,
        sampler=SamplerConfig(steps=steps),
        # the command line's rate with its default --adapt-region roi (cli.ROI_ADAPT), so that
        # jobs made here and by `adabldm-run ... --adapt-iters N` are the same run
        adapt=AdaptConfig(iters=adapt_iters, lr=ROI_ADAPT[1]),
        **kw,
    )


@pytest.fixture
def job_config():
    """``job_config(out, num=3, steps=4, batch_size=1, images=..., ...)`` -> JobConfig."""

    def make(out: Path, num: int = NUM, batch_size: int = 1, **kw) -> JobConfig:
        job_keys = {"images", "foreground", "masks", "procedural", "contact_rows", "category", "gate"}
        job_kw = {k: kw.pop(k) for k in list(kw) if k in job_keys}
        return JobConfig(out=Path(out), num=num, generation=tiny_generation(**kw), batch_size=batch_size, **job_kw)

    return make


def texture(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A smooth random uint8 texture (H, W, C), or (H, W) for channels=1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = 128 + 60 * np.sin(xx / (3 + seed)) * np.cos(yy / 5)
    shape = (height, width) if channels == 1 else (height, width, channels)
    noise = rng.normal(0, 20, shape)
    image = (base if channels == 1 else base[..., None]) + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def make_image():
    """``make_image(path, height, width, seed=0, channels=3)`` writes a PNG texture."""

    def make(path: Path, height: int = 64, width: int = 64, seed: int = 0, channels: int = 3) -> Path:
        return save(Path(path), texture(height, width, seed, channels))

    return make


CATEGORY = "texture"  # the category folder of the default --object


def _sample_files(out: Path) -> dict[str, bytes]:
    cat = out / CATEGORY
    files = sorted((cat / "test").rglob("*.png")) + sorted((cat / "ground_truth").rglob("*.png"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture
def sample_files():
    """``sample_files(out)``: relative path -> bytes of every test image and mask in run root ``out``."""
    return _sample_files


@pytest.fixture
def tiny_args():
    """The tiny settings as adabldm-run options."""
    return ["--resolution", str(TINY["resolution"]), "--steps", str(TINY["steps"]),
            "--adapt-iters", str(TINY["adapt_iters"]), "--quiet"]


def _reference(tmp_path_factory, name: str, num: int, batch_size: int):
    out = tmp_path_factory.mktemp(name) / "out"
    cfg = JobConfig(out=out, num=num, generation=tiny_generation(), batch_size=batch_size)
    with torch_threads(1):
        return out, run_job(cfg, progress=False)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """(out, report) of an uninterrupted run: defaults, 3 samples, batch size 1. Read only."""
    return _reference(tmp_path_factory, "reference", NUM, 1)


@pytest.fixture(scope="session")
def reference_run_b2(tmp_path_factory):
    """(out, report) of an uninterrupted run of 4 samples in chunks [0, 1], [2, 3]. Read only."""
    return _reference(tmp_path_factory, "reference_b2", 4, 2)


@pytest.fixture
def copy_of(tmp_path):
    """``copy_of(out)``: a private copy of a reference run's folder, safe to damage."""

    def copy(out: Path) -> Path:
        target = tmp_path / "copy"
        shutil.copytree(out, target)
        return target

    return copy
