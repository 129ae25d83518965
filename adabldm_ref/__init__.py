"""AdaBLDM reference pipeline in PyTorch (readable, faithful to ALGORITHM.md).

Quick use::

    from adabldm_ref import AdaBLDM, GenerationConfig, OkImage, ProceduralMasks, build_tiny
    pipe = AdaBLDM(build_tiny(), GenerationConfig(object_name="brick", defect="crack"))
    samples = pipe.generate(4, [OkImage("brick", rgb_256x256)], ProceduralMasks())
"""
from .config import AdaptConfig, GenerationConfig, MaskConfig, SamplerConfig, SchedulerConfig
from .models import Models, build_tiny, load_models, load_pretrained
from .pipeline import AdaBLDM, OkImage, ProceduralMasks, RealMasks, Sample, plan_sample, prepare_ok_image

__all__ = [
    "AdaBLDM",
    "AdaptConfig",
    "GenerationConfig",
    "MaskConfig",
    "Models",
    "OkImage",
    "ProceduralMasks",
    "RealMasks",
    "Sample",
    "SamplerConfig",
    "SchedulerConfig",
    "build_tiny",
    "load_models",
    "load_pretrained",
    "plan_sample",
    "prepare_ok_image",
]
