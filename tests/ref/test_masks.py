from __future__ import annotations

import numpy as np
import pytest

from adabldm_ref.config import MaskConfig
from adabldm_ref.masks import (
    PlacementError,
    SizedToForeground,
    component_sides,
    crop_to_content,
    foreground_mask,
    latent_keep_mask,
    make_trimap,
    nearest_downsample,
    place_defect,
    transform_defect,
    valid_offsets,
)


def disk(size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_trimap_has_three_levels_and_defect_wins():
    fg = disk(64, 32, 32, 20)
    defect = np.zeros_like(fg)
    defect[30:34, 30:40] = True
    t = make_trimap(fg, defect)
    assert t.dtype == np.uint8
    assert set(np.unique(t)) == {0, 127, 255}
    assert (t[defect] == 255).all() and (t[fg & ~defect] == 127).all() and (t[~fg] == 0).all()


@pytest.mark.parametrize("seed", range(8))
def test_placement_is_inside_the_foreground(seed):
    rng = np.random.default_rng(seed)
    fg = disk(128, 64, 64, 50) | disk(128, 20, 100, 12)
    source = np.zeros((128, 128), np.uint8)
    source[10:30, 5:17] = 255
    source[12, 5:40] = 230  # thin tail, still >= 200
    cfg = MaskConfig(rotate=360.0, scale=(0.85, 1.15))
    mask, placement = place_defect(source, fg, cfg, rng)
    assert mask.any() and not (mask & ~fg).any()
    assert mask.shape == fg.shape
    box = mask[placement.top : placement.top + placement.height, placement.left : placement.left + placement.width]
    assert box.sum() == mask.sum()  # the defect lies in the recorded box
    assert box[0].any() and box[:, 0].any()  # and the box is tight at its origin
    assert 0 <= placement.angle <= 360 and 0.85 <= placement.scale <= 1.15


def test_valid_offsets_are_exactly_the_fitting_positions():
    fg = np.zeros((10, 10), bool)
    fg[2:6, 3:9] = True
    defect = np.ones((2, 3), bool)
    got = {tuple(o) for o in valid_offsets(defect, fg)}
    brute = {
        (y, x) for y in range(9) for x in range(8) if fg[y : y + 2, x : x + 3].all()
    }
    assert got == brute and len(got) == 3 * 4


def test_placement_is_uniform_over_valid_offsets():
    fg = np.ones((8, 8), bool)
    source = np.zeros((8, 8), np.uint8)
    source[0:6, 0:6] = 255  # 9 valid offsets
    seen = {}
    rng = np.random.default_rng(0)
    for _ in range(900):
        _, p = place_defect(source, fg, MaskConfig(), rng)
        seen[(p.top, p.left)] = seen.get((p.top, p.left), 0) + 1
    assert len(seen) == 9 and min(seen.values()) > 60


def test_full_image_defect_fits_full_foreground():
    # The authors' code crashed here; the only placement is the origin.
    fg = np.ones((32, 32), bool)
    source = np.full((32, 32), 255, np.uint8)
    mask, p = place_defect(source, fg, MaskConfig(), np.random.default_rng(0))
    assert mask.all() and (p.top, p.left) == (0, 0)


def test_impossible_placement_is_a_clear_error_after_bounded_tries():
    fg = np.zeros((64, 64), bool)
    fg[:, :20] = True
    source = np.zeros((64, 64), np.uint8)
    source[5:40, 5:40] = 255  # 35 x 35 never fits in a 20 px wide foreground
    with pytest.raises(PlacementError, match=r"35x35 .* fits nowhere .* after 1 tries"):
        place_defect(source, fg, MaskConfig(), np.random.default_rng(0))
    with pytest.raises(PlacementError, match="after 7 tries"):
        place_defect(source, fg, MaskConfig(rotate=30, max_tries=7), np.random.default_rng(0))


def test_binarisation_threshold_is_200_inclusive():
    source = np.zeros((16, 16), np.uint8)
    source[2:4, 2:4] = 200
    source[8:10, 8:10] = 199
    mask, _ = place_defect(source, np.ones((16, 16), bool), MaskConfig(), np.random.default_rng(0))
    assert mask.sum() == 4


def test_empty_defect_mask_is_an_error():
    with pytest.raises(PlacementError, match="no pixel"):
        crop_to_content(np.zeros((8, 8), bool))


def test_scale_and_rotation_change_the_defect():
    m = np.ones((10, 20), bool)
    assert transform_defect(m, 0.0, 2.0, 200).shape == (20, 40)
    rotated = transform_defect(m, 90.0, 1.0, 200)
    assert rotated.shape in ((20, 10), (19, 10), (20, 9), (19, 9))


def test_nearest_downsample_takes_the_top_left_pixel_of_each_cell():
    # OpenCV INTER_NEAREST for 256 -> 32: source index 8 * i.
    image = np.arange(256 * 256).reshape(256, 256)
    small = nearest_downsample(image, 32)
    assert small.shape == (32, 32)
    assert small[3, 5] == image[24, 40]


def test_latent_mask_dilates_one_cell_to_a_5x5_square():
    trimap = np.full((256, 256), 127, np.uint8)
    trimap[80:88, 120:128] = 255  # exactly latent cell (10, 15)
    m_keep = latent_keep_mask(trimap, 8, MaskConfig())
    assert m_keep.shape == (32, 32) and m_keep.dtype == np.float32
    assert set(np.unique(m_keep)) == {0.0, 1.0}
    generated = np.argwhere(m_keep == 0)
    assert generated.min(0).tolist() == [8, 13] and generated.max(0).tolist() == [12, 17]
    assert len(generated) == 25


def test_thin_defect_vanishes_with_nearest_and_is_kept_with_keep_thin():
    trimap = np.full((256, 256), 127, np.uint8)
    trimap[100:103, 40:200] = 255  # 3 px tall scratch between latent sampling rows (96, 104)
    assert latent_keep_mask(trimap, 8, MaskConfig()).min() == 1.0  # authors: lost
    kept = latent_keep_mask(trimap, 8, MaskConfig(keep_thin=True))
    assert kept.min() == 0.0
    assert (kept[12, 5:25] == 0).all()


def test_otsu_foreground_finds_the_object_either_polarity():
    obj = disk(128, 64, 64, 40)
    bright_on_dark = np.where(obj, 200, 30).astype(np.uint8)
    dark_on_bright = np.where(obj, 40, 220).astype(np.uint8)
    for image in (bright_on_dark, dark_on_bright):
        fg = foreground_mask(image, "otsu")
        assert (fg == obj).mean() > 0.99
    assert foreground_mask(bright_on_dark, "full").all()
    with pytest.raises(ValueError, match="foreground mode"):
        foreground_mask(bright_on_dark, "learned")


def test_otsu_foreground_drops_specks_below_the_area_fraction():
    obj = disk(128, 64, 64, 30)
    image = np.where(obj, 200, 30).astype(np.uint8)
    specks = np.zeros_like(obj)
    for y, x in ((8, 8), (8, 110), (115, 20)):
        specks[y : y + 3, x : x + 3] = True  # 9 px each, under 0.5% of 128 x 128 (82 px)
    image[specks] = 210
    fg = foreground_mask(image, "otsu")
    assert not (fg & specks).any() and (fg == obj).mean() > 0.99
    assert (foreground_mask(image, "otsu", min_area=0.0) & specks).sum() == specks.sum()
    # The largest component stays whatever the fraction: an object is never dropped.
    assert (foreground_mask(image, "otsu", min_area=0.9) == fg).all()


def test_component_sides_are_the_largest_inscribed_disk():
    full = np.ones((64, 64), bool)
    assert component_sides(full) == ((64,), (64 * 64,))
    two = np.zeros((64, 64), bool)
    two[4:18, 4:18] = True  # 14 x 14
    two[30:60, 10:20] = True  # 30 x 10
    assert component_sides(two) == ((14, 10), (196, 300))
    round_one = disk(128, 64, 64, 20)
    assert component_sides(round_one) == ((40,), (int(round_one.sum()),))  # its diameter


def test_sized_source_on_a_full_foreground_draws_as_its_source():
    """One component the size of the image: the same masks and the same random stream."""
    from adabldm_ref.pipeline import ProceduralMasks

    sides, areas = component_sides(np.ones((64, 64), bool))
    sized = SizedToForeground(ProceduralMasks(), sides, areas)
    for seed in range(6):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        (name_a, mask_a), (name_b, mask_b) = sized.draw(a, 64), ProceduralMasks().draw(b, 64)
        assert name_a == name_b and np.array_equal(mask_a, mask_b)
        assert a.random() == b.random()


def test_procedural_defects_sized_to_small_objects_fit_them():
    """Four 14 px objects on a 64 px image: image-sized procedural defects do not fit,
    component-sized ones always do."""
    from adabldm_ref.pipeline import ProceduralMasks

    fg = np.zeros((64, 64), bool)
    for y, x in ((4, 4), (4, 40), (40, 4), (40, 40)):
        fg[y : y + 14, x : x + 14] = True
    sized = SizedToForeground(ProceduralMasks(), *component_sides(fg))
    unsized_fits = 0
    for seed in range(30):
        name, source = sized.draw(np.random.default_rng(seed), 64)
        assert source.shape == (64, 64)
        mask, _ = place_defect(source, fg, MaskConfig(), np.random.default_rng(seed))
        assert mask.any() and not (mask & ~fg).any()
        try:
            place_defect(ProceduralMasks().draw(np.random.default_rng(seed), 64)[1], fg, MaskConfig(),
                         np.random.default_rng(seed))
            unsized_fits += 1
        except PlacementError:
            pass
    assert unsized_fits < 10


def test_thin_defect_scaled_down_keeps_a_pixel_wide_line():
    """A 1 px diagonal scratch at scale 0.3 peaks near 77 of 255 after the bilinear resize:
    below the 200 threshold everywhere. It is resampled to every pixel it touches."""
    line = np.eye(60, dtype=bool)
    small = transform_defect(line, 0.0, 0.3, 200)
    assert small.shape == (18, 18)
    assert small.any(axis=1).all() and small.any(axis=0).all()  # unbroken: a pixel in every row and column
    assert small.sum() <= 3 * 18  # and still thin
    fg = np.ones((64, 64), bool)
    source = np.zeros((64, 64), np.uint8)
    source[:60, :60] = line * 255
    mask, placement = place_defect(source, fg, MaskConfig(scale=(0.25, 0.45)), np.random.default_rng(0))
    assert mask.any() and placement.thin_resampled


def test_defect_that_keeps_pixels_is_transformed_as_before():
    """The thin resampling changes nothing where the bilinear result keeps a pixel."""
    from PIL import Image

    m = np.zeros((30, 40), bool)
    m[5:25, 3:8] = True
    m[10, 3:40] = True
    for angle, scale in ((0.0, 0.45), (33.0, 1.0), (200.0, 0.85)):
        expected = (m.astype(np.uint8) * 255)
        if angle:
            from scipy import ndimage

            expected = ndimage.rotate(expected, angle, reshape=True, order=1, mode="constant", cval=0)
        if scale != 1.0:
            h, w = expected.shape
            expected = np.asarray(Image.fromarray(expected).resize((round(w * scale), round(h * scale)),
                                                                    Image.BILINEAR))
        assert np.array_equal(transform_defect(m, angle, scale, 200), crop_to_content(expected >= 200))
    _, placement = place_defect(m.astype(np.uint8) * 255, np.ones((64, 64), bool), MaskConfig(scale=(0.9, 1.1)),
                                np.random.default_rng(0))
    assert not placement.thin_resampled
