"""The field's downstream protocol (ALGORITHM.md, "Evaluation"): does a synthetic set make a
better defect segmenter?

Three arms train the same U-Net (segmenter.py) with the same seeds and steps:

- ``real``: the real training shots of the few-shot split (the first third, or the split
  adabldm-train recorded) with the OK training images;
- ``real+adabldm``: plus the synthetic set's pairs of that defect type;
- ``real+baseline``: plus the classic baseline (baseline.py) through the same masks onto the
  same OK sources.

Each is tested on the held-out real defects plus the real OK test images (test/good):
pixel and image AUROC / AP / F1-max, IAP and IAP90 (metrics.py), mean and spread over seeds.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .baseline import baseline_pairs
from .data import Pairs, check_no_leak, load_real, load_synthetic, rgb_at
from .metrics import METRICS, detection_metrics, pr_curve
from .segmenter import SegmenterConfig
from .synthetic import read_synthetic

log = logging.getLogger(__name__)
ARMS = ("real", "real+adabldm", "real+baseline")


@dataclass(frozen=True)
class DownstreamConfig:
    real: Path  # the real MVTec-layout category folder
    synthetic: Path  # an adabldm-run --out folder
    defect: str
    out: Path  # where the report goes (downstream.json, downstream.md, pr_curves.png)
    split: Path | None = None  # an adabldm-train run directory whose split decides what is held out
    seeds: int = 3  # seeds 0..seeds-1, the same for every arm
    limit: int | None = None  # use only the first N synthetic samples
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds}: expected at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit {self.limit}: expected at least 1")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ArmData:
    defects: Pairs  # what the arm trains on besides the OK images
    ok: Pairs


def build_arms(cfg: DownstreamConfig):
    """(arms, test set, split, synthetic samples); raises if a held-out defect would train."""
    size = cfg.segmenter.size
    real = load_real(cfg.real, cfg.defect, size, cfg.split)
    samples = read_synthetic(cfg.synthetic, cfg.defect)[: cfg.limit]
    synthetic = load_synthetic(samples, size)
    ok_names = list(real.train_ok.names)
    sources = np.stack([rgb_at(s.source, size) if s.source else real.train_ok.images[s.index % len(ok_names)]
                        for s in samples])
    baseline = baseline_pairs(sources, synthetic.masks, real.train_ok.images, seed=0)
    arms = {"real": ArmData(real.train_defects, real.train_ok),
            "real+adabldm": ArmData(real.train_defects + synthetic, real.train_ok),
            "real+baseline": ArmData(real.train_defects + baseline, real.train_ok)}
    held_masks = [cfg.real / "ground_truth" / cfg.defect / p.name
                  for p in (cfg.real / "ground_truth" / cfg.defect).iterdir()
                  if p.stem.removesuffix("_mask") in set(real.split.held_out)]
    for arm in arms.values():
        check_no_leak(arm.defects + arm.ok, real.test, real.split, samples, held_masks)
    return arms, real.test, real.split, samples


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """metric -> {mean, std (population), min, max} over seeds."""
    return {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)), "max": float(np.max(v))}
            for m in METRICS for v in [[r[m] for r in per_seed]]}


def run_downstream(cfg: DownstreamConfig, progress: bool = True) -> dict:
    """Train and test every arm for every seed; returns the report (also written to cfg.out)."""
    import torch
    from tqdm import tqdm

    from .report import write_report
    from .segmenter import anomaly_maps, train_segmenter

    t0 = time.perf_counter()
    arms, test, split, samples = build_arms(cfg)
    seg = cfg.segmenter
    bar = tqdm(total=len(arms) * cfg.seeds * seg.steps, desc="downstream", unit="step", disable=not progress)
    results, curves = {}, {}
    for name, arm in arms.items():
        per_seed = []
        for seed in range(cfg.seeds):
            bar.set_postfix_str(f"{name} seed {seed}")
            model = train_segmenter(arm.defects, arm.ok, seg, seed, bar)
            maps = anomaly_maps(model, test.images, seg.device)
            per_seed.append(detection_metrics(maps, test.masks))
            if seed == 0:
                curves[name] = pr_curve(maps, test.masks)
        results[name] = {"training_defects": len(arm.defects), "training_ok": len(arm.ok),
                         "per_seed": per_seed, "summary": summarise(per_seed)}
    bar.close()
    report = {
        "format_version": 1, "config": cfg.to_dict(), "split": split.to_dict(),
        "test": {"defects": len(split.held_out), "ok": len(test) - len(split.held_out)},
        "synthetic_samples": len(samples), "arms": results, "seconds": round(time.perf_counter() - t0, 1),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(),
    }
    write_report(cfg.out, report, curves)
    return report
