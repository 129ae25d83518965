"""Frozen configuration of every stage of AdaBLDM (values from ALGORITHM.md).

Each field carries its reason; the defaults are the authors' code unless said otherwise.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Literal

LATENT_SCALE = 0.18215  # SD-1.5 VAE latent scale (z = 0.18215 * E(x))
LATENT_STRIDE = 8  # SD VAE downsamples by 8: 256 px -> 32 x 32 latent


def check_finite(**values: float) -> None:
    """ValueError naming the first value that is nan or infinite. Range checks alone pass
    nan (every comparison with it is False), and it would surface late: an OverflowError
    drawing a rotation, or a run record that is not JSON, after files were written."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name}={value}: expected a finite number")


@dataclass(frozen=True)
class SchedulerConfig:
    """DDIM noise schedule of Stable Diffusion 1.5 (handed to diffusers' DDIMScheduler)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    # "leading" spacing with offset 1 gives t = 981, 961, ..., 1 for 50 steps, as the authors.
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    # SD-1.5 (and the authors' DDIM) use alphas_cumprod[0] at the end, not 1.
    set_alpha_to_one: bool = False
    clip_sample: bool = False
    prediction_type: str = "epsilon"


@dataclass(frozen=True)
class SamplerConfig:
    """Three-stage blended DDIM (ALGORITHM.md, "Sampling")."""

    steps: int = 50
    guidance: float = 9.0  # classifier-free guidance scale of the authors' generation
    control_scale: float = 1.0  # ControlNet conditioning scale
    eta: float = 0.0  # deterministic DDIM
    # Stage windows as fractions of the step count, so other step counts keep the shape:
    # latent editing from step 26 of 50, pixel editing from step 45 of 50 (both inclusive).
    latent_start: float = 26 / 50
    pixel_start: float = 45 / 50
    # "next": re-noise the pixel-blended x0 to the next timestep and leave the last latent
    # clean (the evident intent); "current": re-noise to the current timestep as the
    # authors' code does (leaves sigma ~ 0.04 of noise in the final latent).
    renoise: Literal["next", "current"] = "next"
    blend: bool = True  # False: plain ControlNet DDIM (used to check against diffusers)

    def __post_init__(self) -> None:
        check_finite(guidance=self.guidance, control_scale=self.control_scale, eta=self.eta)
        if self.steps < 2:
            raise ValueError(f"steps={self.steps}: expected at least 2 DDIM steps")
        if not 0.0 <= self.latent_start <= self.pixel_start <= 1.0:
            raise ValueError(
                f"stage fractions latent_start={self.latent_start}, pixel_start={self.pixel_start}:"
                " expected 0 <= latent_start <= pixel_start <= 1"
            )
        if self.renoise not in ("next", "current"):
            raise ValueError(f"renoise={self.renoise!r}: expected 'next' or 'current'")


@dataclass(frozen=True)
class MaskConfig:
    """Trimap, defect placement and latent-mask settings (ALGORITHM.md, "The trimap")."""

    binarize_at: int = 200  # defect pixels are >= 200 in the 0..255 mask
    latent_dilation: int = 5  # 5 x 5 square dilation of the latent mask
    # False: nearest resize to the latent grid as the authors (defects thinner than the
    # stride can vanish); True: a latent cell is defect if any of its pixels is.
    keep_thin: bool = False
    # Rotation (degrees, uniform in [0, rotate]) and scale range at generation time; the
    # authors' generation code uses neither, the paper's augmentation uses 360 and 0.85-1.15.
    rotate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    max_tries: int = 20  # bounded retries of a random rotation/scale that does not fit
    foreground: Literal["full", "otsu"] = "full"  # texture: whole image; object: Otsu + close

    def __post_init__(self) -> None:
        check_finite(rotate=self.rotate, scale_low=self.scale[0], scale_high=self.scale[1])
        if self.rotate < 0 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"rotate={self.rotate}, scale={self.scale}: expected rotate >= 0 and"
                             " 0 < LOW <= HIGH")


@dataclass(frozen=True)
class AdaptConfig:
    """Online decoder adaptation (ALGORITHM.md, stage 4)."""

    iters: int = 200
    lr: float = 1e-4
    weight_decay: float = 0.01
    preservation: float = 100.0  # lambda: weight of the background term

    def __post_init__(self) -> None:
        check_finite(lr=self.lr, weight_decay=self.weight_decay, preservation=self.preservation)
        if self.iters < 0:
            raise ValueError(f"adaptation iterations {self.iters}: expected 0 (off) or more")
        if not self.lr > 0 or self.weight_decay < 0 or self.preservation < 0:
            raise ValueError(f"adaptation lr {self.lr}, weight decay {self.weight_decay}, preservation"
                             f" {self.preservation}: expected lr > 0 and the others >= 0")


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides a sample, besides the model and the input images."""

    object_name: str = "texture"
    defect: str = "defect"
    resolution: int = 256
    seed: int = 0
    # The authors append ", black background." to the prompt at generation time only.
    prompt_suffix: str = ""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.resolution % 64:
            raise ValueError(f"resolution={self.resolution}: expected a positive multiple of 64")

    @property
    def prompt(self) -> str:
        return f"a {self.object_name} with a {self.defect}{self.prompt_suffix}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the settings: a different hash means different samples."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
