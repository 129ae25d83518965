"""Detection metrics of anomaly maps against ground-truth masks (ALGORITHM.md, "Evaluation").

Inputs everywhere: ``maps`` (N, H, W) float anomaly scores (higher: more anomalous) and
``masks`` (N, H, W) bool ground truth, one pair per test image (defect-free images have an
empty mask). Pixel metrics pool every pixel of every image; image metrics score an image
by the maximum of its map and label it anomalous when its mask has a pixel.

AUROC and AP are scikit-learn's (``roc_auc_score``, ``average_precision_score``); F1-max
is the best F1 over the thresholds of ``precision_recall_curve``. IAP / IAP90 follow
DeSTSeg's ``IAPS`` (Zhang et al., CVPR 2023, apple/ml-destseg ``model/metrics.py``).
"""
from __future__ import annotations

from bisect import bisect_left

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # DeSTSeg labels with OpenCV's default, 8-connectivity
METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "image_auroc", "image_ap", "image_f1_max", "iap", "iap90")


def _check(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"anomaly maps {maps.shape} and masks {masks.shape}: expected two arrays of one shape (N, H, W)")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps hold non-finite values")
    return maps, masks


def _both_classes(labels: np.ndarray, what: str) -> None:
    if labels.all() or not labels.any():
        kind = "anomalous" if labels.all() else "normal"
        raise ValueError(f"{what}: every one is {kind}; AUROC and AP need both normal and anomalous")


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """The largest F1 = 2PR / (P + R) over the thresholds of scikit-learn's PR curve."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def binary_metrics(labels: np.ndarray, scores: np.ndarray, what: str) -> dict[str, float]:
    """AUROC, AP and F1-max of ``scores`` (K,) against bool ``labels`` (K,)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels, scores = np.asarray(labels).astype(bool).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    _both_classes(labels, what)
    return {"auroc": float(roc_auc_score(labels, scores)), "ap": float(average_precision_score(labels, scores)),
            "f1_max": f1_max(labels, scores)}


def image_scores(maps: np.ndarray) -> np.ndarray:
    """(N,) image score: the maximum of each map."""
    return np.asarray(maps, dtype=np.float64).reshape(len(maps), -1).max(axis=1)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    maps, masks = _check(maps, masks)
    return binary_metrics(masks, maps, "pixels")


def image_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    maps, masks = _check(maps, masks)
    return binary_metrics(masks.reshape(len(masks), -1).any(axis=1), image_scores(maps), "test images")


def instances(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, H, W) int labels of the ground truth's 8-connected components, numbered across
    images (a defect never spans two images), and their count."""
    labels = np.zeros(masks.shape, dtype=np.int64)
    count = 0
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        labels[i] = np.where(lab > 0, lab + count, 0)
        count += n
    return labels, count


def instance_scores(maps: np.ndarray, labels: np.ndarray, count: int, ioi: float = 0.5) -> np.ndarray:
    """(count,) per instance: its pixels' scores sorted high to low, the one at position
    floor(ioi * n) -- at least a fraction ``ioi`` of the instance scores that much."""
    flat_maps, flat_labels = maps.ravel(), labels.ravel()
    order = np.argsort(flat_labels, kind="stable")
    bounds = np.searchsorted(flat_labels[order], np.arange(1, count + 2))
    out = np.empty(count)
    for k in range(count):
        scores = np.sort(flat_maps[order[bounds[k]:bounds[k + 1]]])[::-1]
        out[k] = scores[int(ioi * len(scores))]
    return out


def instance_ap(maps: np.ndarray, masks: np.ndarray, ioi: float = 0.5, recall_at: float = 0.9) -> tuple[float, float]:
    """(IAP, IAP@recall_at) of DeSTSeg: each ground-truth instance scored by
    :func:`instance_scores`; at each instance score s (ascending, position i of n) as the
    threshold, recall = 1 - i / n and precision = (defect pixels with score >= s) / (pixels
    with score >= s); precision made monotone (each one the largest at its threshold or
    any lower one); IAP = mean precision; IAP90 = precision at the smallest recall >= 0.9.

    DeSTSeg counts a true pixel as ``score * target >= s``, which for s <= 0 also counts
    every background pixel; here true pixels are ``target and score >= s`` (the same for
    positive scores, such as sigmoid outputs).
    """
    maps, masks = _check(maps, masks)
    labels, count = instances(masks)
    if count == 0:
        raise ValueError("instance AP: the ground-truth masks hold no defect")
    thresholds = np.sort(instance_scores(maps, labels, count, ioi))
    flat, truth = maps.ravel(), masks.ravel()
    # pixels at or above each threshold, all and defect ones, by one sort instead of a pass per threshold
    all_sorted, true_sorted = np.sort(flat), np.sort(flat[truth])
    above = len(all_sorted) - np.searchsorted(all_sorted, thresholds, side="left")
    true_above = len(true_sorted) - np.searchsorted(true_sorted, thresholds, side="left")
    precision = np.maximum.accumulate(true_above / above)
    recall = 1.0 - np.arange(count) / count
    iap = float(precision.mean())
    recall_up, precision_up = recall[::-1].tolist(), precision[::-1]
    k = min(bisect_left(recall_up, recall_at), count - 1)
    return iap, float(precision_up[k])


def detection_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """The eight figures of :data:`METRICS` for one test set."""
    pixel, image = pixel_metrics(maps, masks), image_metrics(maps, masks)
    iap, iap90 = instance_ap(maps, masks)
    return {**{f"pixel_{k}": v for k, v in pixel.items()}, **{f"image_{k}": v for k, v in image.items()},
            "iap": iap, "iap90": iap90}


def pr_curve(maps: np.ndarray, masks: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level (recall, precision) of scikit-learn's curve, thinned to about ``points``
    points for a plot (recall decreasing)."""
    from sklearn.metrics import precision_recall_curve

    maps, masks = _check(maps, masks)
    precision, recall, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    keep = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).round().astype(int))
    return recall[keep], precision[keep]
