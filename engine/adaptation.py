"""Fast online decoder adaptation (ALGORITHM.md, stage 4), batched across samples.

The reference (:func:`adabldm_ref.adaptation.adapt_decoder`) fine-tunes a copy of the
whole VAE decoder for each sample, 200 AdamW steps, one sample at a time. Here the same
loss and optimiser run with these shortcuts, each an option of :class:`FastAdaptConfig`
whose reference value gives the reference behaviour:

- only the tail of the decoder trains (``trainable``); the frozen head's output is
  computed once per sample instead of once per step (``cache_frozen``);
- B samples train at once, each with its own copy of the tail's parameters, stacked
  along a leading axis and run through ``torch.func.vmap`` (``batching``);
- step count, learning rate, early stop on the loss, bf16 autocast, channels-last layout.

The model's own decoder is never modified: trained parameters live outside it and are
applied with ``torch.func.functional_call``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from adabldm_core.precision import ADAPT_PRECISIONS, Precision
from torch import nn
from torch.func import functional_call, vmap
from torch.optim.adamw import adamw

from adabldm_ref.adaptation import AdaptResult, adaptation_loss
from adabldm_ref.config import LATENT_STRIDE, AdaptConfig

ALL = "all"
# (iters, lr) that adabldm-run uses with the region of interest (--adapt-region roi): the
# cheapest setting of benchmarks/bench_adaptation.py within 0.5 dB of the reference's 200
# whole-image steps on background and defect (results/adaptation_cpu.md, demo decoder).
ROI_ADAPT = (20, 5e-4)
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FastAdaptConfig:
    """Shortcuts over the reference adaptation; :meth:`reference` switches all of them off.

    The defaults compute the reference's arithmetic; adabldm-run turns ``roi`` on with
    ROI_ADAPT's steps and rate, which benchmarks/bench_adaptation.py chose on the demo
    decoder (results/adaptation_cpu.md: 29x fewer FLOPs at SD-1.5 size, background -0.3 dB
    and defect +0.1 dB against the reference's 200 whole-image steps). The other
    shortcuts are opt-in; their figures below are from earlier runs on a tiny decoder.
    """

    # First decoder stage that trains (a name from decoder_stage_names(), or a prefix of
    # one such as "up_blocks.3"); everything before it is frozen. "all": the whole decoder
    # (reference). Measured: training only up_blocks.3 (+ output layers) costs 1/4 of the
    # arithmetic per step (SD-size), up_blocks.2+ 1/2, but every tail-only variant stopped
    # 7.4-9.7 dB of background PSNR short of the reference on the tiny decoder (pre-trained or not).
    trainable: str = ALL
    # Frozen head computed once per sample, not once per step (exact; no-op while "all"
    # trains). False recomputes it every step: only costs time, kept to measure caching.
    cache_frozen: bool = True
    # Upper bound on AdamW updates per sample; None: AdaptConfig.iters (200, reference).
    # Measured (adaptation_cpu.md): 100 steps at lr 2e-4 lost 1.1 dB of background PSNR,
    # 20 at 1e-3 lost 6.5 dB; the defect region moved to 30.5 / 21.2 dB from the reference's.
    iters: int | None = None
    # AdamW learning rate; None: AdaptConfig.lr (1e-4). Fewer steps need a larger lr to
    # move the weights as far as the reference's 200 steps do.
    lr: float | None = None
    # Stop a sample once its loss fell by less than this fraction over the last
    # `patience` steps (its image is the one of that step); 0: never (reference). The
    # reference's loss is still falling at step 200 on the tiny decoder.
    early_stop_tol: float = 0.0
    patience: int = 10  # window of the early-stop test, in steps
    # "vmap": B samples in one grouped computation, each with its own parameters; "loop":
    # one sample after another (reference). Same per-sample results. On the CPU vmap was
    # slower (0.8x, tiny decoder at B=3 and SD-size): grouped convolutions and a
    # decomposed GroupNorm cost more than per-sample kernels. Not yet measured on a GPU.
    batching: Literal["vmap", "loop"] = "loop"
    # "bf16": autocast the decoder to bfloat16 (GPUs with bf16 tensor cores, CPUs with
    # AVX512-BF16/AMX); "fp32": reference. Measured on such a CPU: 2.1-2.2x cheaper per sample
    # at SD-1.5 size, -0.05 dB background and 49.5 dB defect PSNR vs the reference (0.6-0.7x
    # on the tiny decoder). Opt-in (adabldm-run --adapt-precision bf16): not the reference's result.
    precision: Precision = Precision.FP32
    # NHWC activations and conv weights (each sample's copy): the layout oneDNN's and
    # cuDNN's fastest convolutions want; the same arithmetic up to fp32 rounding (after 200
    # steps the tiny decoder's 8-bit images equal the reference's). Measured on the CPU, a
    # small gain: 1.05x per SD-1.5-size sample in adaptation_cpu.md (none with bf16),
    # 1.22x per step in adaptation_kernel_cpu.md (1.11x and 1.02x in its earlier committed
    # runs: this shared machine's noise). Not measured on a GPU, where tensor-core convolutions want it.
    channels_last: bool = False
    # Region of interest (issue 15): adapt on the latent crop around M's bounding box,
    # widened by ``roi_margin`` latent cells on each side, and take the OK image itself
    # beyond it, where the preservation term (lambda = 100) asks for exactly that image.
    # Cost then grows with the defect's box, not the image. The crop's decode is blended
    # into the OK image over ``roi_feather`` px inside the crop's edge (not at image
    # edges), so no step appears where the crop ends. False: the whole image (reference).
    roi: bool = False
    roi_margin: int = 4  # latent cells (x8 px): a 3x3-conv decoder's reach stays inside
    roi_feather: int = 8  # px of the linear blend at the crop's inner edge

    def __post_init__(self) -> None:
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"iters={self.iters}: expected >= 0 or None")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr}: expected > 0 or None")
        if not 0.0 <= self.early_stop_tol < 1.0:
            raise ValueError(f"early_stop_tol={self.early_stop_tol}: expected 0 <= tol < 1")
        if self.patience < 1:
            raise ValueError(f"patience={self.patience}: expected >= 1")
        if self.roi_margin < 0 or self.roi_feather < 0 or self.roi_feather > LATENT_STRIDE * self.roi_margin:
            raise ValueError(
                f"roi_margin={self.roi_margin}, roi_feather={self.roi_feather}: expected margin >= 0 latent"
                f" cells and 0 <= feather <= {LATENT_STRIDE} x margin px (the blend stays outside M)"
            )
        if self.batching not in ("vmap", "loop"):
            raise ValueError(f"batching={self.batching!r}: expected 'vmap' or 'loop'")
        object.__setattr__(self, "precision", Precision.of(self.precision, ADAPT_PRECISIONS, "adaptation precision"))

    @classmethod
    def reference(cls) -> "FastAdaptConfig":
        """Every shortcut off: the reference loop's computation, sample by sample."""
        return cls(
            trainable=ALL, cache_frozen=False, iters=None, lr=None, early_stop_tol=0.0,
            batching="loop", precision=Precision.FP32, channels_last=False, roi=False,
        )

    @property
    def caches_head(self) -> bool:
        """Whether a frozen head is computed once: cache_frozen has nothing to cache while all trains."""
        return self.cache_frozen and self.trainable != ALL

    def replace(self, **changes) -> "FastAdaptConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BatchAdaptResult:
    images: torch.Tensor  # (B, 3, H, W) float32 in ~[-1, 1]: D_theta_b(z*_b)
    loss_first: torch.Tensor  # (B,) float32, before any update
    loss_final: torch.Tensor  # (B,) float32, of the returned image
    steps: torch.Tensor  # (B,) int64, AdamW updates behind the returned image


# ---------------------------------------------------------------------------------------
# The decoder as a sequence of stages


class DecoderPart(nn.Module):
    """A run of consecutive decoder stages, x (N, C, h, w) -> (N, C', h', w')."""

    def __init__(self, stages: list[tuple[str, nn.Module, bool]]):
        super().__init__()
        self.names = [name for name, _, _ in stages]
        self.takes_temb = [t for _, _, t in stages]
        self.stages = nn.ModuleList([m for _, m, _ in stages])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage, takes_temb in zip(self.stages, self.takes_temb):
            x = stage(x, None) if takes_temb else stage(x)
        return x


def decoder_stages(decoder: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, takes_temb) in the order of diffusers' ``Decoder.forward``."""
    if not isinstance(getattr(decoder, "conv_norm_out", None), nn.GroupNorm):
        raise ValueError(
            f"{type(decoder).__name__}: expected a diffusers Decoder with GroupNorm output"
            " (AutoencoderKL.decoder); spatial-norm decoders are not supported"
        )
    stages = [("conv_in", decoder.conv_in, False), ("mid_block", decoder.mid_block, True)]
    for i, block in enumerate(decoder.up_blocks):
        stages += [(f"up_blocks.{i}.resnets.{j}", r, True) for j, r in enumerate(block.resnets)]
        ups = block.upsamplers or []
        stages += [(f"up_blocks.{i}.upsamplers.{j}", u, False) for j, u in enumerate(ups)]
    stages += [
        ("conv_norm_out", decoder.conv_norm_out, False),
        ("conv_act", decoder.conv_act, False),
        ("conv_out", decoder.conv_out, False),
    ]
    return stages


def decoder_stage_names(decoder: nn.Module) -> list[str]:
    return [name for name, _, _ in decoder_stages(decoder)]


def split_decoder(decoder: nn.Module, trainable: str) -> tuple[DecoderPart, DecoderPart]:
    """(frozen head, trainable tail); tail(head(h)) == decoder(h) op for op."""
    stages = decoder_stages(decoder)
    if trainable == ALL:
        return DecoderPart([]), DecoderPart(stages)
    names = [name for name, _, _ in stages]
    hits = [k for k, n in enumerate(names) if n == trainable or n.startswith(trainable + ".")]
    if not hits:
        raise ValueError(
            f"trainable={trainable!r}: expected 'all' or a decoder stage (or prefix of one):"
            f" {', '.join(names)}"
        )
    return DecoderPart(stages[: hits[0]]), DecoderPart(stages[hits[0] :])


# ---------------------------------------------------------------------------------------
# Per-sample parameters, forward and loss


def stack_params(part: nn.Module, batch: int, channels_last: bool = False) -> Params:
    """Each parameter of ``part`` repeated to (B, *shape): a trainable copy per sample.

    ``channels_last``: conv weights (4-d) laid out so that each sample's copy ``[b]`` is
    channels-last, as ``module.to(memory_format=torch.channels_last)`` would make it.
    """
    def copies(p: torch.Tensor) -> torch.Tensor:
        stacked = p.detach().unsqueeze(0).repeat(batch, *([1] * p.dim()))
        if channels_last and p.dim() == 4:  # (B, O, I, kh, kw) stored as (B, O, kh, kw, I)
            stacked = stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return stacked.requires_grad_(True)

    return {name: copies(p) for name, p in part.named_parameters()}


def tail_forward(tail: DecoderPart, params: Params, x: torch.Tensor, batching: str) -> torch.Tensor:
    """Sample b through ``tail`` with parameters ``params[*][b]``: x (B, C, h, w) -> (B, 3, H, W)."""
    if batching == "vmap":

        def one(p: Params, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(tail, p, (xb.unsqueeze(0),)).squeeze(0)

        return vmap(one)(params, x)
    # x[b : b + 1] keeps x's strides (a channels-last x[b][None] would not): same kernels
    # as a batch of one, so "loop" reproduces the reference bit for bit.
    return torch.cat(
        [functional_call(tail, {k: v[b] for k, v in params.items()}, (x[b : b + 1],)) for b in range(x.shape[0])]
    )


def per_sample_loss(x, x_fg, x_ok, mask, preservation: float) -> torch.Tensor:
    """The reference loss of each sample, (B,): x, x_fg, x_ok (B, 3, H, W), mask (B, 1, H, W)."""
    return torch.stack(
        [
            adaptation_loss(x[b : b + 1], x_fg[b : b + 1], x_ok[b : b + 1], mask[b : b + 1], preservation)
            for b in range(x.shape[0])
        ]
    )


# ---------------------------------------------------------------------------------------
# AdamW over stacked parameters (torch.optim.AdamW's own update function, per element)


def adamw_init(params: Params) -> dict[str, Params]:
    return {"m": {k: torch.zeros_like(v) for k, v in params.items()},
            "v": {k: torch.zeros_like(v) for k, v in params.items()}}


@torch.no_grad()
def adamw_step(params: Params, state: dict[str, Params], step: int, lr: float, wd: float,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One decoupled-weight-decay Adam update (Loshchilov & Hutter 2019), in place; step >= 1.

    torch.optim.AdamW's functional form with its default implementation choice, as the
    reference's optimizer makes it: per tensor on the CPU (bit for bit), foreach kernels on
    CUDA. Every active sample is at the same step, so the step count is not state here.
    """
    names = list(params)
    adamw(
        [params[k] for k in names], [params[k].grad for k in names],
        [state["m"][k] for k in names], [state["v"][k] for k in names], [],
        [torch.tensor(float(step - 1)) for _ in names],  # adamw counts each one up to `step`
        amsgrad=False, beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=wd, eps=eps, maximize=False,
    )
    for k in names:
        params[k].grad = None


# ---------------------------------------------------------------------------------------
# The batched loop


def check_inputs(z_star, x_fg, x_ok, mask) -> None:
    """Shapes at the boundary: z (B, 4, h, w); x_fg, x_ok (B, 3, 8h, 8w); mask (B, 1, 8h, 8w)."""
    if z_star.dim() != 4:
        raise ValueError(f"z_star of shape {tuple(z_star.shape)}: expected (B, C, h, w)")
    b, _, h, w = z_star.shape
    for name, t, c in (("x_fg", x_fg, 3), ("x_ok", x_ok, 3), ("mask", mask, 1)):
        if t.dim() != 4 or t.shape[0] != b or t.shape[1] != c or t.shape[2] % h or t.shape[3] % w:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not match z_star {tuple(z_star.shape)}:"
                f" expected ({b}, {c}, H, W) with H, W multiples of {h}, {w}"
            )
    if x_fg.shape != x_ok.shape or mask.shape[2:] != x_ok.shape[2:]:
        raise ValueError(f"x_fg {tuple(x_fg.shape)}, x_ok {tuple(x_ok.shape)}, mask {tuple(mask.shape)}: sizes differ")


def _frozen_features(vae, head: DecoderPart | None, z: torch.Tensor, batching: str) -> torch.Tensor:
    """post_quant_conv (frozen, as the reference), then ``head`` if given: (B, 4, h, w) -> (B, C, h', w').

    "loop" runs each sample alone, as the reference does, so that every kernel sees a
    batch of one and the results agree bit for bit.
    """

    def run(zb: torch.Tensor) -> torch.Tensor:
        feats = vae.post_quant_conv(zb)
        return feats if head is None else head(feats)

    if batching == "vmap":
        return run(z)
    return torch.cat([run(z[b : b + 1]) for b in range(z.shape[0])])


@dataclass
class _Active:
    """The samples still training, compacted: ``index`` maps rows to batch positions."""

    index: torch.Tensor  # (A,) int64
    params: Params  # (A, *shape) each
    state: dict[str, Params]
    head_in: torch.Tensor  # (A, C, h, w): head input (h) or, cached, head output
    targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x_fg, x_ok, mask rows

    def keep(self, rows: torch.Tensor) -> "_Active":
        """The active samples where ``rows`` (A,) bool is True, each tensor in its layout."""
        n = int(rows.sum())
        take = lambda t: torch.empty_like(t[:n]).copy_(t.detach()[rows])  # noqa: E731  (t[:n]: t's strides)
        sub = lambda d: {k: take(v) for k, v in d.items()}  # noqa: E731
        params = {k: v.requires_grad_(True) for k, v in sub(self.params).items()}
        state = {"m": sub(self.state["m"]), "v": sub(self.state["v"])}
        targets = tuple(take(t) for t in self.targets)
        return _Active(self.index[rows], params, state, take(self.head_in), targets)


def _stopped(history: list[torch.Tensor], fast: FastAdaptConfig) -> torch.Tensor:
    """(A,) bool: loss fell by less than early_stop_tol over the last `patience` steps."""
    if fast.early_stop_tol <= 0 or len(history) <= fast.patience:
        return torch.zeros_like(history[-1], dtype=torch.bool)
    return history[-1] > (1 - fast.early_stop_tol) * history[-1 - fast.patience]


@dataclass
class _Outputs:
    """Per-sample results, filled in as samples finish."""

    images: torch.Tensor  # (B, 3, H, W)
    loss_first: torch.Tensor  # (B,)
    loss_final: torch.Tensor  # (B,)
    steps: torch.Tensor  # (B,) int64

    def record(self, index: torch.Tensor, x: torch.Tensor, loss: torch.Tensor, steps: int) -> None:
        self.images[index], self.loss_final[index] = x.detach(), loss.detach()
        self.steps[index.cpu()] = steps


def adapt_batch(
    vae,
    z_star: torch.Tensor,
    x_fg: torch.Tensor,
    x_ok: torch.Tensor,
    mask: torch.Tensor,
    adapt_cfg: AdaptConfig,
    fast: FastAdaptConfig,
    latent_scale: float,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> BatchAdaptResult:
    """Adapt a copy of the decoder per sample, all B samples at once; return D_theta_b(z*_b).

    z_star: (B, 4, h, w) scaled final latents; x_fg = D(z*) and x_ok: (B, 3, H, W) in
    [-1, 1]; mask: (B, 1, H, W) float, 1 = defect. Loss and AdamW settings come from
    ``adapt_cfg`` (iters and lr unless ``fast`` overrides them). Sample b's result does
    not depend on the other samples of the batch. ``callback(step, losses)`` is called
    after each update with the losses (A,) of the A samples that took it.
    """
    check_inputs(z_star, x_fg, x_ok, mask)
    iters = adapt_cfg.iters if fast.iters is None else fast.iters
    if fast.roi and iters > 0:  # 0: off, the output is D(z*)
        return adapt_roi(vae, z_star, x_fg, x_ok, mask, adapt_cfg, fast, latent_scale, callback)
    lr = adapt_cfg.lr if fast.lr is None else fast.lr
    head, tail = split_decoder(vae.decoder, fast.trainable)
    amp = torch.autocast(z_star.device.type, torch.bfloat16, enabled=fast.precision is Precision.BF16)
    z = z_star / latent_scale
    if fast.channels_last:  # conv outputs follow their input's layout from here on
        z = z.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), amp:
        h = _frozen_features(vae, head if fast.cache_frozen else None, z, fast.batching)

    def decode(act: _Active) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (A, 3, H, W) float32 and losses (A,) of the active samples."""
        with amp:
            feats = act.head_in
            if not fast.cache_frozen:
                with torch.no_grad():
                    feats = head(feats)
            x = tail_forward(tail, act.params, feats, fast.batching).float()
        return x, per_sample_loss(x, *act.targets, adapt_cfg.preservation)

    b = z_star.shape[0]
    params = stack_params(tail, b, fast.channels_last)
    act = _Active(torch.arange(b, device=z_star.device), params, adamw_init(params), h, (x_fg, x_ok, mask))
    zeros = torch.zeros(b, device=x_ok.device)
    out = _Outputs(torch.empty_like(x_ok), zeros, zeros.clone(), torch.zeros(b, dtype=torch.long))
    history: list[torch.Tensor] = []
    for step in range(iters):
        with torch.enable_grad():
            x, loss = decode(act)
        history.append(loss.detach())
        if step == 0:
            out.loss_first[act.index] = loss.detach()
        stop = _stopped(history, fast)
        n_stop = int(stop.sum()) if fast.early_stop_tol > 0 else 0  # the step's one host sync, if any
        going = loss if n_stop == 0 else loss[~stop]
        if n_stop:
            out.record(act.index[stop], x[stop], loss[stop], step)  # that step's image
        if n_stop < len(loss):
            going.sum().backward()  # samples are independent: sum = per-sample grads
            adamw_step(act.params, act.state, step + 1, lr, adapt_cfg.weight_decay)
            if callback is not None:
                callback(step, going.detach())
        if n_stop:  # drop finished samples from the batch
            history = [past[~stop] for past in history]
            act = act.keep(~stop)
        history = history[-(fast.patience + 1):]  # all that _stopped reads
        if act.index.numel() == 0:
            break
    if act.index.numel():
        with torch.no_grad():
            x, loss = decode(act)
        out.record(act.index, x, loss, iters)
        if iters == 0:
            out.loss_first[act.index] = loss
    return BatchAdaptResult(out.images, out.loss_first, out.loss_final, out.steps)


# ---------------------------------------------------------------------------------------
# Region of interest: adapt where the defect is, take the OK image elsewhere


@dataclass(frozen=True)
class LatentBox:
    """Half-open box of latent cells [y0, y1) x [x0, x1); its pixels are ``stride`` times it."""

    y0: int
    y1: int
    x0: int
    x1: int

    def latent(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def pixels(self, stride: int = LATENT_STRIDE) -> tuple[slice, slice]:
        return slice(self.y0 * stride, self.y1 * stride), slice(self.x0 * stride, self.x1 * stride)

    def cells(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def roi_box(mask: torch.Tensor, margin: int, stride: int = LATENT_STRIDE) -> LatentBox | None:
    """The latent cells that hold a pixel of M (H, W) bool, widened by ``margin`` cells and
    clipped to the image; None when M is empty."""
    rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    h, w = mask.shape[0] // stride, mask.shape[1] // stride
    up = lambda px: -(-px // stride)  # ceil: the cell after the last pixel
    return LatentBox(
        max(int(rows[0]) // stride - margin, 0), min(up(int(rows[-1]) + 1) + margin, h),
        max(int(cols[0]) // stride - margin, 0), min(up(int(cols[-1]) + 1) + margin, w),
    )


def feather_weight(box: LatentBox, height: int, width: int, feather: int,
                   stride: int = LATENT_STRIDE) -> torch.Tensor:
    """(1, 1, h, w) weight of the adapted crop in the output: 1 inside, falling linearly to
    0 over ``feather`` px towards each crop edge that is not an image edge (0: a hard paste)."""

    def ramp(n: int, inner_lo: bool, inner_hi: bool) -> torch.Tensor:
        c = torch.arange(n, dtype=torch.float32)
        a = torch.ones(n)
        if feather > 0 and inner_lo:
            a = torch.minimum(a, (c + 0.5) / feather)
        if feather > 0 and inner_hi:
            a = torch.minimum(a, (n - c - 0.5) / feather)
        return a

    ys, xs = box.pixels(stride)
    ry = ramp(ys.stop - ys.start, ys.start > 0, ys.stop < height)
    rx = ramp(xs.stop - xs.start, xs.start > 0, xs.stop < width)
    return (ry[:, None] * rx[None, :])[None, None]


def adapt_roi(vae, z_star, x_fg, x_ok, mask, adapt_cfg: AdaptConfig, fast: FastAdaptConfig,
              latent_scale: float, callback=None) -> BatchAdaptResult:
    """:func:`adapt_batch` on each sample's region of interest (``fast.roi``), pasted into x_ok.

    The crop's loss is the reference's loss on the crop: Adam does not see the change of
    the mean's denominator, and both terms keep their ratio. The losses reported are those
    of the full image, as the reference's. An empty M gives x_ok itself (0 steps).
    """
    height, width = x_ok.shape[2:]
    images, steps = x_ok.clone(), torch.zeros(z_star.shape[0], dtype=torch.long)
    crop_fast = fast.replace(roi=False)
    for b in range(z_star.shape[0]):
        box = roi_box(mask[b, 0] > 0.5, fast.roi_margin)
        if box is None:
            continue
        ly, lx = box.latent()
        py, px = box.pixels()
        fg, ok, m = (t[b : b + 1, :, py, px] for t in (x_fg, x_ok, mask))
        r = adapt_batch(vae, z_star[b : b + 1, :, ly, lx], fg, ok, m, adapt_cfg, crop_fast, latent_scale, callback)
        w = feather_weight(box, height, width, fast.roi_feather).to(x_ok.device)
        images[b : b + 1, :, py, px] = w * r.images + (1 - w) * ok
        steps[b] = r.steps[0]
    with torch.no_grad():
        first = per_sample_loss(x_fg, x_fg, x_ok, mask, adapt_cfg.preservation)
        final = per_sample_loss(images, x_fg, x_ok, mask, adapt_cfg.preservation)
    return BatchAdaptResult(images, first, final, steps)


@dataclass(frozen=True)
class BatchedAdapter:
    """Stage 4 of all rows at once (:func:`adapt_batch`); ``fast``'s default is the reference's result."""

    vae: torch.nn.Module
    cfg: AdaptConfig
    fast: FastAdaptConfig
    latent_scale: float

    def __call__(self, z, x_fg, x_ok, mask) -> list[AdaptResult]:
        r = adapt_batch(self.vae, z, x_fg, x_ok, mask, self.cfg, self.fast, self.latent_scale)
        return [
            AdaptResult(image=r.images[b : b + 1], loss_first=float(r.loss_first[b]), loss_final=float(r.loss_final[b]))
            for b in range(z.shape[0])
        ]
