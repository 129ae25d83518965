"""Detection metrics against small cases computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
from adabldm_eval.metrics import (
    detection_metrics,
    f1_max,
    image_metrics,
    instance_ap,
    instance_scores,
    instances,
    pixel_metrics,
)


def test_pixel_auroc_ap_f1_on_four_pixels():
    # scores 0.1, 0.4 (normal), 0.35, 0.8 (defect): of the 4 (defect, normal) pairs 3 are
    # ordered right -> AUROC 0.75; AP = 0.5 * 1 (at 0.8) + 0.5 * 2/3 (at 0.35) = 5/6;
    # F1 at 0.35: P 2/3, R 1 -> 0.8 (at 0.8: P 1, R 1/2 -> 2/3).
    maps = np.array([[[0.1, 0.4], [0.35, 0.8]]])
    masks = np.array([[[False, False], [True, True]]])
    m = pixel_metrics(maps, masks)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["ap"] == pytest.approx(5 / 6)
    assert m["f1_max"] == pytest.approx(0.8)


def test_image_metrics_score_an_image_by_its_maximum():
    # image maxima 0.9 (defect), 0.3 (defect), 0.5 (OK), 0.1 (OK): pairs right 3 of 4.
    maps = np.zeros((4, 2, 2))
    maps[0, 0, 0], maps[1, 1, 1], maps[2, 0, 1], maps[3, 1, 0] = 0.9, 0.3, 0.5, 0.1
    masks = np.zeros((4, 2, 2), dtype=bool)
    masks[0, 1, 1] = masks[1, 0, 0] = True  # where the mask lies does not matter for image scores
    m = image_metrics(maps, masks)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["f1_max"] == pytest.approx(0.8)  # threshold 0.3: P 2/3, R 1


def test_f1_max_of_a_perfect_ranking_is_one():
    assert f1_max(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9])) == pytest.approx(1.0)


def test_instances_are_8_connected_and_numbered_across_images():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one instance
    masks[0, 4, 4] = True
    masks[1, 0, 0] = True  # same place, other image: another instance
    labels, count = instances(masks)
    assert count == 3
    assert labels[0, 0, 0] == labels[0, 1, 1] != labels[0, 4, 4]
    assert labels[1, 0, 0] not in (labels[0, 0, 0], labels[0, 4, 4])


def test_instance_score_is_the_half_quantile_from_the_top():
    maps = np.array([[[0.9, 0.7, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.6, 0.2]]])
    masks = np.zeros_like(maps, dtype=bool)
    masks[0, 0, :2] = True  # scores 0.9, 0.7 -> sorted high to low, position int(0.5 * 2) = 1: 0.7
    masks[0, 2, 2:] = True  # 0.6, 0.2 -> 0.2
    labels, count = instances(masks)
    assert sorted(instance_scores(maps, labels, count)) == pytest.approx([0.2, 0.7])


def test_iap_and_iap90_by_hand():
    # Instances A (0.9, 0.7 -> 0.7) and B (0.6, 0.2 -> 0.2); background 0.65, 0.3, rest 0.
    # Threshold 0.2 (recall 1): 6 pixels >= 0.2, 4 defect -> 2/3; threshold 0.7 (recall
    # 1/2): 0.9, 0.7 -> 1. IAP = (2/3 + 1) / 2; IAP90 = precision at recall 1 = 2/3.
    maps = np.zeros((1, 4, 6))
    masks = np.zeros((1, 4, 6), dtype=bool)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 3, 4], maps[0, 3, 5] = 0.9, 0.7, 0.6, 0.2
    masks[0, 0, :2] = masks[0, 3, 4:] = True
    maps[0, 2, 0], maps[0, 1, 3] = 0.65, 0.3
    iap, iap90 = instance_ap(maps, masks)
    assert iap == pytest.approx(5 / 6)
    assert iap90 == pytest.approx(2 / 3)


def test_iap_precision_is_made_monotone():
    # One-pixel instances scored 0.9, 0.5, 0.3 and one background pixel at 0.95 (others 0).
    # Raw precision at 0.3, 0.5, 0.9: 3/4, 2/3, 1/2; monotone (max over lower thresholds):
    # 3/4 each. IAP = 0.75 (0.639 without the running maximum); IAP90 (recall 1) = 0.75.
    maps = np.zeros((1, 3, 3))
    masks = np.zeros((1, 3, 3), dtype=bool)
    for (y, x), s in zip([(0, 0), (0, 2), (2, 0)], [0.9, 0.5, 0.3]):
        maps[0, y, x], masks[0, y, x] = s, True
    maps[0, 2, 2] = 0.95
    iap, iap90 = instance_ap(maps, masks)
    assert iap == pytest.approx(0.75)
    assert iap90 == pytest.approx(0.75)


def _iap_by_the_description(maps, masks):
    """ALGORITHM.md's words, one threshold at a time (slow, for the comparison)."""
    labels, count = instances(masks)
    scores = []
    for k in range(1, count + 1):
        s = np.sort(maps[labels == k])[::-1]
        scores.append(s[int(0.5 * len(s))])
    scores.sort()
    precision = [np.sum(masks & (maps >= s)) / np.sum(maps >= s) for s in scores]
    precision = np.maximum.accumulate(precision)
    recall = [1 - i / count for i in range(count)]
    at90 = min((r, p) for r, p in zip(recall, precision) if r >= 0.9)[1]
    return float(np.mean(precision)), float(at90)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iap_equals_the_literal_description_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 24, 24)) > 0.93
    maps = np.clip(rng.random((3, 24, 24)) * 0.6 + masks * rng.random((3, 24, 24)) * 0.5, 0, 1)
    assert instance_ap(maps, masks) == pytest.approx(_iap_by_the_description(maps, masks))


def test_detection_metrics_names_all_eight_and_a_perfect_map_scores_one():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 2:4, 2:5] = masks[1, 5:7, 1:2] = True
    m = detection_metrics(masks.astype(float) * 0.8 + 0.1, masks)
    assert set(m) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "image_auroc", "image_ap", "image_f1_max", "iap", "iap90"}
    assert all(v == pytest.approx(1.0) for v in m.values())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="one shape"):
        pixel_metrics(np.zeros((1, 2, 2)), np.zeros((1, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="every one is normal"):
        pixel_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="every one is anomalous"):
        image_metrics(np.zeros((2, 2, 2)), np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="no defect"):
        instance_ap(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool))
