"""Online decoder adaptation: the reference loop against its shortcuts, judged by what it optimises.

    python benchmarks/bench_adaptation.py [--samples 3] [--defect crack] [--device cpu|cuda]

Inputs: the final latents z*, x_fg = D(z*), OK images and masks of the shipped demo model
(its trained decoder; the README's inputs: brick and gravel, procedural masks, 20 DDIM
steps), the same for every variant. Each variant runs in full on them.
- Quality, per sample (ALGORITHM.md stage 4: what the loss asks for):
  background = PSNR against the OK image outside M (the preservation term);
  defect = PSNR against x_fg inside M (the first term: the defect as the diffusion made it);
  seam = adabldm_core.metrics.seam_score on M's border band; and the loss itself.
- Cost per sample: seconds of the full run on the demo decoder (CPU time / threads), and
  on a random-weight SD-1.5-size decoder (256 px) one AdamW step timed at each sample's
  shape (the whole latent, or its region of interest), times the steps; GFLOP of the
  same on the SD-size decoder (FlopCounterMode on meta tensors).
A variant meets the goal when it is >= 10x cheaper than the reference's 200 steps (SD
size) with background and defect within 0.5 dB of it. Writes
benchmarks/results/adaptation_{device}.md and .json and names the chosen default.
"""
from __future__ import annotations

import os

# Threads that wait sleep instead of spinning: on a shared machine spinning OpenMP threads
# made each step up to 25x slower (and their CPU time meaningless). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from adabldm_core.metrics import masked_psnr, seam_score
from adabldm_engine.adaptation import (
    FastAdaptConfig,
    adapt_batch,
    per_sample_loss,
    roi_box,
)
from common import (
    RESULTS,
    clock,
    finish,
    header_lines,
    sd_size_vae,
    start,
    write_report,
)
from torch.utils.flop_counter import FlopCounterMode

from adabldm_ref.adaptation import adapt_decoder
from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.models import load_models
from adabldm_ref.pipeline import (
    OkImage,
    ProceduralMasks,
    plan_sample,
    prepare_ok_image,
    reference_pipeline,
    to_uint8,
)

GOAL = dict(speedup=10.0, bg_drop_db=0.5, defect_drop_db=0.5)
WHOLE = FastAdaptConfig()  # whole image, the reference's arithmetic (cache_frozen has nothing to cache)
ROI = WHOLE.replace(roi=True)
VARIANTS: dict[str, FastAdaptConfig] = {
    "whole, 20 it (README before)": WHOLE.replace(iters=20),
    "whole, 20 it, lr 1e-3": WHOLE.replace(iters=20, lr=1e-3),
    "roi m4, 200 it": ROI,
    "roi m4, 50 it, lr 4e-4": ROI.replace(iters=50, lr=4e-4),
    "roi m4, 20 it, lr 1e-3": ROI.replace(iters=20, lr=1e-3),
    "roi m4, 20 it, lr 5e-4": ROI.replace(iters=20, lr=5e-4),
    "roi m2, 20 it, lr 1e-3": ROI.replace(iters=20, lr=1e-3, roi_margin=2),
    "roi m4, 10 it, lr 2e-3": ROI.replace(iters=10, lr=2e-3),
}


@dataclass
class Row:
    name: str
    config: dict | None  # None: the reference loop (adabldm_ref.adaptation.adapt_decoder)
    steps: float = 0.0
    demo_s: float = 0.0  # measured seconds per sample, demo decoder, full run
    sd_s: float = 0.0  # seconds per sample, SD-size decoder (steps x timed step at the sample's shape)
    sd_gflop: float = 0.0
    bg_psnr: float = 0.0
    defect_psnr: float = 0.0
    seam: float = 0.0
    loss: float = 0.0
    extra: dict = field(default_factory=dict)


def make_inputs(n: int, defect: str, device: torch.device):
    """(vae, latent scale, z*, x_fg, x_ok, mask) of n demo-model samples, as the README's job makes them."""
    from skimage import data

    models = load_models("demo", None, False, defect=defect)
    oks = [OkImage(k, prepare_ok_image(getattr(data, k)(), 256)) for k in ("brick", "gravel")]
    cfg = GenerationConfig(defect=defect, sampler=SamplerConfig(steps=20), adapt=AdaptConfig(iters=0))
    pipe = reference_pipeline(models, cfg)
    plans = [plan_sample(i, cfg, oks, ProceduralMasks()) for i in range(n)]
    z, x_ok, mask = pipe.diffuse(plans)
    with torch.no_grad():
        x_fg = pipe.codec.decode(z)
    models.vae.to(device)
    return models.vae, models.latent_scale, *(t.to(device) for t in (z, x_fg, x_ok, mask)), plans


def shapes_of(fast: FastAdaptConfig | None, mask: torch.Tensor) -> list[tuple[int, int] | None]:
    """Latent (h, w) each sample adapts on: the whole latent, its region of interest, or None (empty M)."""
    h, w = mask.shape[2] // 8, mask.shape[3] // 8
    if fast is None or not fast.roi:
        return [(h, w)] * mask.shape[0]
    boxes = [roi_box(mask[b, 0] > 0.5, fast.roi_margin) for b in range(mask.shape[0])]
    return [None if bx is None else (bx.y1 - bx.y0, bx.x1 - bx.x0) for bx in boxes]


def step_cost(vae, shape: tuple[int, int], device, timed: bool) -> tuple[float, float]:
    """(seconds, FLOPs) of one AdamW step of the whole decoder at latent ``shape``."""
    meta = copy.deepcopy(vae).to("meta").requires_grad_(True)
    z = torch.zeros(1, 4, *shape, device="meta")
    x, m = torch.zeros(1, 3, 8 * shape[0], 8 * shape[1], device="meta"), torch.zeros(1, 1, 8 * shape[0], 8 * shape[1], device="meta")
    with FlopCounterMode(display=False) as fc:
        per_sample_loss(meta.decoder(meta.post_quant_conv(z)), x, x, m, 1.0).sum().backward()
    flops = fc.get_total_flops()
    if not timed:
        return 0.0, flops
    g = torch.Generator().manual_seed(0)
    zr = torch.randn(1, 4, *shape, generator=g).to(device)
    xr = torch.rand(1, 3, 8 * shape[0], 8 * shape[1], generator=g).to(device) * 2 - 1
    mr = torch.zeros(1, 1, 8 * shape[0], 8 * shape[1], device=device)
    marks: list[float] = []
    t0 = clock(device, cpu_time=True)
    adapt_batch(vae, zr, xr, xr, mr, AdaptConfig(iters=3), WHOLE.replace(iters=3), 1.0,
                lambda step, losses: marks.append(clock(device, cpu_time=True)))
    steps_s = [b - a for a, b in zip([t0, *marks[:-1]], marks)]
    return min(steps_s[1:]), flops


def run(vae, scale, z, x_fg, x_ok, mask, fast: FastAdaptConfig | None, iters: int, device):
    """(images, steps per sample, seconds per sample): the reference loop when ``fast`` is None."""
    t0 = clock(device, cpu_time=True)
    if fast is None:
        images = torch.cat([adapt_decoder(vae, z[b : b + 1], x_fg[b : b + 1], x_ok[b : b + 1], mask[b : b + 1],
                                          AdaptConfig(iters=iters), scale).image for b in range(z.shape[0])])
        steps = [float(iters)] * z.shape[0]
    else:
        r = adapt_batch(vae, z, x_fg, x_ok, mask, AdaptConfig(iters=iters), fast, scale)
        images, steps = r.images, r.steps.float().tolist()
    return images, steps, (clock(device, cpu_time=True) - t0) / z.shape[0]


def judge(row: Row, images, steps, x_fg, x_ok, mask, plans) -> None:
    bg, defect, seam = [], [], []
    for b, plan in enumerate(plans):
        img, fg, ok = (to_uint8(t[b : b + 1]) for t in (images, x_fg, x_ok))
        bg.append(masked_psnr(img, ok, ~plan.mask))
        defect.append(masked_psnr(img, fg, plan.mask))
        seam.append(seam_score(ok, img, plan.mask))
    row.bg_psnr, row.defect_psnr, row.seam = (statistics.fmean(v) for v in (bg, defect, seam))
    row.loss = per_sample_loss(images, x_fg, x_ok, mask, AdaptConfig.preservation).mean().item()
    row.steps = statistics.fmean(steps)
    row.extra.update(bg_per_sample=bg, defect_per_sample=defect, seam_per_sample=seam, steps_per_sample=steps)


def fill_sd_cost(rows: list[Row], mask, steps_of: dict[str, list[float]], device, timed: bool) -> None:
    """SD-size cost per sample: sum over samples of steps x step(shape), + 1 forward ~ 1/3 step, / n."""
    vae = sd_size_vae().to(device)
    cache: dict[tuple[int, int], tuple[float, float]] = {}
    for row in rows:
        fast = None if row.config is None else FastAdaptConfig(**row.config)
        total_s = total_f = 0.0
        for shape, steps in zip(shapes_of(fast, mask), steps_of[row.name]):
            if shape is None:
                continue
            if shape not in cache:
                cache[shape] = step_cost(vae, shape, device, timed)
                print(f"  sd step at latent {shape}: {cache[shape][0]:.2f} s, {cache[shape][1] / 1e9:.0f} GFLOP", flush=True)
            s, f = cache[shape]
            total_s, total_f = total_s + (steps + 1 / 3) * s, total_f + (steps + 1 / 3) * f
        row.sd_s, row.sd_gflop = total_s / mask.shape[0], total_f / mask.shape[0] / 1e9


def meets_goal(row: Row, ref: Row) -> bool:
    return (
        row is not ref
        and ref.sd_gflop / row.sd_gflop >= GOAL["speedup"]
        and (not ref.sd_s or ref.sd_s / row.sd_s >= GOAL["speedup"])
        and row.bg_psnr >= ref.bg_psnr - GOAL["bg_drop_db"]
        and row.defect_psnr >= ref.defect_psnr - GOAL["defect_drop_db"]
    )


def choose_default(rows: list[Row]) -> tuple[Row | None, str]:
    good = [r for r in rows if meets_goal(r, rows[0])]
    if good:
        return min(good, key=lambda r: r.sd_gflop), "cheapest variant meeting the goal"
    return None, "no variant meets the goal"


def table(rows: list[Row]) -> str:
    ref = rows[0]
    lines = [
        "| variant | steps | demo s/sample | demo x | SD s/sample | SD x | SD GFLOP | SD FLOP x | bg PSNR dB | bg - ref"
        " | defect PSNR dB | defect - ref | seam | loss | goal |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        sd_x = f"{ref.sd_s / r.sd_s:.1f}" if r.sd_s else "-"
        lines.append(
            f"| {r.name} | {r.steps:.0f} | {r.demo_s:.2f} | {ref.demo_s / r.demo_s:.1f} | {r.sd_s:.1f} | {sd_x}"
            f" | {r.sd_gflop:.0f} | {ref.sd_gflop / r.sd_gflop:.1f} | {r.bg_psnr:.2f} | {r.bg_psnr - ref.bg_psnr:+.2f}"
            f" | {r.defect_psnr:.2f} | {r.defect_psnr - ref.defect_psnr:+.2f} | {r.seam:.2f} | {r.loss:.5f}"
            f" | {'yes' if meets_goal(r, ref) else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--defect", default="crack", help="demo ControlNet that makes the inputs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=AdaptConfig.iters, help="reference AdamW steps")
    p.add_argument("--no-sd-timing", action="store_true", help="SD-size cost as FLOPs only (no timed steps)")
    p.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    device = torch.device(args.device)
    meta = start(__file__, device=device)
    vae, scale, z, x_fg, x_ok, mask, plans = make_inputs(args.samples, args.defect, device)
    print(f"inputs: {[pl.mask_source for pl in plans]}, mask area {[round(float(m.mean()), 4) for m in mask]}", flush=True)
    variants = {k: v for k, v in VARIANTS.items() if args.only is None or k in args.only}
    rows, steps_of = [], {}
    for name, fast in [(f"reference loop (adabldm_ref), {args.iters} it", None), *variants.items()]:
        row = Row(name, None if fast is None else dataclasses.asdict(fast))
        images, steps, row.demo_s = run(vae, scale, z, x_fg, x_ok, mask, fast, args.iters, device)
        judge(row, images, steps, x_fg, x_ok, mask, plans)
        steps_of[name] = steps
        print(f"  {name:34s} {row.demo_s:7.2f} s/sample  bg {row.bg_psnr:5.2f}  defect {row.defect_psnr:5.2f}"
              f"  seam {row.seam:5.2f}  loss {row.loss:.5f}", flush=True)
        rows.append(row)
    fill_sd_cost(rows, mask, steps_of, device, timed=not args.no_sd_timing)
    chosen, why = choose_default(rows)
    record = finish(meta) | dict(
        settings=vars(args) | {"out": str(args.out)}, masks=[pl.mask_source for pl in plans],
        mask_area=[float(m.mean()) for m in mask], goal=GOAL, rows=[dataclasses.asdict(r) for r in rows],
        chosen=chosen.name if chosen else None, chosen_config=chosen.config if chosen else None, why=why,
        goal_met=[r.name for r in rows if meets_goal(r, rows[0])],
    )
    write(args.out / f"adaptation_{device.type}", record, rows)


def write(stem: Path, record: dict, rows: list[Row]) -> None:
    m = record["machine"]
    areas = ", ".join(f"{a:.1%}" for a in record["mask_area"])
    lines = [
        f"# Online decoder adaptation: the reference loop against its shortcuts ({m['device']})",
        "",
        *header_lines(record),
        "",
        f"{len(record['masks'])} samples of the demo model ({record['settings']['defect']} ControlNet,"
        f" {', '.join(record['masks'])}; M covers {areas} of the image), its trained decoder; the reference adapts"
        f" {record['settings']['iters']} whole-decoder AdamW steps per sample (lr 1e-4).",
        "",
        "Quality per sample, mean over samples: bg PSNR = against the OK image outside M; defect PSNR ="
        " against x_fg = D(z*) inside M; seam = RMS gradient of the change on M's border band (lower is"
        " smoother); loss = the adaptation loss of the output image. Cost: demo s = measured CPU time /"
        " threads of the full run (the shared machine's noise included); SD s = a random-weight SD-1.5-size"
        " decoder's AdamW step timed once at each sample's latent shape (whole 32x32, or its region of"
        " interest) x (steps + 1/3 for the final forward); SD GFLOP = the same in convolution and matmul FLOPs."
        " 'x' = reference / variant. Goal: >= 10x cheaper (SD size) with background and defect within 0.5 dB"
        " of the reference.",
        "",
        table(rows),
        "",
        f"Chosen: **{record['chosen'] or 'none'}** ({record['why']}); config `{record['chosen_config']}`.",
        f"Rows meeting the goal: {', '.join(record['goal_met']) or 'none'}.",
    ]
    write_report(stem, record, lines)


if __name__ == "__main__":
    main()
