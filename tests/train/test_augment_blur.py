"""Focus-blur augmentation (issue 17): off by default, seeded, per-image sigma, a real blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tupac.errors import ConfigError
from tupac.train.augment import augment_batch, flip_rotate, focus_blur, gaussian_kernels, stain_jitter
from tupac.train.config import AugmentConfig


def _batch(n: int = 8, s: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, s, s, generator=g)


def _laplacian_var(x: torch.Tensor) -> np.ndarray:
    lap = x[..., 1:-1, 2:] + x[..., 1:-1, :-2] + x[..., 2:, 1:-1] + x[..., :-2, 1:-1] - 4 * x[..., 1:-1, 1:-1]
    return lap.flatten(1).var(dim=1).numpy()


def test_default_config_draws_what_it_drew_before_blur_existed():
    x, cfg = _batch(), AugmentConfig()
    assert cfg.blur_sigma == 0
    got = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    want = stain_jitter(flip_rotate(x, g, True, True), cfg.stain_sigma, cfg.stain_bias, g)
    assert torch.equal(got, want)


def test_kernels_sum_to_one_and_sigma_zero_is_the_identity():
    k = gaussian_kernels(torch.tensor([0.0, 0.7, 2.0]), 6)
    assert torch.allclose(k.sum(dim=1), torch.ones(3))
    assert k[0, 6] == 1 and k[0].sum() == 1
    assert k[2, 6] < k[1, 6] < 1  # wider sigma, flatter kernel


def test_blur_hits_the_chosen_share_seeded_and_really_smooths():
    x = _batch(n=64)
    y = focus_blur(x, 2.0, 0.5, torch.Generator().manual_seed(1))
    again = focus_blur(x, 2.0, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(y, again) and y.shape == x.shape
    untouched = np.array([torch.allclose(a, b, atol=1e-6) for a, b in zip(x, y)])
    assert 0.3 < untouched.mean() < 0.7  # about half the images stay sharp
    ratio = _laplacian_var(y[~torch.from_numpy(untouched)]) / _laplacian_var(x[~torch.from_numpy(untouched)])
    assert (ratio < 0.999).all() and np.median(ratio) < 0.1  # the others lost fine detail (sigma is random)
    assert float(y.min()) >= 0 and float(y.max()) <= 1  # a convex combination stays in range


def test_full_share_blurs_every_image_and_bad_options_are_refused():
    x = _batch(n=6)
    y = augment_batch(x, AugmentConfig(flips=False, rot90=False, stain_sigma=0, stain_bias=0, blur_sigma=1.5,
                                       blur_share=1.0), torch.Generator().manual_seed(0))
    assert (_laplacian_var(y) < _laplacian_var(x)).all()
    for bad in ({"blur_sigma": -1}, {"blur_sigma": 9}, {"blur_share": 1.5}):
        with pytest.raises(ConfigError, match="blur"):
            AugmentConfig(**bad)


def _blockiness(x: torch.Tensor) -> float:
    """Mean jump across 8-px block borders minus the mean jump elsewhere (JPEG's signature)."""
    d = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    border = torch.arange(d.numel()) % 8 == 7
    return float(d[border].mean() - d[~border].mean())


def test_jpeg_augmentation_compresses_the_chosen_share_seeded():
    from tupac.train.augment import jpeg_compress

    # Smooth images (blurred noise): block artifacts then stand out.
    x = focus_blur(_batch(n=32, s=64), 3.0, 1.0, torch.Generator().manual_seed(0))
    y = jpeg_compress(x, 10, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(y, jpeg_compress(x, 10, 0.5, torch.Generator().manual_seed(4)))
    changed = np.array([not torch.equal(a, b) for a, b in zip(x, y)])
    assert 0.2 < changed.mean() < 0.8
    assert _blockiness(y[torch.from_numpy(changed)]) > _blockiness(x[torch.from_numpy(changed)]) + 1e-3
    assert AugmentConfig().jpeg_min_quality == 0
    with pytest.raises(ConfigError, match="jpeg_min_quality"):
        AugmentConfig(jpeg_min_quality=99)
