"""AdaBLDM reference pipeline in PyTorch (readable, faithful to ALGORITHM.md).

Quick use::

    from adabldm_ref import GenerationConfig, OkImage, ProceduralMasks, build_tiny, reference_pipeline
    with reference_pipeline(build_tiny(), GenerationConfig(object_name="brick", defect="crack")) as pipe:
        samples = pipe.generate(4, [OkImage("brick", rgb_256x256)], ProceduralMasks())
"""
from importlib import import_module

# Names load lazily (PEP 562): `import adabldm_ref.config` and the command lines' --help
# must not pull in torch and diffusers.
_HOME = {
    "AdaptConfig": "config", "GenerationConfig": "config", "MaskConfig": "config", "SamplerConfig": "config",
    "SchedulerConfig": "config", "Models": "models", "build_tiny": "models", "load_models": "models",
    "load_pretrained": "models", "OkImage": "pipeline", "Pipeline": "pipeline", "ProceduralMasks": "pipeline",
    "RealMasks": "pipeline", "Sample": "pipeline", "plan_sample": "pipeline", "prepare_ok_image": "pipeline",
    "reference_pipeline": "pipeline",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
