"""Level choice by MPP and exact area averaging, on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.errors import ResolutionError
from tupac.slide.resample import area_mean_1d, plan_level, resize_window

DS = (1.0, 4.0, 16.0)  # a 40x slide: 0.25, 1.0, 4.0 um/px


@pytest.mark.parametrize(
    "mpp,level,scale",
    [
        (0.25, 0, 1.0),
        (0.2520, 0, 1.0),  # within 5%: native
        (0.5, 0, 2.0),
        (1.0, 1, 1.0),
        (1.04, 1, 1.0),
        (2.0, 1, 2.0),
        (3.7, 1, 3.7),
        (3.9, 2, 1.0),  # level 2 (4.0) is within 5% of 3.9
        (4.0, 2, 1.0),
        (10.0, 2, 2.5),
    ],
)
def test_coarsest_level_at_or_finer_than_target(mpp, level, scale):
    plan = plan_level(0.25, DS, mpp)
    assert plan.level == level and plan.scale == pytest.approx(scale)


def test_finer_than_level0():
    with pytest.raises(ResolutionError, match="finer than the slide's level 0"):
        plan_level(0.499, (1.0,), 0.25)
    plan = plan_level(0.499, (1.0,), 0.25, allow_upsample=True)
    assert plan.level == 0 and plan.scale == pytest.approx(0.25 / 0.499)
    assert plan_level(0.499, (1.0,), 0.48).scale == 1.0  # 4% finer: tolerated
    with pytest.raises(ResolutionError):
        plan_level(0.25, DS, -1.0)


def test_area_mean_1d_weights_partial_pixels():
    a = np.array([0.0, 10.0, 20.0, 30.0])
    np.testing.assert_allclose(area_mean_1d(a, 0.0, 2, 2.0), [5.0, 25.0])
    np.testing.assert_allclose(area_mean_1d(a, 0.5, 2, 1.5), [(0 * 0.5 + 10) / 1.5, (20 + 30 * 0.5) / 1.5])
    np.testing.assert_allclose(area_mean_1d(a.astype(np.uint8), 1.0, 1, 3.0), [20.0])


def test_resize_window_integer_and_fractional():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(12, 18, 3), dtype=np.uint8)
    out = resize_window(img, (0.0, 0.0), (6, 4), 3.0)
    expected = img.reshape(4, 3, 6, 3, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.rint(expected).astype(np.uint8))
    frac = resize_window(img, (0.0, 0.0), (12, 8), 1.5)
    pairs = frac.astype(float).reshape(4, 2, 6, 2, 3).mean(axis=(1, 3))
    assert np.abs(pairs - expected).max() <= 0.5 + 1e-9  # output rounding only
    flat = np.full((10, 10, 3), 77, np.uint8)
    assert (resize_window(flat, (0.3, 0.7), (3, 3), 2.7) == 77).all()
    assert resize_window(flat, (0.5, 0.5), (8, 8), 0.5).shape == (8, 8, 3)
