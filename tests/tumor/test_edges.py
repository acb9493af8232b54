"""Synthetic tumor-edge patches: each label is the tissue under the patch center."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.tumor.edges import edge_composites

TUMOR, STROMA = 200, 40


def _flat(value: int, n: int, p: int = 100) -> np.ndarray:
    return np.full((n, p, p, 3), value, np.uint8)


@pytest.mark.parametrize("p", [100, 63])
def test_label_is_the_tissue_at_the_center(p):
    x, y = edge_composites(_flat(TUMOR, 4, p), _flat(STROMA, 3, p), 3000, np.random.default_rng(0))
    assert x.shape == (3000, p, p, 3) and x.dtype == np.uint8 and y.shape == (3000,)
    lo, hi = (p - 1) // 2, p // 2 + 1  # the one (odd P) or four (even P) pixels around the center
    center = x[:, lo:hi, lo:hi, 0]
    clear = (center == TUMOR).all((1, 2)) | (center == STROMA).all((1, 2))
    assert clear.mean() > 0.95  # only cuts through the center pixels are ambiguous
    np.testing.assert_array_equal(y[clear], (center[clear, 0, 0] == TUMOR).astype(np.int64))
    assert 0.45 < y.mean() < 0.55


def test_every_composite_shows_both_tissues_and_only_them():
    x, y = edge_composites(_flat(TUMOR, 2), _flat(STROMA, 2), 500, np.random.default_rng(1))
    share = (x[..., 0] == TUMOR).mean((1, 2))
    assert set(np.unique(x)) == {STROMA, TUMOR}
    assert share.min() > 0.05 and share.max() < 0.95
    # more tumor than stroma in the patch <=> the center is tumor, for a straight cut
    np.testing.assert_array_equal(share > 0.5, y == 1)


def test_pairs_are_drawn_from_the_given_patches_and_seeded():
    rng = np.random.default_rng(2)
    tumor = rng.integers(100, 256, (5, 32, 32, 3), dtype=np.uint8)
    stroma = rng.integers(0, 100, (5, 32, 32, 3), dtype=np.uint8)
    x1, y1 = edge_composites(tumor, stroma, 50, np.random.default_rng(3))
    x2, y2 = edge_composites(tumor, stroma, 50, np.random.default_rng(3))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    for img in x1:
        hi = img.min(-1) >= 100  # tumor pixels (all channels >= 100), copied from one tumor patch
        assert any(np.array_equal(img[hi], t[hi]) for t in tumor)
        assert any(np.array_equal(img[~hi], s[~hi]) for s in stroma)


def test_nothing_to_pair_gives_no_patches():
    x, y = edge_composites(_flat(TUMOR, 3), np.zeros((0, 100, 100, 3), np.uint8), 10, np.random.default_rng(0))
    assert x.shape == (0, 100, 100, 3) and y.shape == (0,)
    with pytest.raises(ValueError, match="max_offset_frac"):
        edge_composites(_flat(TUMOR, 1), _flat(STROMA, 1), 1, np.random.default_rng(0), max_offset_frac=1.5)
