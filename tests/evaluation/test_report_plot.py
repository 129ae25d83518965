"""The Pillow PR plot (used where matplotlib is not installed) names both axes."""
from __future__ import annotations

import numpy as np
from adabldm_eval.report import plot_pil


def test_the_pillow_pr_plot_names_its_y_axis():
    image = plot_pil({"real": (np.linspace(1, 0, 5), np.linspace(0, 1, 5))}, "pixel PR")
    margin = image[:, :16]  # left of the tick values: where the axis name goes
    dark_rows = np.flatnonzero((margin < 128).any(axis=(1, 2)))
    assert len(dark_rows) > 30  # an upright word, not a stray pixel
    assert 28 < dark_rows.min() and dark_rows.max() < image.shape[0] - 36  # beside the plot area
