"""Training a trimap ControlNet for one (object, defect type) (ALGORITHM.md, "Training").

The loop is diffusers' ControlNet recipe (examples/controlnet/train_controlnet.py) with
the authors' settings: latents = 0.18215 * VAE posterior sample of the pair's target,
noise-prediction MSE at uniform timesteps of the 1000-step scaled-linear schedule, the
UNet conditioned on the prompt and the ControlNet on the empty prompt, AdamW on the
ControlNet only. Everything random about pair ``i`` of step ``s`` (the pair itself, its
posterior sample, noise, timestep, prompt dropout) is drawn from generators seeded by
``(seed, s, i)``, and a checkpoint holds weights, optimiser, step and RNG state: a resumed
run reaches the same weights as an uninterrupted one (bit for bit on the CPU with the
same thread count), and gradient accumulation sees what a larger batch sees.

The run directory (checkpoints, record, loss log) is :mod:`adabldm_ref.train_run`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from adabldm_core.contact import contact_sheet
from adabldm_core.io import InputError, folder_lock, write_png
from adabldm_core.precision import Precision

from .config import (
    LATENT_STRIDE,
    AdaptConfig,
    GenerationConfig,
    SamplerConfig,
    SchedulerConfig,
)
from .fewshot import (
    Split,
    data_digest,
    load_backgrounds,
    load_shot,
    pair_files,
    split_files,
)
from .masks import PlacementError
from .models import (
    TINY,
    Models,
    build_tiny,
    encode_prompts,
    load_controlnet,
    load_pretrained,
)
from .pairs import Augment, Background, Pair, Shot, host_table, make_pairs
from .pipeline import OkImage, RealMasks, plan_sample, reference_pipeline
from .train_run import (
    FORMAT_VERSION,
    LossLog,
    RunDir,
    TrainError,
    load_checkpoint,
    loss_plot,
    open_run,
    read_losses,
    run_key,
    save_checkpoint,
    save_controlnet,
    truncate_loss_log,
    write_record,
)

log = logging.getLogger(__name__)

TRAIN_PRECISIONS = (Precision.FP32, Precision.BF16, Precision.FP16)
LOG_EVERY = 10  # steps between host syncs for the loss (the loss log is still per step)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Defaults: the authors' recipe."""

    images: Path  # OK images of the object (any size, resized to ``resolution``)
    defects: Path  # real defect images (MVTec test/<defect>)
    defect_masks: Path  # their masks (MVTec ground_truth/<defect>), paired by name
    out: Path  # the run directory
    object_name: str
    defect: str
    foreground: Path | None = None  # foreground masks named like the OK images; else ``foreground_mode``
    foreground_mode: str = "full"  # "full" (textures) or "otsu" (objects: Otsu + 5x5 close)
    shots: int | None = None  # real defects that train (first K by name); None: the first third
    resolution: int = 256  # the paper's working resolution
    model: str | None = None  # local diffusers SD-1.5 directory; None: the built-in tiny model
    init_controlnet: str | None = None  # start from this ControlNet; None: ControlNetModel.from_unet
    steps: int = 30_000  # the authors' checkpoint is epoch=9-step=29999 (batch 4)
    batch_size: int = 4  # the authors' batch
    grad_accum: int = 1  # micro-batches per optimiser step (effective batch = batch_size * grad_accum)
    lr: float = 1e-5  # the authors' AdamW rate
    weight_decay: float = 1e-2  # AdamW default (diffusers' --adam_weight_decay, torch's AdamW)
    max_grad_norm: float = 1.0  # diffusers' default clip; 0: off (the authors' Lightning run clips nothing)
    seed: int = 0
    rotate: float = 360.0  # paper: random rotation 0-360 degrees
    scale: tuple[float, float] = (0.85, 1.15)  # paper: isotropic scale range
    empty_prompt_p: float = 0.0  # paper: 10% empty-prompt dropout; the authors' code has none
    precision: str = "fp32"  # the authors train in fp32; bf16/fp16: autocast (fp16 needs CUDA)
    gradient_checkpointing: bool = False  # recompute UNet/ControlNet activations in backward
    device: str = "cpu"
    # Bookkeeping: these do not change the weights, so they may differ on a resumed run.
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    validate_every: int = 0  # 0: only at the end
    validate_samples: int = 4
    validate_steps: int = 20  # DDIM steps of the validation samples (few: a look, not a result)

    def __post_init__(self) -> None:
        Precision.of(self.precision, TRAIN_PRECISIONS, "--precision")
        if self.resolution <= 0 or self.resolution % 64:
            raise ValueError(f"--resolution {self.resolution}: expected a positive multiple of 64")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "validate_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected at least 1")
        if self.validate_every < 0 or self.validate_steps < 2:
            raise ValueError(f"--validate-every {self.validate_every}, validation steps {self.validate_steps}:"
                             " expected >= 0 and >= 2")
        if not self.lr > 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError(f"--lr {self.lr}, weight decay {self.weight_decay}, --max-grad-norm"
                             f" {self.max_grad_norm}: expected lr > 0 and the others >= 0")
        if not 0.0 <= self.empty_prompt_p <= 1.0:
            raise ValueError(f"--empty-prompt-p {self.empty_prompt_p}: expected a probability in [0, 1]")
        if self.foreground_mode not in ("full", "otsu"):
            raise ValueError(f"--foreground-mode {self.foreground_mode!r}: expected full or otsu")
        Augment(self.rotate, tuple(self.scale))  # range checks
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"--shots {self.shots}: expected at least 1")
        check_device(self.device)
        if self.precision == "fp16" and torch.device(self.device).type != "cuda":
            raise ValueError("--precision fp16 needs --device cuda (it scales the loss for fp16 gradients)")

    @property
    def prompt(self) -> str:
        return f"a {self.object_name} with a {self.defect}"

    @property
    def augment(self) -> Augment:
        return Augment(rotate=self.rotate, scale=tuple(self.scale))

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def check_device(name: str) -> None:
    """A ValueError naming ``name`` unless this torch can use it: CUDA missing or an index
    past the last GPU would otherwise fail deep in ``.to(device)`` with a traceback."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (device.index or 0) >= count:
        raise ValueError(f"--device {name}: this machine has {count} CUDA device(s) usable by torch"
                         f" {torch.__version__}; expected one of them, or --device cpu")


# Fields that change neither the pairs nor the arithmetic; paths are judged by the data
# digest and the model identity, so a moved folder with the same files is the same run.
BOOKKEEPING = ("images", "defects", "defect_masks", "out", "foreground", "model", "init_controlnet", "steps",
               "checkpoint_every", "keep_checkpoints", "validate_every", "validate_samples", "validate_steps")


def run_settings(cfg: TrainConfig, digest: str, identity: str, optimizer: str) -> dict:
    """What must be equal for a run directory to be continued."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in BOOKKEEPING}
    settings["scale"] = list(settings["scale"])
    return {**settings, "data_digest": digest, "model_identity": identity, "optimizer": optimizer}


def tool_versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def step_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit torch seed for pair ``index`` of optimiser step ``step`` (its noise and timestep)."""
    state = np.random.SeedSequence([seed, step, index, 1]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


# ---------------------------------------------------------------------------------------
# Data and models


@dataclass(frozen=True)
class TrainData:
    backgrounds: list[Background]
    shots: list[Shot]  # the held-in shots only
    hosts: list[list[int]]  # per shot, the backgrounds that can hold it
    split: Split
    digest: str
    skipped: list[str] = field(default_factory=list)  # OK images that could not be used, with why


def load_data(cfg: TrainConfig) -> TrainData:
    """OK images, the held-in real defects and the split; errors name the file."""
    files, split = split_files(pair_files(cfg.defects, cfg.defect_masks), cfg.shots, cfg.defects)
    aug = cfg.augment
    shots = [load_shot(f, cfg.resolution, aug.binarize_at) for f in files]
    skipped: list[str] = []
    backgrounds = load_backgrounds(cfg.images, cfg.resolution, cfg.foreground, cfg.foreground_mode, skipped)
    hosts = host_table(shots, backgrounds)
    for f, shot, host in zip(files, shots, hosts):
        if not host:
            ys, xs = np.nonzero(shot.mask)
            raise InputError(
                f"defect {f.mask} ({np.ptp(ys) + 1}x{np.ptp(xs) + 1} px at {cfg.resolution} px) fits in no"
                f" OK image's foreground ({cfg.images}, foreground "
                + (f"masks {cfg.foreground})" if cfg.foreground else f"mode {cfg.foreground_mode})")
            )
    return TrainData(backgrounds, shots, hosts, split, data_digest(backgrounds, shots), skipped)


def initial_controlnet(unet, cfg: TrainConfig):
    """``ControlNetModel.from_unet`` (UNet encoder copy, zero convolutions; the hint
    encoder's other convs seeded from ``cfg.seed``) or ``cfg.init_controlnet``."""
    from diffusers import ControlNetModel

    if cfg.init_controlnet is not None:
        return load_controlnet(cfg.init_controlnet, unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return ControlNetModel.from_unet(unet)


def load_base(cfg: TrainConfig) -> Models:
    """The frozen SD-1.5 networks (or the built-in tiny ones) with the initial ControlNet."""
    if cfg.model in (None, TINY):
        models = build_tiny()
    elif cfg.model == "demo":  # adabldm_ref.demo.DEMO
        from .demo import load_demo_base

        models = load_demo_base()
    else:
        models = load_pretrained(cfg.model, None)
    models.controlnet = initial_controlnet(models.unet, cfg)
    return models


# ---------------------------------------------------------------------------------------
# The trainer


def to_batch(pairs: list[Pair], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (B, 3, R, R) in [-1, 1], hints (B, 3, R, R) = trimap / 255), float32."""
    target = torch.from_numpy(np.stack([p.target for p in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    hint = torch.from_numpy(np.stack([p.trimap for p in pairs]))[:, None].float().div(255).expand(-1, 3, -1, -1)
    return target.to(device), hint.contiguous().to(device)


class Trainer:
    """One ControlNet under training against frozen networks; ``step(s)`` is optimiser step s.

    On CUDA: TF32, channels-last, the frozen networks in the training precision (bf16 or
    fp16, autocast; the ControlNet's weights stay fp32), 8-bit AdamW if bitsandbytes is
    installed; ``gradient_checkpointing`` recomputes the UNet's and ControlNet's activations.
    """

    def __init__(self, cfg: TrainConfig, models: Models, data: TrainData):
        self.cfg, self.data = cfg, data
        self.device = torch.device(cfg.device)
        self.precision = Precision.of(cfg.precision, TRAIN_PRECISIONS)
        cuda = self.device.type == "cuda"
        frozen_dtype = self.precision.dtype if cuda else torch.float32
        self.unet = models.unet.to(self.device).eval().requires_grad_(False)
        self.vae = models.vae.to(self.device).eval().requires_grad_(False)
        for frozen in (self.unet, self.vae):
            if frozen.dtype != frozen_dtype:  # (casting to the dtype it has makes diffusers warn)
                frozen.to(frozen_dtype)
        self.controlnet = models.controlnet.to(self.device).train().requires_grad_(True)
        self.latent_scale = models.latent_scale
        embeddings = encode_prompts(models, [cfg.prompt, ""]).to(self.device)
        self.prompt_emb, self.empty_emb = embeddings.split(1)  # (1, 77, d) each
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            for m in (self.unet, self.vae, self.controlnet):
                m.to(memory_format=torch.channels_last)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.controlnet.enable_gradient_checkpointing()
        self.scheduler = _noise_schedule(self.device)
        self.optimizer, self.optimizer_name = make_optimizer(self.controlnet.parameters(), cfg, cuda)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def pairs(self, step: int, micro: int) -> list[Pair]:
        """The pairs of micro-batch ``micro`` of step ``step`` (indices micro*B .. micro*B+B-1)."""
        b, d = self.cfg.batch_size, self.data
        return make_pairs(self.cfg.seed, step, b, d.shots, d.backgrounds, d.hosts, self.cfg.augment, first=micro * b)

    def loss(self, step: int, micro: int) -> torch.Tensor:
        """Noise-prediction MSE of one micro-batch (a float32 scalar)."""
        b = self.cfg.batch_size
        target, hint = to_batch(self.pairs(step, micro), self.device)
        eps, noise, t, drop = self.draws(step, range(micro * b, micro * b + b), target.shape[-1] // LATENT_STRIDE)
        text = torch.where(drop[:, None, None], self.empty_emb, self.prompt_emb)
        with torch.no_grad():
            dist = self.vae.encode(target.to(self.vae.dtype)).latent_dist
            latents = (dist.mean + dist.std * eps.to(dist.mean.dtype)).float() * self.latent_scale  # posterior sample
        noisy = self.scheduler.add_noise(latents, noise, t)
        if self.device.type == "cuda":
            noisy, hint = (v.contiguous(memory_format=torch.channels_last) for v in (noisy, hint))
        with self.autocast():
            down, mid = self.controlnet(noisy, t, encoder_hidden_states=self.empty_emb.expand(b, -1, -1),
                                        controlnet_cond=hint, return_dict=False)
            dtype = self.unet.dtype
            pred = self.unet(noisy.to(dtype), t, encoder_hidden_states=text.to(dtype),
                             down_block_additional_residuals=[r.to(dtype) for r in down],
                             mid_block_additional_residual=mid.to(dtype)).sample
        return F.mse_loss(pred.float(), noise)

    def draws(self, step: int, indices: range, size: int):
        """Per pair: posterior noise and diffusion noise (B, 4, size, size), timestep (B,) and
        empty-prompt flag (B,), each pair's from its own generator seeded (seed, step, index),
        so a pair's arithmetic is the same whatever the batch and accumulation layout."""
        eps, noise, t, drop = [], [], [], []
        for i in indices:
            g = torch.Generator(self.device).manual_seed(step_seed(self.cfg.seed, step, i))
            eps.append(torch.randn((4, size, size), generator=g, device=self.device))
            noise.append(torch.randn((4, size, size), generator=g, device=self.device))
            t.append(torch.randint(0, self.scheduler.config.num_train_timesteps, (), generator=g, device=self.device))
            drop.append(torch.rand((), generator=g, device=self.device) < self.cfg.empty_prompt_p)
        return torch.stack(eps), torch.stack(noise), torch.stack(t), torch.stack(drop)

    def step(self, step: int) -> torch.Tensor:
        """One optimiser step over ``grad_accum`` micro-batches; the mean loss (on the device)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            loss = self.loss(step, micro) / cfg.grad_accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.controlnet.parameters(), cfg.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return total

    def state(self, step: int, run_key: str) -> dict:
        """A checkpoint: weights, optimiser, loss scaler, step, RNG states."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format_version": FORMAT_VERSION, "step": step, "run_key": run_key,
                "controlnet": self.controlnet.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "rng": rng}

    def load_state(self, state: dict) -> None:
        self.controlnet.load_state_dict(state["controlnet"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def _noise_schedule(device):
    """The 1000-step scaled-linear training schedule of SD-1.5 (q_sample's alphas)."""
    from diffusers import DDPMScheduler

    s = SchedulerConfig()
    scheduler = DDPMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start,
                              beta_end=s.beta_end, beta_schedule=s.beta_schedule, prediction_type=s.prediction_type)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    return scheduler


def make_optimizer(params, cfg: TrainConfig, cuda: bool):
    """AdamW (diffusers' betas 0.9/0.999, eps 1e-8); bitsandbytes' 8-bit AdamW on CUDA if installed."""
    kw = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, eps=1e-8)
    if cuda:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kw), "adamw8bit"
        except ImportError:
            pass
    return torch.optim.AdamW(params, **kw), "adamw"


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class TrainReport:
    out: Path
    steps: int
    start: int  # the step this invocation continued from (0: from scratch)
    final_loss: float | None
    record: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # inputs left out (adabldm-train exits 3)


def train(cfg: TrainConfig, progress: bool = True, on_step: Callable[[int], None] | None = None) -> TrainReport:
    """Train (or continue training) the ControlNet of ``cfg`` in ``cfg.out``.

    ``on_step(s)`` is called after each optimiser step (and its checkpoint, if any).
    A second run on the same ``cfg.out`` is refused (InputError naming the holder) while
    this one runs: two writers would interleave the loss log and checkpoints. The lock is
    taken first so the second is refused before it loads anything; a folder made for it
    is removed again if the run stops before writing (bad data, say).
    """
    run = RunDir(Path(cfg.out))
    with folder_lock(run.root):
        return _train_locked(cfg, run, progress, on_step)


def _train_locked(cfg: TrainConfig, run: RunDir, progress: bool, on_step) -> TrainReport:
    data = load_data(cfg)
    models = load_base(cfg)
    identity = models.identity()  # frozen networks + initial ControlNet, before any update
    trainer = Trainer(cfg, models, data)
    settings = run_settings(cfg, data.digest, identity, trainer.optimizer_name)
    settings["split"] = data.split.to_dict()
    start = open_run(run, cfg.steps, settings)
    key = run_key(settings)
    if start:
        state = load_checkpoint(run.checkpoint(start))
        if state["run_key"] != key:
            raise TrainError(f"checkpoint {run.checkpoint(start)} belongs to run {state['run_key']}, not {key}")
        trainer.load_state(state)
        truncate_loss_log(run, start)
        log.info("resuming %s from step %d", run.root, start)
    else:
        run.loss_log.unlink(missing_ok=True)
    record = {
        "format_version": FORMAT_VERSION, "run_key": key, "settings": settings, "config": cfg.to_dict(),
        "prompt": cfg.prompt, "split": data.split.to_dict(),
        "data": {"digest": data.digest, "ok_images": len(data.backgrounds), "shots": [s.name for s in data.shots],
                 "skipped": data.skipped},
        "model": {"name": models.name, "identity": identity, "init_controlnet": cfg.init_controlnet},
        "device": str(trainer.device), "optimizer": trainer.optimizer_name, "torch_threads": torch.get_num_threads(),
        "versions": tool_versions(),
    }
    losses = LossLog(run, cfg.batch_size * cfg.grad_accum)
    write_record(run, record, start, cfg.steps, None, "running")
    bar = _progress(cfg.steps, start, progress)
    for s in range(start + 1, cfg.steps + 1):
        losses.add(s, trainer.step(s))
        last = s == cfg.steps
        checkpoint = s % cfg.checkpoint_every == 0 or last
        validate = last or (cfg.validate_every and s % cfg.validate_every == 0)
        if len(losses.pending) >= LOG_EVERY or checkpoint or validate:
            losses.flush()
            bar.set_postfix(loss=f"{losses.last:.4f}", img_s=f"{losses.images_per_s:.2f}")
        if validate:
            _validate(run, trainer, models, data, cfg, s)
        if checkpoint:
            save_checkpoint(run, trainer.state(s, key), cfg.keep_checkpoints)
            write_record(run, record, s, cfg.steps, losses.last, "running")
        if validate or checkpoint:
            losses.t0 = time.perf_counter()  # images/s counts training only
        bar.update(1)
        if on_step is not None:
            on_step(s)
    bar.close()
    history = read_losses(run)
    final = history[-1][1] if history else None
    # Always (atomic; a finished run rewrites the same bytes): a run extended to more steps
    # and stopped right after its last checkpoint resumes at start == steps, and the
    # ControlNet there is still the shorter run's.
    save_controlnet(run, trainer.controlnet)
    write_png(run.loss_plot, loss_plot(history))
    write_record(run, record, cfg.steps, cfg.steps, final, "done", history)
    return TrainReport(run.root, cfg.steps, start, final, json.loads(run.record.read_text()), data.skipped)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", desc="train", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------
# Validation sheets and the loss plot


def validation_samples(models: Models, cfg: TrainConfig, data: TrainData, device) -> tuple[list, list[str]]:
    """Rows (OK image, trimap, generated) of ``cfg.validate_samples`` fixed-seed samples made
    by the project's blended sampler (``cfg.validate_steps`` DDIM steps, no adaptation) with
    the held-in shots' masks placed on the OK images."""

    gen = GenerationConfig(object_name=cfg.object_name, defect=cfg.defect, resolution=cfg.resolution, seed=cfg.seed,
                           sampler=SamplerConfig(steps=cfg.validate_steps), adapt=AdaptConfig(iters=0))
    oks = [OkImage(b.name, b.rgb, b.foreground) for b in data.backgrounds]
    masks = RealMasks(tuple((s.name, s.mask.astype(np.uint8) * 255) for s in data.shots))
    plans = []
    for i in range(8 * cfg.validate_samples):  # a shot too large for one OK image is skipped
        if len(plans) == cfg.validate_samples:
            break
        with contextlib.suppress(PlacementError):
            plans.append(plan_sample(i, gen, oks, masks))
    with reference_pipeline(models, gen, device) as pipe:
        samples = pipe.run(plans)
    return [[p.rgb, p.trimap, s.blended] for p, s in zip(plans, samples)], [p.mask_source for p in plans]


def _validate(run: RunDir, trainer: Trainer, models: Models, data: TrainData, cfg: TrainConfig, step: int) -> None:

    trainer.controlnet.eval()
    try:
        with torch.random.fork_rng(devices=[]), trainer.autocast(), torch.no_grad():
            rows, names = validation_samples(models, cfg, data, trainer.device)
    finally:
        trainer.controlnet.train()
    write_png(run.validation(step), contact_sheet(rows, ["OK image", "trimap", f"step {step}"], names))
