"""Every GPU backend against the fp32 PyTorch reference, side by side, in one process.

A random-weight SD-1.5-size model at 256 px (UNet+ControlNet, VAE; speed ignores the
weights). Variants found on the machine: reference fp32 eager (PyTorch defaults), PyTorch
fp16 eager, fp16 with the denoising step in one CUDA graph, fp16 torch.compile'd + CUDA
graph, ONNX Runtime CUDA (onnxruntime-gpu), TensorRT fp16 + CUDA graph (tensorrt). Each
is checked against the strict-fp32 reference (per network, and the final image of a
whole sample), then timed, interleaved, median of repeats:
  step    one denoising step (UNet+ControlNet at 2B rows, CFG, DDIM, latent blend), B = 1, 8
  sample  a whole 50-step blended sample (B = 1, pixel stage included, no adaptation)
  bulk    samples/s of a bulk run with adaptation (reference: batch 1, reference
          adaptation; others: batch 8, engine/adaptation.py's batched adaptation)
It prints a table, speed-ups over the reference, and the achieved TFLOP/s of the step
against the FLOP floor (FLOPs counted on the meta device / the measured fp16 matmul
peak). Sections stop being started when the time budget (default 540 s) runs out.

    python benchmarks/bench_gpu.py              # GPU machine; writes results/gpu.{md,json}
    python benchmarks/bench_gpu.py --dry-run    # CPU: tiny model, same code paths, no files
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from adabldm_core import metrics
from adabldm_engine.backends import activated
from common import (
    RESULTS,
    clock,
    finish,
    header_lines,
    interleaved,
    start,
    timed,
    write_report,
)

# FLOP floor of the issue, TFLOP per latent row per step at 32 x 32 latents (CFG: 2 rows).
FLOOR_TFLOP = {"unet": 0.20, "controlnet": 0.08}
GOALS = {"step_speedup": 10.0, "floor_fraction": 0.40, "bulk_speedup": 20.0}
FP16_TOL = 1e-2  # rel. L2 per network (export/validate.py TOLERANCES["fp16"])
REFERENCE = "reference fp32 eager"


@dataclass(frozen=True)
class BenchConfig:
    model: str = "sd15"  # "sd15": random-weight SD-1.5 size; "tiny": the built-in test model
    resolution: int = 256
    batches: tuple[int, ...] = (1, 8)  # samples per step (CFG runs 2x rows)
    steps: int = 50
    bulk_batch: int = 8  # samples per diffusion batch of the fast bulk runs
    reference_bulk: int = 2  # samples of the reference bulk run (batch 1, ~5 s each)
    adapt_iters: int = 200  # reference adaptation steps (the fast adaptation: at most its 50)
    reps: int = 10  # step timings
    sample_reps: int = 3
    budget_s: float = 540.0  # stop starting sections after this (one device call: 600 s)
    device: str = "cuda"
    compile: bool = True
    onnx: bool = True  # ONNX Runtime CUDA / TensorRT variants, when importable (export + builds: minutes)
    results: Path | None = RESULTS


DRY_RUN = BenchConfig(model="tiny", resolution=64, batches=(1, 2), steps=4, bulk_batch=2, reference_bulk=1,
                      adapt_iters=2, reps=2, sample_reps=1, budget_s=300.0, device="cpu", compile=False, results=None)


# ---------------------------------------------------------------------------------------
# Arithmetic, table, budget (pure: tested in CI)


def step_flops(per_row: Mapping[str, float], batch: int) -> float:
    """FLOPs of one CFG step at ``batch`` samples: 2B rows of UNet + ControlNet."""
    return 2 * batch * (per_row["unet"] + per_row["controlnet"])


def tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12 if seconds > 0 else float("nan")


def floor_fraction(flops: float, seconds: float, peak_tflops: float) -> float:
    """Time at the device's peak over measured time (1.0 = at the FLOP floor)."""
    return tflops(flops, seconds) / peak_tflops if peak_tflops > 0 else float("nan")


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2): adabldm_core.metrics.psnr."""
    return metrics.psnr(a, b, peak)


def add_ratios(rows: list[dict], reference: str = REFERENCE) -> list[dict]:
    """Speed-up (per sample) of each row over the reference row of the same section and
    batch; bulk rows compare samples/s whatever the batch (the reference runs batch 1)."""
    key = lambda r: (r["section"],) if r["section"] == "bulk" else (r["section"], r["batch"])  # noqa: E731
    ref = {key(r): r for r in rows if r["variant"] == reference and r.get("seconds")}
    for r in rows:
        base = ref.get(key(r))
        if base is not None and r.get("seconds"):
            per_sample = lambda x: x["seconds"] / x.get("samples", 1)  # noqa: E731
            r["speedup"] = per_sample(base) / per_sample(r)
    return rows


def _cell(value, fmt: str) -> str:
    return "" if value is None or value == "" else format(value, fmt)


def format_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table: one line per (section, variant, batch)."""
    lines = ["| section | variant | batch | seconds | samples/s | speed-up | TFLOP/s | of floor | parity | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = r["samples"] / r["seconds"] if r.get("seconds") and r.get("samples") else None
        lines.append(
            f"| {r['section']} | {r['variant']} | {r.get('batch', '')} | {_cell(r.get('seconds'), '.4f')}"
            f" | {_cell(rate, '.2f')} | {_cell(r.get('speedup'), '.1f')}{'x' if r.get('speedup') else ''}"
            f" | {_cell(r.get('tflops'), '.3g')} | {_cell(r.get('floor'), '.0%')} | {r.get('parity', '')}"
            f" | {r.get('note', '')} |"
        )
    return lines


def goal_checks(rows: Sequence[dict]) -> list[str]:
    """One line per goal of the issue: the best variant's value against the target."""
    def best(section, key):
        vals = [r[key] for r in rows if r["section"] == section and r["variant"] != REFERENCE and r.get(key)]
        return max(vals) if vals else None

    checks = [("UNet+ControlNet step speed-up over fp32 eager", best("step", "speedup"), GOALS["step_speedup"], "x"),
              ("step share of the FLOP floor", best("step", "floor"), GOALS["floor_fraction"], "%"),
              ("bulk samples/s speed-up (with adaptation)", best("bulk", "speedup"), GOALS["bulk_speedup"], "x")]
    out = []
    for what, value, target, unit in checks:
        fmt = (lambda v: f"{v:.0%}") if unit == "%" else (lambda v: f"{v:.1f}x")
        got = "not measured" if value is None else fmt(value)
        verdict = "" if value is None else ("met" if value >= target else "MISSED")
        out.append(f"- {what}: {got} (goal >= {fmt(target)}) {verdict}".rstrip())
    return out


class Budget:
    """Wall-clock budget: sections ask before starting."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.clock, self.start, self.seconds = clock, clock(), seconds

    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def allows(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


# ---------------------------------------------------------------------------------------
# FLOPs and peak


def flops_per_row(unet_config, controlnet_config, context_dim: int, resolution: int) -> dict[str, float]:
    """UNet and ControlNet FLOPs of one latent row (CFG: 2 rows per sample), counted on
    the meta device: no weights, no compute, any model size."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from adabldm_ref.networks import ControlNetNet, UNetNet

    h = resolution // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        cn = ControlNetModel.from_config(controlnet_config)
        z, t = torch.randn(1, 4, h, h), torch.tensor(500.0)
        ctx, hint, scale = torch.randn(1, 77, context_dim), torch.rand(1, 3, resolution, resolution), torch.tensor(1.0)
        with torch.no_grad(), FlopCounterMode(display=False) as count_cn:
            residuals = ControlNetNet(cn)(z, t, ctx, hint, scale)
        with torch.no_grad(), FlopCounterMode(display=False) as count_unet:
            UNetNet(unet)(z, t, ctx, *residuals)
    return {"unet": float(count_unet.get_total_flops()), "controlnet": float(count_cn.get_total_flops())}


def peak_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Dense fp16 matmul rate on ``device`` (bf16 on the CPU): the FLOP ceiling."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    t = timed(lambda: a @ b, device, reps)
    return tflops(2 * n**3, t)


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for convolutions and matmuls: the parity reference is true fp32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# ---------------------------------------------------------------------------------------
# Variants


@dataclass
class Variant:
    name: str
    engines: dict | None = None  # network -> Backend (None: the reference modules)
    graphs: bool = False
    skip: str = ""  # why the variant does not run here
    note: str = ""  # e.g. a VAE that fell back to fp32


def cuda_variants(models, res: int, device: torch.device, cfg: BenchConfig) -> list[Variant]:
    """PyTorch GPU variants: fp16 eager, fp16 + CUDA graph, compiled + CUDA graph."""
    from adabldm_engine.cuda_backend import (
        TorchCudaBackend,
        TorchCudaConfig,
        torch_cuda_engines,
    )

    from adabldm_ref.networks import network_modules, network_specs

    fp16 = activated(torch_cuda_engines(models, res, TorchCudaConfig(dtype="fp16"), device))
    variants = [Variant("PyTorch fp16 eager", fp16)]
    if device.type != "cuda":
        why = "needs CUDA"
        return variants + [Variant("PyTorch fp16 + CUDA graph", skip=why), Variant("PyTorch fp16 compiled + CUDA graph", skip=why)]
    variants.append(Variant("PyTorch fp16 + CUDA graph", fp16, graphs=True))
    if not cfg.compile:
        return variants + [Variant("PyTorch fp16 compiled + CUDA graph", skip="--no-compile")]
    spec = network_specs(models, res)["unet_control"]
    compiled = TorchCudaBackend(spec, network_modules(models)["unet_control"](), TorchCudaConfig(compile=True), device).activate()
    return variants + [Variant("PyTorch fp16 compiled + CUDA graph", {**fp16, "unet_control": compiled}, graphs=True)]


EXPORTED = ("vae_encoder", "vae_decoder", "unet_control")
# Seconds that must be left to start the ONNX export / TensorRT builds: the PyTorch
# variants' compile and every measurement still need about this much afterwards.
ONNX_RESERVE_S = 420.0


def export_graphs(models, res: int, tmp: Path) -> dict[str, Path]:
    """fp32 ONNX graphs of the exported networks, traced from CPU copies of the modules."""
    import copy

    from adabldm_export.onnx_export import export_onnx

    from adabldm_ref.networks import network_modules, network_specs

    specs, modules = network_specs(models, res), network_modules(models)
    return {n: export_onnx(specs[n], copy.deepcopy(modules[n]()).cpu(), tmp / f"{n}.onnx", batch=1) for n in EXPORTED}


def ort_variant(models, res, device, graphs: dict[str, Path], base: dict) -> Variant:
    """ONNX Runtime's CUDA execution provider over the exported fp32 graphs."""
    from adabldm_engine.backends import OrtBackend

    from adabldm_ref.networks import network_specs

    specs = network_specs(models, res)
    engines = {**base, **{n: OrtBackend(specs[n], graphs[n], str(device)).activate() for n in EXPORTED}}
    return Variant("ONNX Runtime CUDA (fp32 graphs)", engines)


def trt_variant(models, res, device, graphs: dict[str, Path], base: dict, batches: Sequence[int], tmp: Path) -> Variant:
    """TensorRT fp16 engines (one dynamic profile per network, opt = largest batch)."""
    from adabldm_core.precision import choose_precision, fp16_onnx
    from adabldm_engine.trt_backend import EngineFile, TrtBackend
    from adabldm_engine.trt_cache import TrtBuildConfig, engine_profiles
    from adabldm_export.trt_build import build_engine, check_plan

    from adabldm_ref.networks import network_specs

    specs, cfg = network_specs(models, res), TrtBuildConfig(dynamic=True, opt_level=2)
    engines, notes = dict(base), []
    for name in EXPORTED:
        (profile,) = engine_profiles(specs[name], batches, dynamic=True)
        plan = build_engine(fp16_onnx(graphs[name], tmp / "fp16" / f"{name}.onnx"), profile, cfg, tmp / "timing.cache")
        decision = choose_precision(name, "fp16", check_plan(plan, specs[name], profile, str(device)))
        if decision.precision == "fp32":
            notes.append(decision.reason)
            plan = build_engine(graphs[name], profile, cfg, tmp / "timing.cache")
        path = tmp / f"{name}.plan"
        path.write_bytes(plan)
        engines[name] = TrtBackend(specs[name], [EngineFile(path, profile)], device)
    return Variant("TensorRT fp16 + CUDA graph", engines, graphs=True, note="; ".join(notes))


def onnx_variants(models, res, device, cfg: BenchConfig, base: dict, budget: Budget, tmp: Path) -> list[Variant]:
    """ORT CUDA and TensorRT, each when importable (the fp32 ONNX export is shared)."""
    import importlib.util

    want_ort = device.type == "cuda" and _ort_cuda()
    want_trt = device.type == "cuda" and importlib.util.find_spec("tensorrt") is not None
    ort = Variant("ONNX Runtime CUDA (fp32 graphs)", skip="needs onnxruntime-gpu (CUDAExecutionProvider)")
    trt = Variant("TensorRT fp16 + CUDA graph", skip="needs the tensorrt package and CUDA")
    if not cfg.onnx:
        return [dataclasses.replace(v, skip="--no-onnx") for v in (ort, trt)]
    if not (want_ort or want_trt):
        return [ort, trt]
    if not budget.allows(ONNX_RESERVE_S):
        return [dataclasses.replace(v, skip="time budget") for v in (ort, trt)]
    graphs, err = attempt(lambda: export_graphs(models, res, tmp))
    if err:
        return [dataclasses.replace(v, skip=f"ONNX export failed: {err}") for v in (ort, trt)]
    if want_ort:
        built, err = attempt(lambda: ort_variant(models, res, device, graphs, base))
        ort = built or Variant(ort.name, skip=f"failed: {err}")
    if want_trt and budget.allows(ONNX_RESERVE_S - 60):
        built, err = attempt(lambda: trt_variant(models, res, device, graphs, base, cfg.batches, tmp))
        trt = built or Variant(trt.name, skip=f"build failed: {err}")
    elif want_trt:
        trt = Variant(trt.name, skip="time budget (engine builds)")
    return [ort, trt]


def _ort_cuda() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def attempt(fn: Callable) -> tuple[object, str]:
    """(fn(), "") or (None, the error as text): a variant that fails is reported, not fatal."""
    try:
        return fn(), ""
    except Exception as exc:  # noqa: BLE001 - any failure of an optional runtime is a table note
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def robust_times(fns: Mapping[str, Callable], device: torch.device, reps: int, warmup: int = 1):
    """interleaved() over the callables whose first (warm-up) call succeeds; the errors of
    the others by name."""
    ok, errors = {}, {}
    for k, fn in fns.items():
        _, err = attempt(fn)
        if err:
            errors[k] = err
        else:
            ok[k] = fn
    return interleaved(ok, device, reps, max(0, warmup - 1)) if ok else {}, errors


# ---------------------------------------------------------------------------------------
# Measurements


@dataclass
class Context:
    """What every measurement shares: model, device, conditioning, plans, references."""

    cfg: BenchConfig
    models: object
    device: torch.device
    flops: dict[str, float]
    peak: float
    reference: dict  # TorchBackend per network (fp32 modules on the device)
    oks: list = field(default_factory=list)
    parity_refs: dict = field(default_factory=dict)  # network -> (seeded feed, strict-fp32 output), made once


def parity_reference(ctx: Context, name: str) -> tuple[dict, torch.Tensor]:
    """The seeded batch-1 feed of ``name`` and the strict-fp32 reference output on it (cached)."""
    from adabldm_core.specs import random_inputs

    if name not in ctx.parity_refs:
        spec = ctx.reference[name].spec
        feed = {k: x.to(ctx.device) for k, x in random_inputs(spec, 1, torch.Generator().manual_seed(7)).items()}
        with strict_fp32():
            ctx.parity_refs[name] = feed, ctx.reference[name].infer(feed)[spec.output_names[0]].clone()
    return ctx.parity_refs[name]


def parity_rows(ctx: Context, v: Variant) -> dict[str, float]:
    """rel. L2 per network of the variant against strict fp32, batch 1, seeded inputs."""
    from adabldm_export.validate import agreement

    errors = {}
    for name in EXPORTED:
        feed, want = parity_reference(ctx, name)
        got = v.engines[name].infer(feed)[ctx.reference[name].spec.output_names[0]]
        errors[name] = agreement(got.float(), want).rel_l2
    return errors


def _contexts(ctx: Context, b: int):
    d = ctx.models.text_encoder.config.hidden_size
    g = torch.Generator().manual_seed(b)
    emb = torch.randn(2, 77, d, generator=g).to(ctx.device)
    text = torch.cat([emb[1:].expand(b, -1, -1), emb[:1].expand(b, -1, -1)])
    return text.contiguous(), emb[1:].expand(2 * b, -1, -1).contiguous()


def step_runner(ctx: Context, v: Variant, b: int):
    """A StepRunner of the variant at batch b (graph captured where the variant says)."""
    from adabldm_engine.graphed import StepRunner
    from adabldm_engine.runtime import EngineCFG

    from adabldm_ref.models import make_scheduler
    from adabldm_ref.sampler import ddim_schedule

    g = torch.Generator().manual_seed(100 + b)
    text, control = _contexts(ctx, b)
    hint = torch.rand(b, 3, ctx.cfg.resolution, ctx.cfg.resolution, generator=g).to(ctx.device)
    engine = ctx.reference["unet_control"] if v.engines is None else v.engines["unet_control"]
    eps = EngineCFG(engine, text, control, hint, 9.0, 1.0)
    table = ddim_schedule(make_scheduler(), ctx.cfg.steps, ctx.device)
    return StepRunner(eps, table, graph=v.graphs)


def step_rows(ctx: Context, variants: Sequence[Variant], b: int) -> list[dict]:
    """One denoising step (CFG network call and DDIM update) per variant at batch b."""
    h = ctx.cfg.resolution // 8
    g = torch.Generator().manual_seed(b)
    z = torch.randn(b, 4, h, h, generator=g).to(ctx.device)
    fns, notes = {}, {}
    for v in variants:
        runner, err = attempt(lambda v=v: step_runner(ctx, v, b))
        if err:
            notes[v.name] = err
            continue
        fns[v.name] = lambda r=runner: r(min(30, ctx.cfg.steps - 1), z)
    times, errors = robust_times(fns, ctx.device, ctx.cfg.reps, warmup=2)
    notes.update(errors)
    flops = step_flops(ctx.flops, b)
    rows = []
    for v in variants:
        t = times.get(v.name)
        rows.append({"section": "step", "variant": v.name, "batch": b, "seconds": t, "samples": b,
                     "tflops": tflops(flops, t) if t else None, "floor": floor_fraction(flops, t, ctx.peak) if t else None,
                     "note": notes.get(v.name, v.note)})
    return rows


def sample_plans(ctx: Context, n: int, start: int = 0):
    from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
    from adabldm_ref.pipeline import ProceduralMasks, plan_sample

    gen = GenerationConfig(resolution=ctx.cfg.resolution, sampler=SamplerConfig(steps=ctx.cfg.steps),
                           adapt=AdaptConfig(iters=ctx.cfg.adapt_iters))
    return gen, [plan_sample(i, gen, ctx.oks, ProceduralMasks(("blob", "scratch"))) for i in range(start, start + n)]


def pipeline(ctx: Context, v: Variant, gen):
    """The reference AdaBLDM (v.engines None) or the graphed engine pipeline of v, whose
    stage 4 is engine/adaptation.py's batched adaptation (bf16, channels-last on CUDA)."""
    from adabldm_engine.adaptation import FastAdaptConfig
    from adabldm_engine.runtime import engine_pipeline

    from adabldm_ref.pipeline import reference_pipeline

    m = ctx.models
    if v.engines is None:
        return reference_pipeline(m, gen, ctx.device)
    cuda = ctx.device.type == "cuda"  # bf16 tensor cores want NHWC convolutions
    fast = FastAdaptConfig(precision="bf16" if cuda else "fp32", channels_last=cuda)
    return engine_pipeline(v.engines, m.tokenizer, m.vae, m.latent_scale, gen, device=ctx.device, graphs=v.graphs,
                           fast_adapt=fast, static_step=True)


def sample_rows(ctx: Context, variants: Sequence[Variant]) -> list[dict]:
    """A whole blended sample (batch 1) per variant; final image PSNR vs the reference."""
    gen, plans = sample_plans(ctx, 1)
    pipes, errors = {}, {}
    for v in variants:
        pipe, err = attempt(lambda v=v: pipeline(ctx, v, gen))
        pipes.update({v.name: pipe} if pipe is not None else {})
        errors.update({v.name: err} if err else {})
    fns = {k: (lambda p=p: p.diffuse(plans)[0]) for k, p in pipes.items()}
    times, failed = robust_times(fns, ctx.device, ctx.cfg.sample_reps)
    errors.update(failed)
    decode = pipes[REFERENCE].codec.decode
    with torch.no_grad():
        images = {k: decode(fns[k]()) for k in times}
    return [{"section": "sample", "variant": v.name, "batch": 1, "seconds": times.get(v.name), "samples": 1,
             "parity": f"PSNR {psnr(images[v.name], images[REFERENCE]):.1f} dB" if v.name in times and v.name != REFERENCE else "",
             "note": errors.get(v.name, "")}
            for v in variants]


def bulk_once(ctx: Context, pipe, plans) -> float:
    """Seconds for diffusion + adaptation of ``plans`` (one batch; the pipeline's own stage 4)."""
    t0 = clock(ctx.device)
    pipe.run(plans)
    return clock(ctx.device) - t0


def bulk_rows(ctx: Context, variants: Sequence[Variant], budget: Budget) -> list[dict]:
    """samples/s with adaptation: the reference at batch 1, the others at bulk_batch."""
    rows = []
    for v in variants:
        fast = v.engines is not None
        n = ctx.cfg.bulk_batch if fast else ctx.cfg.reference_bulk
        if not budget.allows(30 if fast else 20 * n):
            rows.append({"section": "bulk", "variant": v.name, "batch": "", "note": "time budget"})
            continue
        gen, plans = sample_plans(ctx, n, start=10)
        pipe, err = attempt(lambda: pipeline(ctx, v, gen))
        if fast and not err:  # warm-up: graph capture, autotuning (the reference needs none)
            _, err = attempt(lambda: bulk_once(ctx, pipe, plans))
        batches = [plans] if fast else [[p] for p in plans]
        t, err = (None, err) if err else attempt(lambda: sum(bulk_once(ctx, pipe, b) for b in batches))
        rows.append({"section": "bulk", "variant": v.name, "batch": n if fast else 1, "seconds": t, "samples": n,
                     "note": err or ("batched adaptation" if fast else "reference adaptation")})
    return rows


# ---------------------------------------------------------------------------------------
# Driver


def build_models(cfg: BenchConfig, device: torch.device):
    from adabldm_ref.models import build_random_sd15, build_tiny

    models = build_random_sd15() if cfg.model == "sd15" else build_tiny()
    for m in models.modules().values():
        m.to(device)
    return models


def ok_images(res: int):
    from skimage import data

    from adabldm_ref.pipeline import OkImage, prepare_ok_image

    return [OkImage("brick", prepare_ok_image(data.brick(), res)), OkImage("gravel", prepare_ok_image(data.gravel(), res))]


def meta(cfg: BenchConfig, ctx: Context | None, began: dict) -> dict:
    """The run's record: common.start's (``began``: date, machine, versions, command), the
    end of the run (common.finish), settings, FLOP count and peak."""
    return finish(began) | {
            "gpu": began["machine"].get("gpu", "none (CPU)"),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
            "flops_per_row_tflop": {k: v / 1e12 for k, v in ctx.flops.items()} if ctx else {},
            "floor_tflop_of_issue": FLOOR_TFLOP, "peak_tflops_fp16_matmul": ctx.peak if ctx else None,
            "reference_flags": "PyTorch defaults (cuDNN TF32 on, matmul TF32 off); parity against TF32-off fp32"}


def run(cfg: BenchConfig, argv: Sequence[str] = (), log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """The whole benchmark; returns (rows, meta)."""
    from adabldm_engine.runtime import torch_engines

    budget, device = Budget(cfg.budget_s), torch.device(cfg.device)
    began = start(__file__, argv, device)
    log(f"building the {cfg.model} model on {device} ...")
    models = build_models(cfg, device)
    flops = flops_per_row(models.unet.config, models.controlnet.config, models.text_encoder.config.hidden_size,
                          cfg.resolution)
    ctx = Context(cfg, models, device, flops,
                  peak_tflops(device, 8192 if device.type == "cuda" else 256), activated(torch_engines(models, cfg.resolution)),
                  ok_images(cfg.resolution))
    log("FLOPs per row: " + ", ".join(f"{k} {v / 1e12:.3g} TFLOP" for k, v in ctx.flops.items())
        + f"; fp16 matmul peak {ctx.peak:.0f} TFLOP/s")
    variants = [Variant(REFERENCE)] + cuda_variants(models, cfg.resolution, device, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        base = variants[1].engines
        variants += onnx_variants(models, cfg.resolution, device, cfg, base, budget, Path(tmp))
        rows = measure(ctx, variants, budget, log)
    return add_ratios(rows), meta(cfg, ctx, began)


def measure(ctx: Context, variants: list[Variant], budget: Budget, log) -> list[dict]:
    live = [v for v in variants if not v.skip]
    rows = [{"section": "all", "variant": v.name, "batch": "", "note": f"skipped: {v.skip}"} for v in variants if v.skip]
    for v in live[1:]:
        errors, err = attempt(lambda v=v: parity_rows(ctx, v))
        ok = not err and all(e <= FP16_TOL for e in errors.values())
        text = err or ", ".join(f"{k} {e:.1e}" for k, e in errors.items())
        rows.append({"section": "parity", "variant": v.name, "batch": 1, "parity": ("ok " if ok else "FAIL ") + text})
        log(f"parity {v.name}: {text}")
    for b in ctx.cfg.batches:
        if budget.allows(60):
            log(f"step timings, batch {b} ...")
            rows += step_rows(ctx, live, b)
    if budget.allows(90):
        log("whole samples ...")
        rows += sample_rows(ctx, live)
    log("bulk runs with adaptation ...")
    rows += bulk_rows(ctx, live, budget)
    return rows


def write(rows: list[dict], info: dict, folder: Path) -> list[str]:
    st = info["settings"]
    model = "random-weight SD-1.5 size" if st["model"] == "sd15" else f"{st['model']} model (dry run)"
    lines = [f"# GPU backends against the fp32 PyTorch reference ({model}, {st['resolution']} px, {st['device']})", "",
             *header_lines(info),
             "- FLOPs per latent row (meta-device count): "
             + ", ".join(f"{k} {v:.3f} TFLOP" for k, v in info["flops_per_row_tflop"].items())
             + f"; the issue's floor: UNet {FLOOR_TFLOP['unet']}, ControlNet {FLOOR_TFLOP['controlnet']}",
             f"- FLOP floor rate: measured fp16 matmul peak {info['peak_tflops_fp16_matmul']:.0f} TFLOP/s",
             f"- reference: {info['reference_flags']}", "",
             *format_table(rows), "", "Goals:", *goal_checks(rows)]
    return write_report(Path(folder) / "gpu", {"meta": info, "rows": rows}, lines)


def parse(argv: Sequence[str]) -> BenchConfig:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few steps; writes nothing")
    ap.add_argument("--out", type=Path, help="results folder [default: benchmarks/results]")
    ap.add_argument("--budget", type=float, help="seconds after which no new section starts [540]")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime CUDA and TensorRT (export and builds)")
    args = ap.parse_args(argv)
    cfg = DRY_RUN if args.dry_run else BenchConfig()
    changes = {k: v for k, v in {"budget_s": args.budget, "results": args.out}.items() if v is not None}
    if args.no_compile:
        changes["compile"] = False
    if args.no_onnx:
        changes["onnx"] = False
    return dataclasses.replace(cfg, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(argv)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU (use --dry-run for the CPU check)", file=sys.stderr)
        return 1
    rows, info = run(cfg, argv, log=lambda s: print(s, flush=True))
    if cfg.results:
        write(rows, info, cfg.results)  # prints the report
    else:
        print("\n".join([*format_table(rows), "", *goal_checks(rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
