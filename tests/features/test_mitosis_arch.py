"""Architectural mitosis features: counts, lattices, planted hotspots, defined values when empty."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tupac.features.mitosis_arch import (
    ARCH_FEATURES,
    ARCH_FLAGS,
    HEAT_BINS,
    arch_features,
    delaunay_edges,
    heatmap_features,
    heatmap_moments,
    hotspot,
    voronoi_areas,
)

SLIDE_MPP = 0.25
TUMOR_MPP = 20.0  # 50 px = 1 mm


def _square_tumor(mm=10.0, pad_mm=1.0):
    n, p = int(mm * 50), int(pad_mm * 50)
    t = np.zeros((n + 2 * p, n + 2 * p), bool)
    t[p : p + n, p : p + n] = True
    return t


def _l0(xy_um):
    return np.asarray(xy_um, float) / SLIDE_MPP


def test_exactly_sixty_named_features():
    names = [f.name for f in ARCH_FEATURES]
    assert len(names) == 60 == len(set(names))
    assert all(n.startswith("arch_") for n in names)


def test_counts_and_densities(rng):
    tumor = _square_tumor(4.0, 1.0)  # 16 mm² tumor in a 6 x 6 mm slide
    inside = rng.uniform(1000, 5000, (37, 2))
    outside = np.array([[200.0, 200.0], [5800.0, 300.0]])
    f = arch_features(_l0(np.r_[inside, outside]), SLIDE_MPP, tumor, TUMOR_MPP,
                      prob=np.r_[np.full(37, 0.95), [0.5, 0.6]], tissue_area_mm2=32.0)
    assert f["arch_n_mitoses"] == 39 and f["arch_n_in_tumor"] == 37
    assert f["arch_frac_in_tumor"] == pytest.approx(37 / 39)
    assert f["arch_density_tumor_per_mm2"] == pytest.approx(37 / 16)
    assert f["arch_density_tissue_per_mm2"] == pytest.approx(39 / 32)
    assert f["arch_n_high_conf"] == 37
    assert set(f) == {x.name for x in ARCH_FEATURES + ARCH_FLAGS}


def test_delaunay_voronoi_and_neighbours_on_a_square_lattice():
    s, n = 100.0, 30  # µm spacing, 30 x 30 lattice filling a 3 x 3 mm tumor
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2) * s + s / 2
    edges, tri = delaunay_edges(g)
    lengths = np.hypot(*(g[edges[:, 0]] - g[edges[:, 1]]).T)
    sides, diags = 2 * n * (n - 1), (n - 1) ** 2  # each unit square split by one diagonal
    assert len(edges) == sides + diags
    assert tri.sum() == pytest.approx(((n - 1) * s) ** 2)
    np.testing.assert_allclose(voronoi_areas(g), s * s)  # interior cells only
    assert len(voronoi_areas(g)) == (n - 2) ** 2
    tumor = _square_tumor(3.0, 0.0)
    f = arch_features(_l0(g), SLIDE_MPP, tumor, TUMOR_MPP)
    expected_mean = (sides * s + diags * s * math.sqrt(2)) / (sides + diags)
    assert f["arch_delaunay_edge_mean"] == pytest.approx(expected_mean)
    assert f["arch_delaunay_edge_min"] == pytest.approx(s)
    assert f["arch_delaunay_edge_max"] == pytest.approx(s * math.sqrt(2))
    assert f["arch_voronoi_area_mean"] == pytest.approx(s * s / 1e6)
    assert f["arch_voronoi_area_cv"] == pytest.approx(0.0, abs=1e-9) and f["arch_voronoi_disorder"] == pytest.approx(0.0, abs=1e-9)
    assert f["arch_nn_mean"] == pytest.approx(s) and f["arch_nn_std"] == pytest.approx(0.0, abs=1e-9)
    assert f["arch_nn2_mean"] == pytest.approx(s)
    assert f["arch_frac_nn_lt_50um"] == 0
    # A lattice is more regular than random: Clark-Evans ratio 100 µm / (0.5 / sqrt(100 per mm²)) = 2.
    assert f["arch_clark_evans"] == pytest.approx(2.0)
    assert f["arch_hull_area_mm2"] == pytest.approx(((n - 1) * s / 1000) ** 2)
    assert all(f[x.name] == 0 for x in ARCH_FLAGS)


def test_hotspot_finds_a_planted_cluster(rng):
    background = rng.uniform(0, 10000, (100, 2))  # 1 per mm² over 10 x 10 mm
    centre = np.array([3000.0, 7000.0])
    ang, rad = rng.uniform(0, 2 * np.pi, 30), 150 * np.sqrt(rng.uniform(0, 1, 30))
    cluster = centre + np.c_[rad * np.cos(ang), rad * np.sin(ang)]
    pts = np.r_[background, cluster]
    count, origin = hotspot(pts, (10000, 10000), math.sqrt(0.2) * 1000)
    side = math.sqrt(0.2) * 1000
    assert (origin <= centre).all() and (origin + side >= centre).all()
    # The densest HPF holds the cluster, plus at most a few background points (0.2 per HPF).
    assert 30 <= count <= 34
    tumor = _square_tumor(10.0, 0.0)
    f = arch_features(_l0(pts), SLIDE_MPP, tumor, TUMOR_MPP)
    assert f["arch_hotspot_1hpf_count"] == count
    assert f["arch_hotspot_1hpf_density_per_mm2"] == pytest.approx(count / 0.2)
    assert f["arch_hotspot_10hpf_count"] >= count
    assert f["arch_hotspot_1hpf_ratio"] == pytest.approx((count / 0.2) / (130 / 100))
    # Brute force over all window positions on the same quarter-side lattice agrees.
    step = side / 4
    best = max(
        int(np.sum((pts[:, 0] >= i * step) & (pts[:, 0] < i * step + 4 * step) & (pts[:, 1] >= j * step) & (pts[:, 1] < j * step + 4 * step)))
        for i in range(0, int(10000 / step)) for j in range(0, int(10000 / step))
    )
    assert count == best


def test_grid_statistics_of_one_crowded_tile():
    tumor = _square_tumor(4.0, 0.0)  # tiles of 447 µm: 8 x 8 full tiles + partial edges
    pts = np.full((20, 2), 100.0)  # all in tile (0, 0)
    f = arch_features(_l0(pts + np.arange(20)[:, None]), SLIDE_MPP, tumor, TUMOR_MPP)
    n_tiles = f["arch_grid_n_tiles"]
    assert n_tiles >= 64
    assert f["arch_grid_sparsity"] == pytest.approx((n_tiles - 1) / n_tiles)
    assert f["arch_grid_count_max"] == 20 and f["arch_grid_entropy"] == 0
    assert f["arch_grid_gini"] == pytest.approx(1 - 1 / n_tiles)
    counts = np.zeros(int(n_tiles))
    counts[0] = 20
    assert f["arch_grid_count_skewness"] == pytest.approx(stats.skew(counts))
    assert f["arch_grid_count_kurtosis"] == pytest.approx(stats.kurtosis(counts))


def test_heatmap_moments_are_additive_and_give_scipy_moments(rng):
    a, b = rng.beta(2, 5, (30, 40)), rng.beta(2, 5, (10, 40))
    mask = rng.random((40, 40)) < 0.7
    both = np.r_[a, b]
    np.testing.assert_allclose(heatmap_moments(a, mask[:30]) + heatmap_moments(b, mask[30:]), heatmap_moments(both, mask))
    v = both[mask]
    f = heatmap_features(heatmap_moments(both, mask))
    assert f["arch_heat_mean"] == pytest.approx(v.mean())
    assert f["arch_heat_std"] == pytest.approx(v.std())
    assert f["arch_heat_skewness"] == pytest.approx(stats.skew(v), rel=1e-6)
    assert f["arch_heat_kurtosis"] == pytest.approx(stats.kurtosis(v), rel=1e-6)
    hist = np.histogram(v, bins=HEAT_BINS, range=(0, 1))[0]
    assert f["arch_heat_entropy"] == pytest.approx(stats.entropy(hist, base=2))
    nan = both.copy()
    nan[0, 0] = np.nan
    assert heatmap_moments(nan)[0] == both.size - 1


@pytest.mark.parametrize("pts", [np.zeros((0, 2)), np.array([[500.0, 500.0]]), np.array([[0.0, 0], [100, 100], [200, 200]])])
def test_few_points_or_no_tumor_give_finite_values_and_flags(pts):
    for tumor in (_square_tumor(2.0), np.zeros((20, 20), bool)):
        f = arch_features(_l0(pts), SLIDE_MPP, tumor, TUMOR_MPP, heat_moments=heatmap_moments(np.zeros((3, 3))))
        assert all(math.isfinite(v) for v in f.values())
        assert f["arch_nn_missing"] == (len(pts) < 2)
        assert f["arch_delaunay_missing"] == 1  # < 3 points or collinear
        assert f["arch_voronoi_missing"] == 1
        assert f["arch_tumor_missing"] == (not tumor.any())
        assert f["arch_n_mitoses"] == len(pts)
