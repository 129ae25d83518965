"""One export spec per network: names, shapes with symbolic batch, TensorRT profile, samples.

Shapes are tuples whose entries are ints (static) or the symbols "B" (samples in a batch)
and "B2" (= 2B, the classifier-free-guidance batch). Spatial sizes are static per bundle
(one resolution), so TensorRT can build static engines per (resolution, batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from adabldm_ref.config import LATENT_STRIDE
from adabldm_ref.models import Models

BATCH_SYMBOLS = {"B": 1, "B2": 2}  # symbol -> multiple of the sample batch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints and batch symbols
    dtype: str = "float32"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(BATCH_SYMBOLS[d] * batch if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @property
    def batch_axis(self) -> tuple[int, int] | None:
        """(axis, multiple of the sample batch) of the batch dimension; None if unbatched."""
        return next(((i, BATCH_SYMBOLS[d]) for i, d in enumerate(self.shape) if d in BATCH_SYMBOLS), None)


@dataclass(frozen=True)
class NetworkSpec:
    """What one exported graph takes and gives."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def sample_batch(self, feed: Mapping[str, torch.Tensor]) -> int | None:
        """The sample batch B of ``feed``, read from its first batched input (None: none is)."""
        for t in self.inputs:
            if t.batch_axis is not None:
                axis, multiple = t.batch_axis
                return feed[t.name].shape[axis] // multiple
        return None

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
            if any(isinstance(d, str) for d in t.shape)
        }

    def profile(self, batch_sizes: tuple[int, ...]) -> dict[str, list[list[int]]]:
        """TensorRT min / opt / max shapes per input (opt = the largest batch)."""
        lo, hi = min(batch_sizes), max(batch_sizes)
        return {t.name: [list(t.concrete(lo)), list(t.concrete(hi)), list(t.concrete(hi))] for t in self.inputs}

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def network_specs(models: Models, resolution: int, split_controlnet: bool = False) -> dict[str, NetworkSpec]:
    """The specs of every network exported for ``models`` at ``resolution``."""
    r, h = resolution, resolution // LATENT_STRIDE
    d = models.text_encoder.config.hidden_size
    n_tok = models.tokenizer.model_max_length
    specs = {
        "text_encoder": NetworkSpec(
            "text_encoder", (TensorSpec("input_ids", ("B", n_tok), "int64"),), (TensorSpec("text_embeddings", ("B", n_tok, d)),)
        ),
        "vae_encoder": NetworkSpec(
            "vae_encoder",
            (TensorSpec("image", ("B", 3, r, r)), TensorSpec("noise", ("B", 4, h, h))),
            (TensorSpec("latent", ("B", 4, h, h)),),
        ),
        "vae_decoder": NetworkSpec(
            "vae_decoder", (TensorSpec("latent", ("B", 4, h, h)),), (TensorSpec("image", ("B", 3, r, r)),)
        ),
    }
    unet_inputs = (
        TensorSpec("sample", ("B2", 4, h, h)),
        TensorSpec("timestep", ()),
        TensorSpec("text_ctx", ("B2", n_tok, d)),
    )
    eps = (TensorSpec("eps", ("B2", 4, h, h)),)
    control_inputs = (
        TensorSpec("control_ctx", ("B2", n_tok, d)),
        TensorSpec("hint", ("B2", 3, r, r)),
        TensorSpec("control_scale", ()),
    )
    if not split_controlnet:
        specs["unet_control"] = NetworkSpec("unet_control", unet_inputs + control_inputs, eps)
        return specs
    down, mid = _probe_controlnet(models, h)  # the residuals' shapes, from one ControlNet call
    residuals = tuple(TensorSpec(f"down_{i}", ("B2", *t.shape[1:])) for i, t in enumerate(down)) + (
        TensorSpec("mid", ("B2", *mid.shape[1:])),
    )
    specs["controlnet"] = NetworkSpec(
        "controlnet", (unet_inputs[0], unet_inputs[1]) + control_inputs, residuals
    )
    specs["unet"] = NetworkSpec("unet", unet_inputs + residuals, eps)
    return specs


@torch.no_grad()
def _probe_controlnet(models: Models, h: int):
    cn = models.controlnet
    d = models.text_encoder.config.hidden_size
    return cn(
        torch.zeros(1, 4, h, h), torch.tensor(1.0), encoder_hidden_states=torch.zeros(1, 77, d),
        controlnet_cond=torch.zeros(1, 3, 8 * h, 8 * h), return_dict=False,
    )


# ---------------------------------------------------------------------------------------
# The modules that are exported (plain tensor in, tensor(s) out)


class TextEncoderNet(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids)[0]


class VaeEncoderNet(torch.nn.Module):
    """latent = scale * (mean + std * noise): the runtime keeps the randomness (noise)."""

    def __init__(self, vae, latent_scale: float):
        super().__init__()
        self.vae, self.scale = vae, latent_scale

    def forward(self, image, noise):
        moments = self.vae.quant_conv(self.vae.encoder(image))
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # diffusers' DiagonalGaussianDistribution
        return self.scale * (mean + std * noise)


class VaeDecoderNet(torch.nn.Module):
    def __init__(self, vae, latent_scale: float):
        super().__init__()
        self.vae, self.scale = vae, latent_scale

    def forward(self, latent):
        return self.vae.decoder(self.vae.post_quant_conv(latent / self.scale))


class ControlNetNet(torch.nn.Module):
    def __init__(self, controlnet):
        super().__init__()
        self.controlnet = controlnet

    def forward(self, sample, timestep, control_ctx, hint, control_scale):
        down, mid = self.controlnet(
            sample, timestep, encoder_hidden_states=control_ctx, controlnet_cond=hint,
            conditioning_scale=control_scale, return_dict=False,
        )
        return (*down, mid)


class UNetNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, text_ctx, *residuals):
        return self.unet(
            sample, timestep, encoder_hidden_states=text_ctx,
            down_block_additional_residuals=list(residuals[:-1]),
            mid_block_additional_residual=residuals[-1], return_dict=False,
        )[0]


class UNetControlNet(torch.nn.Module):
    """UNet with the ControlNet folded in: one graph, the control scale an input."""

    def __init__(self, unet, controlnet):
        super().__init__()
        self.control = ControlNetNet(controlnet)
        self.unet = UNetNet(unet)

    def forward(self, sample, timestep, text_ctx, control_ctx, hint, control_scale):
        residuals = self.control(sample, timestep, control_ctx, hint, control_scale)
        return self.unet(sample, timestep, text_ctx, *residuals)


def network_modules(models: Models) -> dict[str, Callable[[], torch.nn.Module]]:
    """Factories of the exported module of each network name."""
    s = models.latent_scale
    return {
        "text_encoder": lambda: TextEncoderNet(models.text_encoder),
        "vae_encoder": lambda: VaeEncoderNet(models.vae, s),
        "vae_decoder": lambda: VaeDecoderNet(models.vae, s),
        "unet_control": lambda: UNetControlNet(models.unet, models.controlnet),
        "controlnet": lambda: ControlNetNet(models.controlnet),
        "unet": lambda: UNetNet(models.unet),
    }


def random_inputs(spec: NetworkSpec, batch: int, generator: torch.Generator, vocab: int = 49408) -> dict[str, torch.Tensor]:
    """Seeded inputs in each input's natural range (ids, timesteps, [0, 1] hints, N(0, 1))."""
    feed = {}
    for t in spec.inputs:
        shape = t.concrete(batch)
        if t.dtype == "int64":
            feed[t.name] = torch.randint(0, vocab, shape, generator=generator)
        elif t.name == "timestep":
            feed[t.name] = torch.randint(1, 1000, (), generator=generator).float()
        elif t.name == "control_scale":
            feed[t.name] = torch.tensor(1.0)
        elif t.name in ("hint",):
            feed[t.name] = torch.rand(shape, generator=generator)
        elif t.name == "image":
            feed[t.name] = torch.rand(shape, generator=generator) * 2 - 1
        else:
            feed[t.name] = torch.randn(shape, generator=generator)
    return feed
