"""The built-in demo model (``--model demo``): trained here, shipped with the package.

A small SD-1.5-family model (AutoencoderKL at latent stride 8, UNet2DConditionModel, the
local CLIP-style text encoder and tokenizer) trained on scikit-image's brick, gravel and
grass textures, and one trimap ControlNet per demo defect type (``DEFECTS``), trained
with adabldm-train on code-rendered defects (defects.py). It shows what the method does;
it is not a model for real inspection. ``python -m adabldm_ref.demo.build`` regenerates it;
``weights/demo.json`` records its settings, figures and file hashes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

DEMO = "demo"
DEFECTS = ("crack", "scratch", "stain")  # defects.DEFECTS, without importing numpy/PIL here
DEFAULT_DEFECT = "crack"  # the ControlNet when neither --controlnet nor --defect names one
WEIGHTS = Path(__file__).with_name("weights")


def record() -> dict:
    """The build record (settings, figures, sha256 of every shipped file)."""
    return json.loads((WEIGHTS / "demo.json").read_text())


def verify(root: Path = WEIGHTS) -> None:
    """Raise ModelLoadError if a shipped file is missing or differs from its recorded hash."""
    from ..models import ModelLoadError

    for rel, digest in record()["sha256"].items():
        path = root / rel
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ModelLoadError(f"demo model file {path} is missing or changed (expected sha256 {digest[:12]}...);"
                                 " reinstall the package or rerun python -m adabldm_ref.demo.build")


def controlnet_choice(controlnet: str | None, defect: str | None) -> str:
    """The demo ControlNet to load: ``controlnet`` (a demo defect name or a path), else the
    one named by ``defect`` if it is a demo type, else ``DEFAULT_DEFECT``."""
    if controlnet is not None:
        return controlnet
    return defect if defect in DEFECTS else DEFAULT_DEFECT


def load_demo(controlnet: str | None = None, defect: str | None = None, allow_pickle: bool = False):
    """The demo Models in float32 (weights stored fp16). ``controlnet``: a demo defect
    name, or a path to a ControlNet trained on the demo base (adabldm-train --model demo)."""
    from ..models import load_controlnet, load_pretrained

    verify()
    choice = controlnet_choice(controlnet, defect)
    path = WEIGHTS / "controlnets" / choice if choice in DEFECTS else None
    models = load_pretrained(WEIGHTS, path, allow_pickle=allow_pickle) if path else load_pretrained(WEIGHTS, None)
    if path is None:
        models.controlnet = load_controlnet(choice, models.unet, allow_pickle)
    for module in models.modules().values():
        module.float()  # not .to(dtype): diffusers warns on that even with nothing to keep in fp32
    models.name = f"{DEMO}:{choice}" if path else DEMO
    return models.eval_()


def load_demo_base():
    """The demo base networks with an untrained ControlNet (for adabldm-train --model demo)."""
    from ..models import load_pretrained

    verify()
    models = load_pretrained(WEIGHTS, None)
    for module in models.modules().values():
        module.float()  # not .to(dtype): diffusers warns on that even with nothing to keep in fp32
    models.name = DEMO
    return models
