"""Tumor localization features on drawn masks with known areas and shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tupac.errors import FeatureError
from tupac.features.tumor import TUMOR_FEATURES, resample_nearest, tumor_features, tumor_mask

from features_drawing import disk, ellipse

MPP = 10.0  # µm/px: 100 px = 1 mm


def test_disk_area_shape_and_density_match_the_drawing():
    prob = np.zeros((300, 300), np.float32)
    d = disk(prob.shape, (150, 150), 100)  # radius 1 mm
    prob[d] = 0.8
    f = tumor_features(prob, MPP)
    assert f["tumor_area_mm2"] == pytest.approx(math.pi, rel=0.02)
    assert f["tumor_n_regions"] == 1 and f["tumor_region1_area_mm2"] == f["tumor_area_mm2"]
    assert f["tumor_region2_area_mm2"] == 0 and f["tumor_largest_fraction"] == 1
    assert f["tumor_largest_eccentricity"] < 0.05
    assert f["tumor_largest_solidity"] > 0.97
    assert f["tumor_largest_perimeter_mm"] == pytest.approx(2 * math.pi, rel=0.03)
    assert f["tumor_largest_perimeter_per_area"] == pytest.approx(2.0, rel=0.04)  # 2/R for R = 1 mm
    assert f["tumor_bbox_width_mm"] == pytest.approx(2.0, abs=0.02)
    assert f["tumor_bbox_fill"] == pytest.approx(math.pi / 4, rel=0.02)
    assert f["tumor_radius_of_gyration_mm"] == pytest.approx(1 / math.sqrt(2), rel=0.02)
    assert f["tumor_prob_mean"] == pytest.approx(0.8) and f["tumor_prob_p50"] == pytest.approx(0.8)
    assert f["tumor_missing"] == 0


def test_ellipse_eccentricity_and_regions_ordered_by_size():
    prob = np.zeros((400, 600), np.float32)
    prob[ellipse(prob.shape, (100, 150), 120, 60)] = 1.0  # e = sqrt(1 - 1/4)
    prob[disk(prob.shape, (300, 450), 50)] = 1.0
    prob[disk(prob.shape, (300, 150), 30)] = 1.0
    prob[5, 590] = 1.0  # one-pixel speckle (0.0001 mm²): dropped
    f = tumor_features(prob, MPP)
    assert f["tumor_n_regions"] == 3
    assert f["tumor_largest_eccentricity"] == pytest.approx(math.sqrt(0.75), abs=0.02)
    areas = [f[f"tumor_region{i}_area_mm2"] for i in (1, 2, 3)]
    assert areas == pytest.approx([math.pi * 1.2 * 0.6, math.pi * 0.25, math.pi * 0.09], rel=0.03)
    assert f["tumor_area_mm2"] == pytest.approx(sum(areas))


def test_centroid_spread_of_two_equal_regions_is_half_their_distance():
    prob = np.zeros((200, 500), np.float32)
    prob[disk(prob.shape, (100, 100), 40)] = 1.0
    prob[disk(prob.shape, (100, 400), 40)] = 1.0
    f = tumor_features(prob, MPP)
    assert f["tumor_region_centroid_spread_mm"] == pytest.approx(1.5, rel=0.01)
    assert f["tumor_bbox_width_mm"] == pytest.approx(3.8, abs=0.02)


def test_tissue_fraction_with_a_coarser_tissue_mask_and_tumor_outside_tissue_ignored():
    prob = np.zeros((200, 200), np.float32)
    prob[50:150, 50:150] = 0.9  # 1 mm²
    prob[0:20, 0:20] = 0.9  # outside tissue
    tissue = np.zeros((50, 50), bool)  # 40 µm/px
    tissue[10:40, 10:40] = True  # 1.2 mm square = 1.44 mm²
    f = tumor_features(prob, MPP, tissue, tissue_mpp=40.0)
    assert f["tissue_area_mm2"] == pytest.approx(1.44)
    assert f["tumor_area_mm2"] == pytest.approx(1.0)
    assert f["tumor_tissue_fraction"] == pytest.approx(1 / 1.44)
    assert f["tumor_prob_mean_tissue"] == pytest.approx(0.9 / 1.44)


def test_threshold_and_percentiles_of_a_ramp():
    prob = np.zeros((100, 100), np.float32)
    prob[:, :] = np.linspace(0, 1, 100, dtype=np.float32)[None, :]
    f = tumor_features(prob, MPP, threshold=0.5)
    inside = prob[:, prob[0] >= 0.5]
    assert f["tumor_area_mm2"] == pytest.approx(inside.size * 1e-4)
    assert f["tumor_prob_p10"] == pytest.approx(np.percentile(inside, 10), abs=1e-6)
    assert f["tumor_prob_p90"] == pytest.approx(np.percentile(inside, 90), abs=1e-6)
    assert tumor_features(prob, MPP, threshold=0.9)["tumor_area_mm2"] < f["tumor_area_mm2"]


def test_no_tumor_gives_zeros_and_the_flag():
    prob = np.full((50, 50), 0.2, np.float32)
    prob[0, 0] = np.nan
    f = tumor_features(prob, MPP)
    assert set(f) == {x.name for x in TUMOR_FEATURES} | {"tumor_missing"}
    assert all(math.isfinite(v) for v in f.values())
    assert f["tumor_missing"] == 1 and f["tumor_area_mm2"] == 0 and f["tumor_n_regions"] == 0
    assert f["tissue_area_mm2"] == pytest.approx((2500 - 1) * 1e-4)  # NaN is not tissue


def test_helpers_and_errors():
    labels, n = tumor_mask(np.eye(4, dtype=np.float32), 0.5)
    assert n == 1 and labels.max() == 1  # diagonal pixels are one 8-connected region
    m = np.arange(4).reshape(2, 2)
    assert resample_nearest(m, 2.0, 1.0, (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    with pytest.raises(FeatureError):
        tumor_features(np.zeros(5), MPP)
    with pytest.raises(ValueError):
        tumor_features(np.zeros((5, 5)), MPP, np.zeros((4, 4), bool))
