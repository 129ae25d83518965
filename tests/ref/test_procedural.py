from __future__ import annotations

import numpy as np
import pytest

from adabldm_ref.procedural import KINDS, procedural_mask


@pytest.mark.parametrize("kind", KINDS)
def test_procedural_masks_are_binary_nonempty_and_seeded(kind):
    for seed in range(5):
        m = procedural_mask(kind, np.random.default_rng(seed), 256)
        assert m.shape == (256, 256) and m.dtype == np.uint8
        assert set(np.unique(m)) == {0, 255}
        assert 0 < (m == 255).mean() < 0.3
        again = procedural_mask(kind, np.random.default_rng(seed), 256)
        assert np.array_equal(m, again)


def test_scratches_are_thin_and_blobs_are_not():
    rng = np.random.default_rng(0)
    scratch = procedural_mask("scratch", rng, 256) == 255
    blob = procedural_mask("blob", rng, 256) == 255
    # area per bounding-box perimeter: lines are thin
    assert scratch.sum() / max(np.ptp(np.argwhere(scratch), 0).sum(), 1) < 4
    assert blob.sum() / max(np.ptp(np.argwhere(blob), 0).sum(), 1) > 8


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of blob, scratch, crack"):
        procedural_mask("dent", np.random.default_rng(0), 64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", [14, 40, 256])
def test_a_mask_drawn_on_a_canvas_fits_the_disk_of_its_side(kind, side):
    """What sizing procedural masks to a foreground component rests on (masks.component_sides:
    the component's largest inscribed disk is the canvas)."""
    from adabldm_ref.masks import crop_to_content, valid_offsets

    room = side + 4
    yy, xx = np.mgrid[:room, :room] - (room - 1) / 2
    inscribed = yy**2 + xx**2 <= (side / 2) ** 2
    for seed in range(10):
        defect = crop_to_content(procedural_mask(kind, np.random.default_rng(seed), side) >= 200)
        assert len(valid_offsets(defect, inscribed)), (kind, side, seed, defect.shape)
