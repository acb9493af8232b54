"""A seeded synthetic two-class patch problem: eosin-pink noise with or without a dark 'nucleus'."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.train import PatchDataset


def make_blobs(n: int, size: int, seed: int) -> PatchDataset:
    """``n`` patches (half positive) of ``size`` px; positives carry a dark purple disk near the center.

    The disk radius (8-14 % of the side) and position (within 10 % of the center) vary, the
    background is noisy, so the classes are separable but not by a single pixel.
    """
    rng = np.random.default_rng(seed)
    base = np.array([235.0, 200.0, 225.0])
    img = np.clip(base + rng.normal(0, 12, (n, size, size, 3)), 0, 255).astype(np.uint8)
    labels = np.arange(n) % 2
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(labels):
        r = rng.uniform(0.08, 0.14) * size
        cy, cx = size / 2 + rng.uniform(-0.1 * size, 0.1 * size, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[i][disk] = np.clip(np.array([70.0, 40.0, 120.0]) + rng.normal(0, 10, (disk.sum(), 3)), 0, 255)
    return PatchDataset(img, labels)


@pytest.fixture
def blobs():
    return make_blobs
