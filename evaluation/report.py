"""Writing the reports: JSON, a markdown table, a PR-curve plot (each atomically).

The plot uses matplotlib when it is installed and otherwise draws with Pillow.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from adabldm_core.io import write_bytes, write_json, write_text
from PIL import Image, ImageDraw

from .metrics import METRICS

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
LABELS = {"pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1_max": "pixel F1-max",
          "image_auroc": "image AUROC", "image_ap": "image AP", "image_f1_max": "image F1-max",
          "iap": "IAP", "iap90": "IAP90"}


def markdown_table(report: dict) -> str:
    """One row per arm: mean ± std over seeds of each metric, in percent."""
    seeds = report["config"]["seeds"]
    head = "| arm | training defects | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for arm, r in report["arms"].items():
        cells = [f"{100 * r['summary'][m]['mean']:.1f} ± {100 * r['summary'][m]['std']:.1f}" for m in METRICS]
        lines.append(f"| {arm} | {r['training_defects']} | " + " | ".join(cells) + " |")
    cfg, seg = report["config"], report["config"]["segmenter"]
    return "\n".join([
        f"# Downstream segmentation: defect `{cfg['defect']}`", "",
        (f"Real category `{cfg['real']}`, synthetic set `{cfg['synthetic']}` ({report['synthetic_samples']} samples),"
         f" split: {report['split']['rule']} ({len(report['split']['train'])} train, {report['test']['defects']} held"
         f" out); test set: {report['test']['defects']} held-out defects + {report['test']['ok']} OK images."),
        (f"U-Net width {seg['width']}, {seg['size']} px, {seg['steps']} steps of batch {seg['batch']}, lr {seg['lr']},"
         f" {seeds} seed(s), device {seg['device']}; {report['seconds']} s."), "",
        "Percent, mean ± std over seeds.", "", *lines, ""])


def _plot_matplotlib(curves: dict, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for name, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=name)
    ax.set(xlabel="recall (pixels)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="upper right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_pil(curves: dict, title: str, width: int = 500, height: int = 400) -> np.ndarray:
    """(H, W, 3) uint8: precision against recall per arm, drawn with Pillow."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 48, width - 16, 28, height - 36
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    for v in (0.0, 0.5, 1.0):
        draw.text((left - 28, bottom - v * (bottom - top) - 6), f"{v:.1f}", fill=(0, 0, 0))
        draw.text((left + v * (right - left) - 8, bottom + 6), f"{v:.1f}", fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 40, bottom + 20), "recall (pixels)", fill=(0, 0, 0))
    # The y axis is named as in the matplotlib plot (it had only its tick values): text
    # drawn on a strip, turned upright along the left margin.
    strip = Image.new("RGB", (100, 12), (255, 255, 255))
    ImageDraw.Draw(strip).text((0, 0), "precision", fill=(0, 0, 0))
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (2, (top + bottom) // 2 - 50))
    for k, (name, (recall, precision)) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = [(left + r * (right - left), bottom - p * (bottom - top)) for r, p in zip(recall, precision)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((right - 130, top + 8 + 14 * k), name, fill=colour)
    return np.asarray(image)


def plot_png(curves: dict, title: str) -> bytes:
    try:
        return _plot_matplotlib(curves, title)
    except ImportError:
        buf = io.BytesIO()
        Image.fromarray(plot_pil(curves, title)).save(buf, format="PNG")
        return buf.getvalue()


def write_report(out: Path, report: dict, curves: dict) -> None:
    out = Path(out)
    write_json(out / "downstream.json", report)
    write_text(out / "downstream.md", markdown_table(report))
    write_bytes(out / "pr_curves.png", plot_png(curves, f"pixel PR, seed 0, defect {report['config']['defect']}"))
