"""``adabldm-eval samples``: the per-sample figures of a synthetic set, their distribution,
the worst samples, and set figures (diversity; IC-LPIPS and KID over user networks).

Per sample: ``adabldm_core.metrics.sample_quality`` (bg_psnr, bg_ssim, defect_strength,
seam, leakage), read from the manifest's "quality" when it holds all five, else computed
from the sample's image, mask and source.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from adabldm_core.contact import contact_sheet
from adabldm_core.io import InputError, write_json, write_png, write_text
from adabldm_core.metrics import sample_quality

from .data import load_pairs
from .features import crops_of, diversity, ic_lpips, kid, load_user_net, random_features
from .synthetic import SyntheticSample, manifests_of, read_synthetic

FIGURES = ("bg_psnr", "bg_ssim", "defect_strength", "seam", "leakage")
HIGHER_IS_BETTER = {"bg_psnr": True, "bg_ssim": True, "defect_strength": True, "seam": False, "leakage": False}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class SamplesConfig:
    out: Path  # the adabldm-run --out folder to judge
    report: Path  # where samples.json, samples.md and worst.png go
    defect: str | None = None  # only this defect type
    worst: int = 8  # rows of the worst-samples sheet
    worst_by: str = "rank"  # a figure, or "rank": the mean of each figure's rank (worst first)
    real: Path | None = None  # real MVTec category: IC-LPIPS / KID compare against its defects
    lpips_weights: Path | None = None
    inception_weights: Path | None = None
    ic_lpips: bool = False
    kid: bool = False

    def __post_init__(self) -> None:
        if self.worst_by not in ("rank", *FIGURES):
            raise ValueError(f"--worst-by {self.worst_by!r}: expected rank or one of {', '.join(FIGURES)}")
        if self.worst < 0:
            raise ValueError(f"--worst {self.worst}: expected >= 0")
        if (self.ic_lpips or self.kid) and self.real is None:
            raise InputError("--ic-lpips and --kid compare against real defects: give --real CATEGORY_DIR")
        if self.ic_lpips and self.lpips_weights is None:
            raise InputError("IC-LPIPS needs --lpips-weights FILE: a local TorchScript LPIPS network (nothing is downloaded)")
        if self.kid and self.inception_weights is None:
            raise InputError("KID needs --inception-weights FILE: a local TorchScript Inception feature network"
                             " (nothing is downloaded)")


def figures_of(sample: SyntheticSample, image: np.ndarray, mask: np.ndarray,
               paired_by_name: bool = False) -> tuple[dict, str]:
    """(the five figures, where they came from: "manifest", "computed" or "unavailable").

    ``paired_by_name``: the set has no manifest (test/<defect> and ground_truth/<defect>
    paired by name, no source images), so the figures cannot exist; they are NaN and the set
    figures (diversity) still count the sample. With a manifest, a missing source is an error."""
    q = sample.quality or {}
    if all(k in q for k in FIGURES):
        return {k: (float("nan") if q[k] is None else float(q[k])) for k in FIGURES}, "manifest"
    if sample.source is None and paired_by_name:
        return dict.fromkeys(FIGURES, float("nan")), "unavailable"
    if sample.source is None:
        raise InputError(f"sample {sample.defect}/{sample.index:04d}: its manifest line has no quality figures and"
                         " its source image (extra/<defect>/NNNN_source.png) is missing")
    from .data import rgb_at

    source = rgb_at(sample.source, image.shape[0])
    return sample_quality(source, image, mask).as_dict(), "computed"


def distribution(values: list[float]) -> dict:
    v = np.array([x for x in values if math.isfinite(x)])
    if not len(v):
        return {"n": 0}
    return {"n": len(v), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), **{f"q{int(q * 100):02d}": float(np.quantile(v, q)) for q in QUANTILES}}


def badness(rows: list[dict], by: str) -> np.ndarray:
    """Per row, larger = worse: the figure itself (signed), or the mean rank over figures."""
    def worse(k):
        v = np.array([r[k] for r in rows], dtype=np.float64)
        v = np.where(np.isfinite(v), v, np.nan)
        return -v if HIGHER_IS_BETTER[k] else v

    if by != "rank":
        return np.nan_to_num(worse(by), nan=np.inf)
    ranks = [np.argsort(np.argsort(np.nan_to_num(worse(k), nan=np.inf))) for k in FIGURES]
    return np.mean(ranks, axis=0)


def markdown(report: dict) -> str:
    lines = [f"# Synthetic set `{report['out']}`", "",
             (f"{report['samples']} samples ({', '.join(f'{d}: {n}' for d, n in report['defects'].items())});"
              f" figures from the manifest for {report['from_manifest']}, computed for {report['computed']}"
              + (f", unavailable for {report['unavailable']} (no manifest*.jsonl: images and masks paired by name,"
                 " without the source images the figures need)" if report.get("unavailable") else "") + "."), "",
             "| figure | n | mean | std | min | 5% | 25% | median | 75% | 95% | max |", "|---" * 11 + "|"]
    for k in FIGURES:
        d = report["distribution"][k]
        if d["n"]:
            cells = [d[c] for c in ("mean", "std", "min", "q05", "q25", "q50", "q75", "q95", "max")]
            lines.append(f"| {k} | {d['n']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
        else:
            lines.append(f"| {k} | 0 |" + " - |" * 9)
    lines += ["", "Set figures:", ""]
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in report["set"].items()]
    if report["worst"]:
        lines += ["", f"Worst {len(report['worst'])} by {report['worst_by']} (worst.png): "
                  + ", ".join(w["sample"] for w in report["worst"]), ""]
    else:
        lines += ["", "Worst samples: none listed (no sample has figures, or --worst 0).", ""]
    return "\n".join(lines)


def run_samples(cfg: SamplesConfig, progress: bool = True) -> dict:
    from tqdm import tqdm

    samples = read_synthetic(cfg.out, cfg.defect)
    paired_by_name = not manifests_of(cfg.out)
    rows, images, masks, sources = [], [], [], []
    counts = {"manifest": 0, "computed": 0, "unavailable": 0}
    for s in tqdm(samples, desc="samples", unit="sample", disable=not progress):
        pair = load_pairs([("", s.image, s.mask)], _size_of(s))
        image, mask = pair.images[0], pair.masks[0]
        figs, where = figures_of(s, image, mask, paired_by_name)
        counts[where] += 1
        rows.append({"sample": f"{s.defect}/{s.index:04d}", "defect": s.defect, "index": s.index, **figs})
        images.append(image)
        masks.append(mask)
        sources.append(s.source)
    crops = crops_of(images, masks)
    set_figures = {"diversity_defect_crops": diversity(random_features(crops)),
                   "diversity_whole_images": diversity(random_features(_resized(images, 64)))}
    set_figures.update(_user_figures(cfg, samples, crops, images))
    # A sample without any figure has no place in a worst-first order (it would be listed by index).
    known = [i for i, r in enumerate(rows) if any(math.isfinite(r[k]) for k in FIGURES)]
    order = [known[j] for j in np.argsort(-badness([rows[i] for i in known], cfg.worst_by), kind="stable")][: cfg.worst]
    worst = [rows[i] for i in order]
    report = {"format_version": 1, "out": str(cfg.out), "config": {k: (str(v) if isinstance(v, Path) else v)
                                                                  for k, v in asdict(cfg).items()},
              "samples": len(rows), "defects": {d: sum(r["defect"] == d for r in rows) for d in sorted({r["defect"] for r in rows})},
              "from_manifest": counts["manifest"], "computed": counts["computed"], "unavailable": counts["unavailable"],
              "distribution": {k: distribution([r[k] for r in rows]) for k in FIGURES},
              "set": set_figures, "worst_by": cfg.worst_by, "worst": worst, "per_sample": rows}
    write_json(cfg.report / "samples.json", report)
    write_text(cfg.report / "samples.md", markdown(report))
    if len(order):
        write_png(cfg.report / "worst.png", _worst_sheet(order, rows, images, masks, sources))
    else:  # an earlier run's sheet would contradict this report
        (cfg.report / "worst.png").unlink(missing_ok=True)
    return report


def _size_of(s: SyntheticSample) -> int:
    from adabldm_core.io import read_image

    return read_image(s.image).shape[0]


def _resized(images, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in images])


def _worst_sheet(order, rows, images, masks, sources) -> np.ndarray:
    from .data import rgb_at

    sheet_rows, names = [], []
    for i in order:
        size = images[i].shape[0]
        source = rgb_at(sources[i], size) if sources[i] else np.zeros_like(images[i])
        diff = np.abs(images[i].astype(np.int16) - source.astype(np.int16)).max(axis=2).clip(0, 255).astype(np.uint8)
        sheet_rows.append([source, images[i], masks[i].astype(np.uint8) * 255, diff])
        names.append(f"{rows[i]['index']:04d}")
    return contact_sheet(sheet_rows, ("source", "image", "mask", "|change|"), names)


def _user_figures(cfg: SamplesConfig, samples, crops, images) -> dict:
    if not (cfg.ic_lpips or cfg.kid):
        return {}
    defects = sorted({s.defect for s in samples})
    real_pairs = None
    for d in defects:
        folder = cfg.real / "test" / d
        if not folder.is_dir():
            raise InputError(f"--real {cfg.real}: no test/{d} to compare the synthetic {d} samples with")
        from adabldm_ref.fewshot import default_shots, pair_files

        files = pair_files(folder, cfg.real / "ground_truth" / d)
        files = files[: default_shots(len(files))]  # the few-shot training third: what the generator saw
        pairs = load_pairs([(f.name, f.image, f.mask) for f in files], images[0].shape[0])
        real_pairs = pairs if real_pairs is None else real_pairs + pairs
    out = {}
    if cfg.ic_lpips:
        net = load_user_net(cfg.lpips_weights, "--lpips-weights", "IC-LPIPS")
        out["ic_lpips"] = ic_lpips(net, crops, crops_of(real_pairs.images, real_pairs.masks))
    if cfg.kid:
        net = load_user_net(cfg.inception_weights, "--inception-weights", "KID")
        out["kid"] = kid(net, np.stack(images), real_pairs.images)
    return out

