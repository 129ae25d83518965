"""AdaBLDM reference pipeline in PyTorch (readable, faithful to ALGORITHM.md).

Quick use::

    from adabldm_ref import GenerationConfig, OkImage, ProceduralMasks, build_tiny, reference_pipeline
    with reference_pipeline(build_tiny(), GenerationConfig(object_name="brick", defect="crack")) as pipe:
        samples = pipe.generate(4, [OkImage("brick", rgb_256x256)], ProceduralMasks())
"""
from .config import AdaptConfig, GenerationConfig, MaskConfig, SamplerConfig, SchedulerConfig
from .models import Models, build_tiny, load_models, load_pretrained
from .pipeline import (
    OkImage,
    Pipeline,
    ProceduralMasks,
    RealMasks,
    Sample,
    plan_sample,
    prepare_ok_image,
    reference_pipeline,
)

__all__ = [
    "AdaptConfig",
    "GenerationConfig",
    "MaskConfig",
    "Models",
    "OkImage",
    "Pipeline",
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
    "reference_pipeline",
]
