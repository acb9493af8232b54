"""Biological mitosis features on drawn H&E-like patches with known figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from features_drawing import he_patch

from tupac.features.mitosis_bio import (
    BIO_FLAGS,
    BIO_PATCH_FEATURES,
    BIO_SLIDE_FEATURES,
    detections_in_patch,
    figure_properties,
    patch_bio_features,
    slide_bio_features,
)

MPP = 0.25


def test_exactly_fifty_named_patch_features_including_the_papers_significant_ones():
    names = [f.name for f in BIO_PATCH_FEATURES]
    assert len(names) == 50 == len(set(names))
    for required in ("bio_n_mitoses", "bio_area_std", "bio_eccentricity_mean"):
        assert required in names
    slide = {f.name for f in BIO_SLIDE_FEATURES}
    assert {"bio_slide_n_mitoses", "bio_slide_area_std", "bio_slide_eccentricity_mean"} <= slide
    assert len(slide) == 3 * 50 + 4


def test_figures_match_the_drawn_ellipses():
    # Semi-axes 24 x 12 px (6 x 3 µm): area pi*6*3 µm², eccentricity sqrt(3)/2.
    figs = [(100, 100, 24, 12, 0.0), (300, 120, 24, 12, 0.0), (150, 300, 24, 12, 0.0)]
    rgb = he_patch(400, figs)
    xy = np.array([(x, y) for x, y, *_ in figs], float)
    f = patch_bio_features(rgb, xy, np.array([0.9, 0.8, 0.7]))
    assert list(f) == [x.name for x in BIO_PATCH_FEATURES]
    assert f["bio_n_mitoses"] == 3 and f["bio_n_segmented"] == 3
    assert f["bio_area_mean"] == pytest.approx(math.pi * 18, rel=0.03)
    assert f["bio_area_std"] == pytest.approx(0.0, abs=1e-9)
    assert f["bio_eccentricity_mean"] == pytest.approx(math.sqrt(3) / 2, abs=0.02)
    assert f["bio_major_axis_mean"] == pytest.approx(12.0, rel=0.03)
    assert f["bio_minor_axis_mean"] == pytest.approx(6.0, rel=0.03)
    assert f["bio_perimeter_mean"] == pytest.approx(29.06, rel=0.04)  # Ramanujan, a=6, b=3 µm
    assert f["bio_orientation_coherence"] == pytest.approx(1.0)
    assert f["bio_prob_mean"] == pytest.approx(0.8)
    assert f["bio_density_per_mm2"] == pytest.approx(3 / (0.1**2))
    # The figures are hematoxylin-dark on an eosin background.
    assert f["bio_h_mean_mean"] > f["bio_patch_h_mean"] and f["bio_h_contrast_mean"] > 0.05
    # Nearest neighbour: (100,100)-(150,300) is 206 px, (300,120)-(100,100) is 201 px.
    assert f["bio_nn_dist_min"] == pytest.approx(math.hypot(200, 20) * MPP)
    for name in ("glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation"):
        assert math.isfinite(f[f"bio_{name}_mean"])


def test_area_std_and_eccentricity_follow_the_figures():
    figs = [(80, 80, 14, 14, 0.0), (250, 80, 30, 12, 0.5), (160, 250, 28, 22, 1.2)]
    rgb = he_patch(350, figs)
    table = figure_properties(rgb, np.array([(x, y) for x, y, *_ in figs], float), MPP)
    true_area = np.array([math.pi * a * b for _, _, a, b, _ in figs]) * MPP**2
    np.testing.assert_allclose(table["area"], true_area, rtol=0.05)
    true_ecc = np.array([math.sqrt(1 - (b / a) ** 2) for _, _, a, b, _ in figs])
    np.testing.assert_allclose(table["eccentricity"], true_ecc, atol=0.03)
    f = patch_bio_features(rgb, table[["x", "y"]].to_numpy())
    assert f["bio_area_std"] == pytest.approx(true_area.std(), rel=0.1)
    assert f["bio_orientation_coherence"] < 0.9


def test_detection_on_glass_is_counted_but_not_segmented():
    rgb = he_patch(200, [(60, 60, 16, 12, 0.0)])
    f = patch_bio_features(rgb, np.array([[60.0, 60.0], [160.0, 160.0]]))
    assert f["bio_n_mitoses"] == 2 and f["bio_n_segmented"] == 1


def test_patch_without_mitoses_and_slide_aggregation_are_defined():
    empty = patch_bio_features(he_patch(200, []), np.zeros((0, 2)))
    assert empty["bio_n_mitoses"] == 0 and math.isnan(empty["bio_area_mean"])
    s = slide_bio_features([empty])
    assert set(s) == {f.name for f in BIO_SLIDE_FEATURES + BIO_FLAGS}
    assert all(math.isfinite(v) for v in s.values())
    assert s["bio_missing"] == 1 and s["bio_nn_missing"] == 1
    assert s["bio_nn_dist_mean__mean"] == pytest.approx(1000 * MPP * math.sqrt(2))
    none = slide_bio_features([])
    assert none["bio_slide_n_patches"] == 0 and all(math.isfinite(v) for v in none.values())


def test_slide_aggregation_mean_std_max_over_patches_and_pooled_values():
    p1, f1 = patch_bio_features(he_patch(200, [(50, 50, 16, 16, 0)]), np.array([[50.0, 50.0]]), return_figures=True)
    figs2 = [(50, 50, 24, 12, 0), (150, 150, 24, 12, 0)]
    p2, f2 = patch_bio_features(he_patch(200, figs2), np.array([[50.0, 50], [150, 150]]), return_figures=True)
    empty = patch_bio_features(he_patch(200, []), np.zeros((0, 2)))
    s = slide_bio_features([p1, p2, empty], [f1, f2, figure_properties(he_patch(200, []), np.zeros((0, 2)))])
    assert s["bio_slide_n_mitoses"] == 3 and s["bio_slide_n_patches"] == 3
    assert s["bio_n_mitoses__mean"] == pytest.approx(1.0)
    assert s["bio_n_mitoses__max"] == 2
    assert s["bio_n_mitoses__std"] == pytest.approx(np.std([1, 2, 0]))
    # Area is undefined in the empty patch: averaged over the two others only.
    assert s["bio_area_mean__mean"] == pytest.approx((p1["bio_area_mean"] + p2["bio_area_mean"]) / 2)
    pooled = np.concatenate([f1["area"], f2["area"]])
    assert s["bio_slide_area_std"] == pytest.approx(pooled.std())
    assert s["bio_slide_eccentricity_mean"] == pytest.approx(np.mean(np.r_[f1["eccentricity"], f2["eccentricity"]]))
    assert s["bio_missing"] == 0 and s["bio_nn_missing"] == 0


def test_detections_in_patch_converts_level0_to_patch_pixels():
    xy_l0 = np.array([[1000.0, 1000.0], [1100.0, 1050.0], [5000.0, 5000.0]])
    xy, idx = detections_in_patch(xy_l0, (1000, 1000), slide_mpp=0.5)  # level 0 at 20x
    assert idx.tolist() == [0, 1]
    np.testing.assert_allclose(xy, [[0, 0], [200, 100]])


def test_full_size_patch_runs():
    figs = [(200 + 150 * i, 500, 20, 14, 0.3 * i) for i in range(5)]
    f = patch_bio_features(he_patch(1000, figs), np.array([(x, y) for x, y, *_ in figs], float))
    assert f["bio_n_segmented"] == 5 and f["bio_nn_dist_mean"] == pytest.approx(150 * MPP)
