"""Augmentation: exact geometry, HED round trip, seeded determinism, mild stain changes."""

from __future__ import annotations

import numpy as np
import torch

from tupac.train import AugmentConfig, augment_batch, hed_to_rgb, rgb_to_hed, stain_jitter
from tupac.train.augment import flip_rotate


def _batch(n=8, s=16, seed=0):
    return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def test_hed_round_trip_is_the_identity():
    x = _batch()
    torch.testing.assert_close(hed_to_rgb(rgb_to_hed(x)), x, atol=1e-5, rtol=0)


def test_hed_separates_hematoxylin_from_eosin():
    # Pure hematoxylin and pure eosin colors made from the stain vectors themselves.
    od_h = torch.tensor([0.65, 0.70, 0.29]) / torch.tensor([0.65, 0.70, 0.29]).norm()
    od_e = torch.tensor([0.07, 0.99, 0.11]) / torch.tensor([0.07, 0.99, 0.11]).norm()
    rgb = torch.stack([(256 * torch.exp(-0.8 * od) - 1) / 255 for od in (od_h, od_e)]).view(2, 3, 1, 1)
    hed = rgb_to_hed(rgb)[:, :, 0, 0]
    torch.testing.assert_close(hed[0], torch.tensor([0.8, 0.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(hed[1], torch.tensor([0.0, 0.8, 0.0]), atol=1e-4, rtol=0)


def test_zero_jitter_is_identity_and_mild_jitter_is_mild():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(stain_jitter(x, 0.0, 0.0, g), x, atol=1e-5, rtol=0)
    y = stain_jitter(x, 0.05, 0.02, torch.Generator().manual_seed(1))
    change = (y - x).abs()
    assert 0 < change.mean() < 0.05 and y.min() >= 0 and y.max() <= 1
    # One draw per image and stain: without bias, each stain is scaled by one factor per image.
    mid = 0.3 + 0.4 * x  # away from 0 and 1 so nothing clips
    hed0 = rgb_to_hed(mid.double())
    hed1 = rgb_to_hed(stain_jitter(mid.double(), 0.05, 0.0, torch.Generator().manual_seed(2)))
    ratio = (hed1 / hed0)[:, :2].flatten(2)  # H and E
    assert torch.all(ratio.std(-1) < 1e-6) and torch.all((ratio - 1).abs() <= 0.05 + 1e-9)


def test_flips_and_rotations_only_permute_pixels_and_are_seeded():
    x = _batch(n=32)
    y = flip_rotate(x, torch.Generator().manual_seed(3))
    for a, b in zip(x, y):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    # Every one of the 8 dihedral outcomes is possible; with 32 draws more than one occurs.
    assert sum(torch.equal(a, b) for a, b in zip(x, y)) < 32
    again = flip_rotate(x, torch.Generator().manual_seed(3))
    assert torch.equal(y, again)


def test_augment_batch_respects_the_config():
    x = _batch()
    off = AugmentConfig(flips=False, rot90=False, stain_sigma=0.0, stain_bias=0.0)
    assert torch.equal(augment_batch(x, off, torch.Generator().manual_seed(0)), x)
    on = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert on.shape == x.shape and not torch.equal(on, x)
    assert np.isfinite(on.numpy()).all()
