"""GPU tier: tests marked ``gpu`` need CUDA (and some TensorRT) and skip without them;
the unmarked tests here check the parts of the GPU path that need neither, on the CPU."""
from __future__ import annotations

import importlib.util

import pytest
import torch


def has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from threads on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


@pytest.fixture(scope="session")
def small_textures():
    """64 px brick and gravel OK images: the GPU tier's pipelines run at the tiny model's 64 px."""
    from skimage import data

    from adabldm_ref.pipeline import OkImage, prepare_ok_image

    return [OkImage("brick", prepare_ok_image(data.brick(), 64)), OkImage("gravel", prepare_ok_image(data.gravel(), 64))]
