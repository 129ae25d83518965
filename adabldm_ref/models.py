"""The networks of AdaBLDM: loading SD-1.5 + ControlNet from local files, and a tiny model.

No model hub is ever contacted: real models come from local diffusers-format directories
(or a ControlNet single checkpoint file), the built-in ``tiny`` model is built from
configuration with seeded weights and a tokenizer made offline.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .config import LATENT_SCALE, SchedulerConfig

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
TINY = "tiny"


class ModelLoadError(ValueError):
    """A model path or file that cannot be used, with what was expected."""


@dataclass
class Models:
    """The frozen SD-1.5 components and the trimap ControlNet of one (object, defect)."""

    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    name: str = TINY
    latent_scale: float = LATENT_SCALE

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "unet": self.unet,
            "controlnet": self.controlnet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
        }

    def eval_(self) -> "Models":
        for m in self.modules().values():
            m.eval().requires_grad_(False)
        return self

    def identity(self) -> str:
        """Hash of all weights: two models with the same identity give the same samples."""
        h = hashlib.sha256()
        for name, module in sorted(self.modules().items()):
            h.update(name.encode())
            for key, tensor in sorted(module.state_dict().items()):
                h.update(key.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())  # any device
        return h.hexdigest()[:16]


def make_scheduler(cfg: SchedulerConfig = SchedulerConfig()) -> DDIMScheduler:
    return DDIMScheduler(**vars(cfg))


def prompt_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids (len(prompts), 77), padded to the max length and truncated as SD does."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_prompts(models: Models, prompts: list[str]) -> torch.Tensor:
    """CLIP text embeddings, (len(prompts), 77, d) float32."""
    device = models.text_encoder.device
    return models.text_encoder(prompt_ids(models.tokenizer, prompts).to(device))[0]


# ---------------------------------------------------------------------------------------
# The built-in tiny model


def tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP-style byte-level BPE tokenizer built offline (no merges: one token per byte)."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _perturb_controlnet(controlnet: ControlNetModel, generator: torch.Generator) -> None:
    """Give the zero convolutions seeded weights, else the ControlNet would do nothing.

    diffusers zero-initialises the output convs to the UNet and the last conv of the hint
    encoder (without the latter the trimap would not reach the network at all).
    """
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    for conv in zero_convs:
        fan_in = conv.weight[0].numel()
        conv.weight.data = torch.randn(conv.weight.shape, generator=generator) / fan_in**0.5
        conv.bias.data = torch.randn(conv.bias.shape, generator=generator) * 0.02
    # He-normal hint encoder (its last conv is zero too); the last conv gets a gain so the
    # trimap's embedding is about as large as the latent's (a trained ControlNet's is).
    embedding = controlnet.controlnet_cond_embedding
    convs = [embedding.conv_in, *embedding.blocks, embedding.conv_out]
    for conv in convs:
        gain = 10.0 if conv is embedding.conv_out else 1.0
        fan_in = conv.weight[0].numel()
        conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * gain * (2.0 / fan_in) ** 0.5
        conv.bias.data.zero_()
    # Move the copied UNet encoder off the UNet's weights so the branch is its own network.
    for p in controlnet.parameters():
        p.data.add_(torch.randn(p.shape, generator=generator) * 0.01)


def build_tiny(seed: int = 0) -> Models:
    """A small SD-1.5-family model (same classes, latent stride 8) with seeded weights."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=256,
        )
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(8, 16, 32, 64)
        )
        _perturb_controlnet(controlnet, torch.Generator().manual_seed(seed + 1))
    return Models(unet, controlnet, vae, text_encoder, tokenizer, name=TINY).eval_()


# The SD-1.5 VAE's architecture (its config.json), for random-weight models of its size.
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
)


def build_random_sd15(seed: int = 0) -> Models:
    """SD-1.5-size networks with seeded random weights (for timing: speed ignores weights).

    UNet 860 M and ControlNet 361 M parameters, 768-d CLIP text encoder (12 layers),
    SD VAE (128-256-512-512); the tokenizer is the tiny byte-level one.
    """
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        vae = AutoencoderKL(**SD15_VAE)
        controlnet = ControlNetModel.from_unet(unet)
        _perturb_controlnet(controlnet, torch.Generator().manual_seed(seed + 1))
    return Models(unet, controlnet, vae, text_encoder, tokenizer, name="random-sd15").eval_()


# ---------------------------------------------------------------------------------------
# Local diffusers-format models


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelLoadError(f"{what} not found: {path}")
    return path


def conditioning_channels(state_dict_shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """ControlNet hint-encoder widths from checkpoint shapes (diffusers or original layout)."""
    keys = state_dict_shapes
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        widths = [keys["controlnet_cond_embedding.conv_in.weight"][0]]
        k = 1
        while f"controlnet_cond_embedding.blocks.{k}.weight" in keys:
            widths.append(keys[f"controlnet_cond_embedding.blocks.{k}.weight"][0])
            k += 2
        return tuple(widths)
    hint = sorted(
        (int(key.split(".")[-2]), shape[0])
        for key, shape in keys.items()
        if ".input_hint_block." in f".{key}" and key.endswith(".weight")
    )
    if not hint:
        raise ModelLoadError("checkpoint has no ControlNet hint encoder (input_hint_block)")
    widths = [c for _, c in hint[:-1]]  # the last conv maps to the UNet's width
    return tuple(c for i, c in enumerate(widths) if i == 0 or c != widths[i - 1])


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=False)  # only with allow_pickle
    return sd.get("state_dict", sd)


def controlnet_dir(path: Path) -> Path:
    """The diffusers ControlNet folder meant by ``path``: itself, or an adabldm-train run
    directory's ``controlnet/`` (users pass the --out they trained into). Anything else
    without a config.json is a ModelLoadError, not diffusers' traceback."""
    if (path / "config.json").is_file():
        return path
    if (path / "train.json").is_file() and (path / "controlnet" / "config.json").is_file():
        return path / "controlnet"
    hint = (" (an adabldm-train run directory whose training has not finished: no controlnet/ yet)"
            if (path / "train.json").is_file() else "")
    raise ModelLoadError(f"ControlNet folder {path} has no config.json{hint}: expected a diffusers ControlNet"
                         " directory, e.g. adabldm-train's OUT/controlnet")


def load_controlnet(
    path: str | Path, unet: UNet2DConditionModel, allow_pickle: bool = False
) -> ControlNetModel:
    """A ControlNet from a diffusers directory or a single checkpoint file.

    A single file in diffusers' key layout is loaded strictly into a ControlNet shaped
    like ``unet``; one in the original (ldm / ControlNet) layout goes through diffusers'
    single-file converter, with the config derived from ``unet`` so no hub is asked.
    Pickle checkpoints (.ckpt/.pt/.bin) are refused unless ``allow_pickle``.
    """
    path = _require(Path(path), "ControlNet")
    if path.is_dir():
        path = controlnet_dir(path)
        try:
            return ControlNetModel.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # diffusers raises OSError, ValueError, safetensors errors; name the folder
            raise ModelLoadError(f"ControlNet {path} could not be read: {exc}") from None
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"ControlNet {path} is a pickle checkpoint ({path.suffix}), which can run code when"
            " loaded; convert it to .safetensors or pass --allow-pickle if you trust it"
        )
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"ControlNet {path}: expected a diffusers directory, a .safetensors file or"
            f" (with --allow-pickle) one of {', '.join(PICKLE_SUFFIXES)}"
        )
    try:
        sd = _read_checkpoint(path)
        widths = conditioning_channels({k: tuple(v.shape) for k, v in sd.items()})
        skeleton = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=widths, load_weights_from_unet=False
        )
        if "controlnet_cond_embedding.conv_in.weight" in sd:
            skeleton.load_state_dict(sd, strict=True)
            return skeleton
        with tempfile.TemporaryDirectory() as cfg_dir:
            Path(cfg_dir, "config.json").write_text(json.dumps(dict(skeleton.config)))
            return ControlNetModel.from_single_file(str(path), config=cfg_dir, local_files_only=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors/torch/diffusers raise many kinds; name the file
        raise ModelLoadError(f"ControlNet {path} could not be read: {exc}") from exc


def load_pretrained(
    model_dir: str | Path, controlnet: str | Path | None, allow_pickle: bool = False
) -> Models:
    """SD-1.5 from a local diffusers directory (unet/, vae/, text_encoder/, tokenizer/).

    ``controlnet`` None: an untrained one, ``ControlNetModel.from_unet`` (for training).
    """
    root = _require(Path(model_dir), "model directory")
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        _require(root / sub, f"'{sub}' folder of the diffusers model (expected in {root})")
    kw = dict(local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **kw)
    cn = ControlNetModel.from_unet(unet) if controlnet is None else load_controlnet(controlnet, unet, allow_pickle)
    scale = getattr(vae.config, "scaling_factor", LATENT_SCALE)
    return Models(unet, cn, vae, text_encoder, tokenizer, name=str(root), latent_scale=scale).eval_()


def save_pretrained(models: Models, model_dir: str | Path, controlnet_dir: str | Path) -> None:
    """Write a model in the diffusers layout that :func:`load_pretrained` reads."""
    root = Path(model_dir)
    models.unet.save_pretrained(root / "unet")
    models.vae.save_pretrained(root / "vae")
    models.text_encoder.save_pretrained(root / "text_encoder")
    models.tokenizer.save_pretrained(root / "tokenizer")
    make_scheduler().save_pretrained(root / "scheduler")
    models.controlnet.save_pretrained(controlnet_dir)


def load_models(
    model: str | None = None, controlnet: str | None = None, allow_pickle: bool = False,
    defect: str | None = None,
) -> Models:
    """``None`` or ``"tiny"``: the built-in model, with its own ControlNet or ``controlnet``
    (e.g. one that adabldm-train made for it); ``"demo"``: the shipped demo model with the
    ControlNet ``controlnet`` (a demo defect name or a path), else the one of ``defect``
    (adabldm_ref.demo.controlnet_choice); else local paths (both required)."""
    if model == "demo":  # adabldm_ref.demo.DEMO
        from .demo import load_demo

        return load_demo(controlnet, defect, allow_pickle)
    if model in (None, TINY):
        models = build_tiny()
        if controlnet is not None:
            models.controlnet = load_controlnet(controlnet, models.unet, allow_pickle).eval().requires_grad_(False)
        return models
    if controlnet is None:
        raise ModelLoadError(
            "a real model needs both --model (diffusers SD-1.5 directory) and --controlnet"
            f" (got model={model!r}, controlnet={controlnet!r})"
        )
    return load_pretrained(model, controlnet, allow_pickle=allow_pickle)
