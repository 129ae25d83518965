"""The networks as the runtime and the exporter see them: named tensors in, named tensors out.

One module per network (text encoder, VAE encoder with its noise as an input, VAE decoder,
UNet with the ControlNet folded in, or the two apart) and its spec at a resolution.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from adabldm_core.specs import NetworkSpec, TensorSpec, active

from .config import LATENT_STRIDE
from .models import Models


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


def split_feeds(unet_control_feeds: Sequence[dict], controlnet) -> tuple[list[dict], list[dict]]:
    """Feeds of the split ControlNet and UNet graphs derived from folded-network feeds."""
    cn_names, cn_feeds, unet_feeds = controlnet.spec.input_names, [], []
    with active(controlnet):
        for feed in unet_control_feeds:
            cn_feed = {n: feed[n] for n in cn_names}
            residuals = {k: v.clone() for k, v in controlnet.infer(cn_feed).items()}
            cn_feeds.append(cn_feed)
            unet_feeds.append({n: feed[n] for n in ("sample", "timestep", "text_ctx")} | residuals)
    return cn_feeds, unet_feeds
