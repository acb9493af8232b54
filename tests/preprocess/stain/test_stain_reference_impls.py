"""Each method against an independent implementation: torchstain's Macenko, the textbook Reinhard
formula on skimage's LAB, and the color conversions against skimage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import lab2rgb, rgb2lab

from tupac.preprocess import color
from tupac.preprocess.stain import macenko, reinhard


@pytest.fixture(scope="module")
def target(real_dir):
    return np.asarray(Image.open(real_dir / "he-tumor-target.png").convert("RGB"))


def _svs_crop(path, xy, size):
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        return np.asarray(s.read_region(xy, 0, size).convert("RGB"))


@pytest.fixture(scope="module")
def real_sources(real_dir, target):
    return {
        "cmu-1 crop": _svs_crop(real_dir / "cmu-1-small-region.svs", (600, 900), (700, 700)),
        "tcga crop": _svs_crop(real_dir / "tcga-cr-7395-01a-01-ts1.svs", (1800, 1400), (700, 700)),
        "target bottom-left": np.ascontiguousarray(target[500:, :500]),
    }


@pytest.mark.parametrize("name", ["cmu-1 crop", "tcga crop", "target bottom-left"])
def test_macenko_agrees_with_torchstain(real_sources, target, name):
    import torchstain

    src = real_sources[name]
    ref_norm = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref_norm.fit(target)
    expected, _, _ = ref_norm.normalize(src, stains=False)

    ours = macenko.transform(src, macenko.fit_image(src), macenko.fit(target))

    assert ours.shape == src.shape and ours.dtype == np.uint8
    mad = np.abs(ours.astype(np.float64) - expected.astype(np.float64)).mean()
    assert mad <= 3.0, f"{name}: mean absolute difference {mad:.2f} vs torchstain"
    # and the image really changed (the check is not vacuous)
    assert np.abs(ours.astype(np.float64) - src).mean() > 3.0


def test_macenko_reference_stain_vectors_match_torchstain(target):
    import torchstain

    ref_norm = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref_norm.fit(target)
    ref = macenko.fit(target)
    np.testing.assert_allclose(ref.params["stain_matrix"], ref_norm.HERef, atol=1e-4)
    np.testing.assert_allclose(ref.params["max_conc"], ref_norm.maxCRef, rtol=1e-4)


def test_reinhard_is_the_textbook_formula_on_lab(real_sources, target):
    src = real_sources["tcga crop"]
    lab_s, lab_t = rgb2lab(src), rgb2lab(target)
    mu_s, sd_s = lab_s.reshape(-1, 3).mean(0), lab_s.reshape(-1, 3).std(0)
    mu_t, sd_t = lab_t.reshape(-1, 3).mean(0), lab_t.reshape(-1, 3).std(0)
    expected = np.rint(lab2rgb((lab_s - mu_s) / sd_s * sd_t + mu_t) * 255).astype(np.uint8)

    stats, ref = reinhard.fit_image(src), reinhard.fit(target)
    np.testing.assert_allclose(stats.params["mean"], mu_s, atol=1e-2)
    np.testing.assert_allclose(stats.params["std"], sd_s, rtol=1e-3)
    np.testing.assert_allclose(ref.params["mean"], mu_t, atol=1e-2)
    ours = reinhard.transform(src, stats, ref)
    diff = np.abs(ours.astype(np.int16) - expected)
    assert diff.mean() < 0.1 and diff.max() <= 2


def test_lab_matches_skimage_on_every_gray_and_random_colors():
    rng = np.random.default_rng(0)
    rgb = np.concatenate([rng.integers(0, 256, (50_000, 3)), np.repeat(np.arange(256), 3).reshape(-1, 3)])
    rgb = rgb.astype(np.uint8)
    ours = color.rgb_to_lab(rgb)
    np.testing.assert_allclose(ours, rgb2lab(rgb[None])[0], atol=2e-3)
    back = color.lab_to_rgb(ours)
    assert np.abs(back.astype(int) - rgb).max() <= 1


def test_hsd_round_trip_and_ranges():
    rng = np.random.default_rng(1)
    rgb = np.concatenate([rng.integers(0, 256, (100_000, 3)), [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 255]]])
    rgb = rgb.astype(np.uint8)
    hsd = color.rgb_to_hsd(rgb)
    assert np.isfinite(hsd).all()
    assert hsd[:, 0].min() >= -1 - 1e-5 and hsd[:, 0].max() <= 2 + 1e-5
    assert np.abs(hsd[:, 1]).max() <= np.sqrt(3) + 1e-5
    np.testing.assert_array_equal(hsd[-3], [0.0, 0.0, 0.0])  # white has no chroma
    assert np.abs(color.hsd_to_rgb(hsd).astype(int) - rgb).max() <= 1
