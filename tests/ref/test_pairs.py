"""The training-pair builder (adabldm_ref.pairs) obeys ALGORITHM.md's recipe."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adabldm_ref.fewshot import ShotFile, load_shot
from adabldm_ref.pairs import (
    Augment,
    Background,
    Shot,
    crop_shot,
    host_table,
    make_pair,
    make_pairs,
    transform_shot,
)

R = 64


def texture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (R, R, 3), dtype=np.uint8)


def disk(radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:R, :R]
    return (yy - R / 2 + 0.5) ** 2 + (xx - R / 2 + 0.5) ** 2 <= radius**2


def blob_shot(name: str = "000", seed: int = 1) -> Shot:
    mask = np.zeros((R, R), bool)
    mask[10:30, 30:46] = True  # 20 x 16 block with a tail
    mask[30:34, 36:40] = True
    return Shot(name, texture(seed), mask)


@pytest.fixture
def scene():
    backgrounds = [Background("disk", texture(10), disk(26)), Background("full", texture(11), np.ones((R, R), bool))]
    shots = [blob_shot("000", 1), blob_shot("001", 2)]
    return shots, backgrounds, host_table(shots, backgrounds)


def test_trimap_levels_foreground_and_composite(scene):
    shots, backgrounds, hosts = scene
    by_name = {b.name: b for b in backgrounds}
    for pair in make_pairs(7, 3, 24, shots, backgrounds, hosts, Augment()):
        bg = by_name[pair.background]
        assert set(np.unique(pair.trimap)) <= {0, 127, 255}
        assert np.array_equal(pair.trimap == 255, pair.mask)  # defect level exactly on M
        assert np.array_equal(pair.trimap == 0, ~bg.foreground)  # background level exactly outside F
        assert pair.mask.any() and not (pair.mask & ~bg.foreground).any()  # every defect pixel inside F
        assert np.array_equal(pair.target[~pair.mask], bg.rgb[~pair.mask])  # OK pixels outside M
        assert not np.array_equal(pair.target[pair.mask], bg.rgb[pair.mask])  # the defect's own pixels inside


def test_rotation_and_scale_within_range_and_area_follows_scale(scene):
    shots, backgrounds, hosts = scene
    aug = Augment(rotate=360.0, scale=(0.85, 1.15))
    pairs = make_pairs(0, 1, 40, shots, backgrounds, hosts, aug)
    angles, scales = np.array([p.angle for p in pairs]), np.array([p.scale for p in pairs])
    assert ((0 <= angles) & (angles <= 360)).all() and angles.std() > 50  # spread over the circle
    assert ((0.85 <= scales) & (scales <= 1.15)).all() and scales.max() - scales.min() > 0.15
    area = shots[0].mask.sum()  # both shots have the same mask
    for p in pairs:
        assert p.tries <= aug.max_tries  # a random transform fitted (no fallback needed here)
        # Rotation keeps the area and scaling squares it, less the rim that bilinear
        # interpolation pushes under 200 (re-binarising at 200 erodes a fraction of a pixel).
        assert 0.75 < p.mask.sum() / (area * p.scale**2) < 1.05


def test_untransformed_pair_is_the_inclusive_crop_pasted_as_is():
    mask = np.zeros((R, R), bool)
    mask[5, 7] = mask[17, 20] = True  # bounding box corners: 13 x 14 inclusive
    shot = Shot("corners", texture(3), mask)
    rgb, cropped = crop_shot(shot.rgb, shot.mask)
    assert cropped.shape == (13, 14) and cropped[0, 0] and cropped[-1, -1]  # last row and column kept
    bg = Background("full", texture(4), np.ones((R, R), bool))
    pair = make_pair(0, 1, 0, [shot], [bg], [[0]], Augment(rotate=0.0, scale=(1.0, 1.0)))
    rows, cols = np.flatnonzero(pair.mask.any(1)), np.flatnonzero(pair.mask.any(0))
    assert (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == (13, 14)
    assert pair.mask.sum() == 2 and (pair.top, pair.left) == (rows[0], cols[0])
    np.testing.assert_array_equal(pair.target[pair.mask], shot.rgb[shot.mask])  # the real defect's pixels


def test_masks_are_binarised_at_200(tmp_path):
    gray = np.zeros((R, R), np.uint8)
    gray[10:26, 10:30] = 255
    gray[26:28, 10:30] = 200  # kept (>= 200)
    gray[28:30, 10:30] = 199  # dropped
    gray[30:40, 10:30] = 150  # dropped (soft edge)
    Image.fromarray(texture(5)).save(tmp_path / "000.png")
    Image.fromarray(gray).save(tmp_path / "000_mask.png")
    shot = load_shot(ShotFile("000", tmp_path / "000.png", tmp_path / "000_mask.png"), R, 200)
    np.testing.assert_array_equal(shot.mask, gray >= 200)
    # After rotation and scaling the interpolated mask is binarised again at 200: a pair's
    # M is boolean and its area stays that of the >= 200 pixels, not of the soft edge.
    bg = Background("full", texture(6), np.ones((R, R), bool))
    for p in make_pairs(1, 1, 10, [shot], [bg], [[0]], Augment()):
        assert 0.75 < p.mask.sum() / (360 * p.scale**2) < 1.05  # 360 px >= 200; with the soft rim 560


def test_pair_depends_on_seed_step_and_index_alone(scene):
    shots, backgrounds, hosts = scene
    aug = Augment()
    a = make_pair(3, 10, 2, shots, backgrounds, hosts, aug)
    batch = make_pairs(3, 10, 4, shots, backgrounds, hosts, aug)
    tail = make_pairs(3, 10, 2, shots, backgrounds, hosts, aug, first=2)
    for other in (batch[2], tail[0]):  # whatever the batch layout
        assert np.array_equal(a.target, other.target) and np.array_equal(a.trimap, other.trimap)
    other_step = make_pair(3, 11, 2, shots, backgrounds, hosts, aug)
    other_seed = make_pair(4, 10, 2, shots, backgrounds, hosts, aug)
    assert not np.array_equal(a.target, other_step.target) and not np.array_equal(a.target, other_seed.target)


def test_fallback_places_the_untransformed_defect_when_no_random_transform_fits():
    mask = np.zeros((R, R), bool)
    mask[20:30, 10:50] = True  # a 10 x 40 bar: no rotation of it fits in a 10 x 40 foreground
    shot = Shot("bar", texture(7), mask)
    fg = np.zeros((R, R), bool)
    fg[40:50, 5:45] = True
    bg = Background("slot", texture(8), fg)
    aug = Augment(rotate=360.0, scale=(1.0, 1.15), max_tries=5)
    assert host_table([shot], [bg]) == [[0]]
    pair = make_pair(0, 1, 0, [shot], [bg], [[0]], aug)
    assert (pair.angle, pair.scale, pair.tries) == (0.0, 1.0, 6)  # the defect as it is, after 5 tries
    assert pair.mask.sum() == 400 and not (pair.mask & ~fg).any()


def test_a_defect_larger_than_every_foreground_has_no_host():
    shot = blob_shot()
    small = Background("small", texture(9), disk(3))
    assert host_table([shot], [small]) == [[]]


def test_thin_defect_survives_rotation():
    mask = np.eye(R, dtype=bool)[8:40, 8:40]  # one-pixel diagonal line
    full = np.zeros((R, R), bool)
    full[8:40, 8:40] = mask
    shot = Shot("line", texture(12), full)
    bg = Background("full", texture(13), np.ones((R, R), bool))
    for p in make_pairs(0, 1, 10, [shot], [bg], [[0]], Augment(scale=(0.85, 0.9))):
        assert p.mask.any()


def test_transform_keeps_image_and_mask_aligned():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :10] = 200  # left half bright, the mask covers the whole crop
    img, m = transform_shot(rgb, np.ones((10, 20), bool), 90.0, 1.0, 200)
    assert m.shape == (20, 10) and m.all()  # rotated by 90 degrees: transposed canvas, nothing clipped
    assert img.shape == (20, 10, 3) and img[:, :, 0].min() in (0, 200)
    assert sorted(np.unique(img[:, :, 0]).tolist()) == [0, 200]  # no black from outside the crop bled in
