"""The runtime: the blended sampler of the reference around exported engines.

The loop is the reference's ``sample_blended``; only the model callables differ: CFG
over one batched (2B) ``unet_control`` engine call, and VAE encode/decode engines for the
pixel stage. Nothing here asks which backend runs a network. Online decoder adaptation
stays in PyTorch, on the decoder weights shipped in the bundle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from adabldm_core.specs import NetworkSpec

from adabldm_ref.config import GenerationConfig
from adabldm_ref.models import TINY, Models, build_tiny, make_scheduler, prompt_ids
from adabldm_ref.networks import network_modules, network_specs
from adabldm_ref.pipeline import Pipeline, SchedulerStepper, cfg_contexts
from adabldm_ref.sampler import ddim_schedule, guide, stepped_scheduler

from .adaptation import BatchedAdapter, FastAdaptConfig
from .backends import (
    BACKENDS,
    Backend,
    BackendError,
    OpenVinoBackend,
    OrtBackend,
    TorchBackend,
)
from .cuda_backend import TorchCudaConfig, torch_cuda_engines
from .graphed import StaticStepper
from .trt_backend import trt_engines


class EngineCFG:
    """eps(z, t) with classifier-free guidance over a ``unet_control`` engine (2B batch)."""

    def __init__(self, net: Backend, text_ctx, control_ctx, hint, guidance: float, control_scale: float):
        dev = text_ctx.device
        self.net, self.guidance = net, guidance
        self.feed = {  # constant parts, built once per batch
            "text_ctx": text_ctx.contiguous(),
            "control_ctx": control_ctx.contiguous(),
            "hint": torch.cat([hint, hint]).contiguous(),
            "control_scale": torch.tensor(float(control_scale), device=dev),
        }

    def set_hint(self, hint: torch.Tensor) -> None:
        """Write another batch's trimaps (B, 3, H, W) into the constant 2B hint, in place."""
        self.feed["hint"].copy_(torch.cat([hint, hint]))

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        feed = {**self.feed, "sample": torch.cat([z, z]), "timestep": t.to(z.device, torch.float32).reshape(())}
        return guide(self.net.infer(feed)["eps"], self.guidance)


class EngineCodec:
    """The scaled VAE as two engines: latent = encoder(image, noise), image = decoder(latent)."""

    def __init__(self, encoder: Backend, decoder: Backend):
        self.encoder, self.decoder = encoder, decoder

    def encode(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.encoder.infer({"image": x.contiguous(), "noise": noise.contiguous()})["latent"].clone()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder.infer({"latent": z.contiguous()})["image"].clone()


class SplitUNetControl(Backend):
    """ControlNet and UNet exported as two graphs, behind the folded network's interface."""

    def __init__(self, spec, controlnet: Backend, unet: Backend):
        super().__init__(spec)
        self.controlnet, self.unet = controlnet, unet

    @property
    def graph_safe(self) -> bool:
        """Capturable in a CUDA graph when both halves are (engine/graphed.py)."""
        return self.controlnet.graph_safe and self.unet.graph_safe

    def _activate(self) -> None:
        self.controlnet.activate()
        self.unet.activate()

    def _deactivate(self) -> None:
        self.controlnet.deactivate()
        self.unet.deactivate()

    def _infer(self, feed, batch):
        names = self.controlnet.spec.input_names
        residuals = self.controlnet.infer({n: feed[n] for n in names})
        unet_feed = {n: feed[n] for n in ("sample", "timestep", "text_ctx")} | residuals
        return self.unet.infer(unet_feed)


class RecordingBackend(Backend):
    """Passes calls to ``inner`` and keeps a copy of every feed (for capture)."""

    def __init__(self, inner: Backend):
        super().__init__(inner.spec)
        self.inner, self.feeds = inner, []

    def _activate(self) -> None:
        self.inner.activate()

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def _infer(self, feed, batch):
        self.feeds.append({k: v.detach().clone() for k, v in feed.items()})
        return self.inner.infer(feed)


def torch_engines(models: Models, resolution: int) -> dict[str, Backend]:
    """Every network as a TorchBackend over the reference modules."""
    specs = network_specs(models, resolution)
    modules = network_modules(models)
    return {name: TorchBackend(spec, modules[name]()) for name, spec in specs.items()}


@torch.no_grad()
def encode_prompts_engine(text_encoder: Backend, tokenizer, prompts: list[str], device) -> torch.Tensor:
    ids = prompt_ids(tokenizer, prompts)
    return text_encoder.infer({"input_ids": ids.to(device)})["text_embeddings"].clone()


@dataclass(frozen=True)
class EngineDenoiser:
    """CFG eps over the ``unet_control`` engine. embeddings: (2, 77, d), prompt then empty prompt."""

    net: Backend
    embeddings: torch.Tensor
    guidance: float
    control_scale: float

    def eps_fn(self, hint: torch.Tensor) -> EngineCFG:
        text_ctx, control_ctx = cfg_contexts(self.embeddings, hint.shape[0])
        return EngineCFG(self.net, text_ctx, control_ctx, hint, self.guidance, self.control_scale)


def engine_pipeline(
    engines: Mapping[str, Backend],
    tokenizer,
    adapt_vae,
    latent_scale: float,
    cfg: GenerationConfig,
    device: str | torch.device = "cpu",
    fast_adapt: FastAdaptConfig | None = None,
    static_step: bool = False,
    graphs: bool | None = None,
) -> Pipeline:
    """AdaBLDM over engines: same plans, same loop, same adaptation, same outputs.

    The engines are activated here and closed with the pipeline. ``fast_adapt`` (default:
    the reference's result) configures the batched adaptation; ``static_step`` runs the
    denoising step on static buffers (deterministic DDIM only), captured in a CUDA graph
    when ``graphs`` (None: on CUDA where the UNet+ControlNet backend is graph safe).
    """
    engines = dict(engines)
    for engine in engines.values():
        engine.activate()
    try:
        device = torch.device(device)
        embeddings = encode_prompts_engine(engines["text_encoder"], tokenizer, [cfg.prompt, ""], device)
        s = cfg.sampler
        scheduler = make_scheduler()
        schedule = ddim_schedule(scheduler, s.steps, device)
        if static_step:
            if s.eta != 0:  # ddim_step has no stochastic term
                raise ValueError(f"sampler eta={s.eta}: the static-buffer step runs deterministic DDIM"
                                 " only (eta 0); use the scheduler step for eta > 0")
            if graphs is None:
                graphs = device.type == "cuda" and engines["unet_control"].graph_safe
            stepper = StaticStepper(schedule, graphs)
        else:
            stepper = SchedulerStepper(stepped_scheduler(scheduler, s.steps), s.eta)
        return Pipeline(
            cfg,
            EngineDenoiser(engines["unet_control"], embeddings, s.guidance, s.control_scale),
            EngineCodec(engines["vae_encoder"], engines["vae_decoder"]),
            stepper,
            BatchedAdapter(adapt_vae, cfg.adapt, fast_adapt or FastAdaptConfig(), latent_scale),
            schedule,
            device,
            parts=tuple(engines.values()),
        )
    except BaseException:
        for engine in engines.values():
            engine.deactivate()
        raise


def bundle_engines(bundle, backend: str, device: str = "cpu", models: Models | None = None,
                   threads: int | None = None) -> dict[str, Backend]:
    """The networks of a bundle on ``backend`` (one of backends.BACKENDS).

    'torch' runs the reference modules of ``models``, which must be the model the bundle
    was exported from (checked by weight identity); 'torch-cuda'/'torch-compile' run the
    same modules in FP16 on a CUDA device (the built-in tiny model needs no ``models``);
    'onnxruntime', 'openvino' (CPU) and 'tensorrt' run the bundle's graphs / engines.
    """


    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if models is not None:  # whatever runs the networks, given modules must be the bundle's model
        bundle.check(identity=models.identity())
    if backend == "torch":
        if models is None:
            raise BackendError("the torch backend needs the model the bundle was exported from")
        return torch_engines(models, bundle.resolution)
    if backend in ("torch-cuda", "torch-compile"):
        return _torch_cuda_bundle(bundle, backend, device, models)
    if backend == "tensorrt":

        engines: dict[str, Backend] = dict(trt_engines(bundle, device))
    else:
        runtime = OpenVinoBackend if backend == "openvino" else OrtBackend
        names = list(bundle.manifest["networks"])
        engines = {n: runtime(bundle.spec(n), bundle.graph(n), device, threads) for n in names}
    if "unet_control" not in engines:
        cn, unet = engines.pop("controlnet"), engines.pop("unet")
        folded = NetworkSpec("unet_control", unet.spec.inputs[:3] + cn.spec.inputs[2:], unet.spec.outputs)
        engines["unet_control"] = SplitUNetControl(folded, cn, unet)
    return engines


def _torch_cuda_bundle(bundle, backend: str, device: str, models: Models | None) -> dict[str, Backend]:
    """The bundle's model as TorchCudaBackends (FP16, channels-last; compiled for 'torch-compile')."""


    if torch.device(device).type != "cuda":
        raise BackendError(f"--backend {backend} runs on a CUDA device, not {device!r}; on the CPU use --backend torch")
    if models is None and bundle.manifest["model"]["name"] == TINY:
        models = build_tiny()
        bundle.check(identity=models.identity())
    if models is None:
        raise BackendError(f"the {backend} backend needs the model the bundle was exported from (--model/--controlnet)")
    cfg = TorchCudaConfig(compile=backend == "torch-compile")
    return torch_cuda_engines(models, bundle.resolution, cfg, device)
