"""Architectural mitosis features: how the detected mitoses are distributed over the whole slide.

Sixty features (:data:`ARCH_FEATURES`) from the detections (level-0 pixels), the tumor mask and the
mitosis heatmap:

- counts and densities (per mm² of tumor and of tissue), detection confidence;
- hotspots as pathologists count them: the densest window of one high-power field (0.2 mm²) and of
  ten HPF (2 mm²). Windows are squares of that area sliding in steps of a quarter side, evaluated for
  every position at once with an integral image over a count grid;
- a grid of HPF-sized tiles over the tumor: sparsity, dispersion, skewness, kurtosis, entropy, Gini and
  Moran's I of the per-tile counts (second-order statistics of the spatial distribution);
- nearest-neighbour distances, Delaunay edge lengths, Voronoi cell areas (scipy.spatial);
- spread (radius of gyration, convex hull, anisotropy);
- second-order statistics of the mitosis heatmap inside the tumor (mean, std, skewness, kurtosis,
  entropy), from additive per-block moments so Dask can compute them chunk by chunk
  (:func:`heatmap_moments`, :func:`heatmap_features`).

Undefined values are 0 with a flag: ``arch_tumor_missing`` (no tumor: densities, grid and heatmap
features), ``arch_nn_missing`` (< 2 mitoses), ``arch_delaunay_missing`` (< 3 points or collinear),
``arch_voronoi_missing`` (no bounded Voronoi cell inside the points' bounding box).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import spatial

from tupac.errors import FeatureError
from tupac.features.dictionary import Feature, safe_stats

__all__ = [
    "ARCH_FEATURES",
    "ARCH_FLAGS",
    "HEAT_BINS",
    "arch_features",
    "heatmap_moments",
    "heatmap_features",
    "hotspot",
    "delaunay_edges",
    "voronoi_areas",
]

HPF_MM2 = 0.2
"""Area of one high-power field (40x objective, 0.5 mm field diameter) in mm²."""
HEAT_BINS = 64
"""Histogram bins over [0, 1] used for the heatmap entropy."""

_G = "mitosis_arch"
_F = [
    ("arch_n_mitoses", "count", "Detected mitoses on the slide."),
    ("arch_n_in_tumor", "count", "Detected mitoses inside the tumor mask."),
    ("arch_frac_in_tumor", "fraction", "Fraction of detections inside the tumor mask (0 without detections)."),
    ("arch_density_tumor_per_mm2", "1/mm2", "Mitoses in tumor per mm² of tumor."),
    ("arch_density_tissue_per_mm2", "1/mm2", "Mitoses per mm² of tissue."),
    ("arch_prob_mean", "probability", "Mean detection probability."),
    ("arch_prob_std", "probability", "Std of detection probability."),
    ("arch_n_high_conf", "count", "Detections with probability >= 0.9."),
    ("arch_hotspot_1hpf_count", "count", "Mitoses in the densest square window of one HPF (0.2 mm²)."),
    ("arch_hotspot_1hpf_density_per_mm2", "1/mm2", "Density in the densest one-HPF window."),
    ("arch_hotspot_10hpf_count", "count", "Mitoses in the densest square window of ten HPF (2 mm²)."),
    ("arch_hotspot_10hpf_density_per_mm2", "1/mm2", "Density in the densest ten-HPF window."),
    ("arch_hotspot_1hpf_ratio", "1", "One-HPF hotspot density / tumor density (0 when the tumor density is 0)."),
    ("arch_hotspot_10hpf_ratio", "1", "Ten-HPF hotspot density / tumor density (0 when the tumor density is 0)."),
    ("arch_grid_n_tiles", "count", "HPF-sized tiles (0.2 mm² squares) that are at least half tumor."),
    ("arch_grid_sparsity", "fraction", "Fraction of tumor tiles without a mitosis."),
    ("arch_grid_count_mean", "count", "Mean mitoses per tumor tile."),
    ("arch_grid_count_std", "count", "Std of mitoses per tumor tile."),
    ("arch_grid_count_max", "count", "Most mitoses in one tumor tile."),
    ("arch_grid_dispersion_index", "1", "Variance / mean of the tile counts (1 for a Poisson process; 0 when the mean is 0)."),
    ("arch_grid_count_skewness", "1", "Skewness of the tile counts (0 when constant)."),
    ("arch_grid_count_kurtosis", "1", "Excess kurtosis of the tile counts (0 when constant)."),
    ("arch_grid_entropy", "bits", "Shannon entropy of the mitoses' distribution over tumor tiles."),
    ("arch_grid_entropy_norm", "fraction", "Grid entropy / log2(number of tiles) (1: evenly spread)."),
    ("arch_grid_gini", "fraction", "Gini coefficient of the tile counts (0: even, 1: all in one tile)."),
    ("arch_grid_morans_i", "1", "Moran's I of the tile counts, rook neighbours (0 when undefined)."),
    ("arch_grid_count_p90", "count", "90th percentile of the tile counts."),
    ("arch_nn_mean", "um", "Mean nearest-neighbour distance between mitoses."),
    ("arch_nn_std", "um", "Std of nearest-neighbour distances."),
    ("arch_nn_median", "um", "Median nearest-neighbour distance."),
    ("arch_nn_min", "um", "Smallest nearest-neighbour distance."),
    ("arch_nn_max", "um", "Largest nearest-neighbour distance."),
    ("arch_nn_cv", "1", "Coefficient of variation of nearest-neighbour distances."),
    ("arch_clark_evans", "1", "Clark-Evans ratio: mean NN distance / its expectation under CSR in the tumor (<1 clustered)."),
    ("arch_frac_nn_lt_50um", "fraction", "Fraction of mitoses with another within 50 µm."),
    ("arch_nn2_mean", "um", "Mean distance to the second nearest mitosis (first nearest when only two)."),
    ("arch_frac_nn_gt_500um", "fraction", "Fraction of isolated mitoses (none other within 500 µm)."),
    ("arch_delaunay_edge_mean", "um", "Mean Delaunay edge length."),
    ("arch_delaunay_edge_std", "um", "Std of Delaunay edge lengths."),
    ("arch_delaunay_edge_median", "um", "Median Delaunay edge length."),
    ("arch_delaunay_edge_min", "um", "Shortest Delaunay edge."),
    ("arch_delaunay_edge_max", "um", "Longest Delaunay edge."),
    ("arch_delaunay_edge_cv", "1", "Coefficient of variation of Delaunay edge lengths."),
    ("arch_delaunay_disorder", "1", "Edge-length disorder 1 - 1 / (1 + std / mean)."),
    ("arch_delaunay_tri_area_mean", "mm2", "Mean Delaunay triangle area."),
    ("arch_voronoi_area_mean", "mm2", "Mean area of the bounded Voronoi cells inside the points' bounding box."),
    ("arch_voronoi_area_std", "mm2", "Std of Voronoi cell areas."),
    ("arch_voronoi_area_median", "mm2", "Median Voronoi cell area."),
    ("arch_voronoi_area_min", "mm2", "Smallest Voronoi cell area."),
    ("arch_voronoi_area_max", "mm2", "Largest Voronoi cell area."),
    ("arch_voronoi_area_cv", "1", "Coefficient of variation of Voronoi cell areas."),
    ("arch_voronoi_disorder", "1", "Area disorder 1 - 1 / (1 + std / mean)."),
    ("arch_radius_of_gyration_mm", "mm", "RMS distance of the mitoses from their centroid."),
    ("arch_hull_area_mm2", "mm2", "Area of the convex hull of the mitoses (0 for < 3 or collinear points)."),
    ("arch_spatial_anisotropy", "fraction", "1 - smallest / largest eigenvalue of the points' covariance."),
    ("arch_heat_mean", "probability", "Mean mitosis heatmap value inside the tumor."),
    ("arch_heat_std", "probability", "Std of the mitosis heatmap inside the tumor."),
    ("arch_heat_skewness", "1", "Skewness of the mitosis heatmap inside the tumor (0 when constant)."),
    ("arch_heat_kurtosis", "1", "Excess kurtosis of the mitosis heatmap inside the tumor (0 when constant)."),
    ("arch_heat_entropy", "bits", f"Entropy of the {HEAT_BINS}-bin histogram of the heatmap inside the tumor."),
]
ARCH_FEATURES: tuple[Feature, ...] = tuple(Feature(n, _G, u, d) for n, u, d in _F)
ARCH_FLAGS: tuple[Feature, ...] = (
    Feature("arch_tumor_missing", "flags", "flag", "1 when there is no tumor: densities, grid and heatmap features are 0."),
    Feature("arch_nn_missing", "flags", "flag", "1 when fewer than 2 mitoses: neighbour features are 0."),
    Feature("arch_delaunay_missing", "flags", "flag", "1 when fewer than 3 non-collinear mitoses: Delaunay features are 0."),
    Feature("arch_voronoi_missing", "flags", "flag", "1 when no bounded Voronoi cell: Voronoi features are 0."),
)


# ---------------------------------------------------------------- heatmap moments (additive per block)


def heatmap_moments(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Additive summary of heatmap values: ``[n, sum x, sum x², sum x³, sum x⁴, hist(HEAT_BINS)]``.

    Summaries of blocks add up to the summary of their union, which is what lets Dask compute them
    chunk by chunk. Non-finite values are ignored.

    Parameters
    ----------
    values : ndarray of float
        Heatmap values (any shape).
    weights : ndarray of bool, same shape, optional
        Only values where True count (e.g. inside the tumor).

    Returns
    -------
    ndarray of float64, shape (5 + HEAT_BINS,)
    """
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v)
    if weights is not None:
        keep &= np.asarray(weights, dtype=bool)
    v = v[keep]
    out = np.empty(5 + HEAT_BINS)
    out[0] = v.size
    out[1:5] = [np.sum(v**k) for k in range(1, 5)]
    out[5:] = np.bincount(np.clip((v * HEAT_BINS).astype(np.int64), 0, HEAT_BINS - 1), minlength=HEAT_BINS)
    return out


def _skew_kurt(m: float, m2: float, m3: float, m4: float) -> tuple[float, float, float]:
    """std, skewness, excess kurtosis from raw moments ``E[x^k]``; skew/kurt 0 when (near) constant."""
    var = max(m2 - m * m, 0.0)
    if var < 1e-12:
        return math.sqrt(var), 0.0, 0.0
    mu3 = m3 - 3 * m * m2 + 2 * m**3
    mu4 = m4 - 4 * m * m3 + 6 * m * m * m2 - 3 * m**4
    return math.sqrt(var), mu3 / var**1.5, mu4 / var**2 - 3.0


def _entropy_bits(counts: np.ndarray) -> float:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * np.log2(p)).sum())


def heatmap_features(moments: np.ndarray) -> dict[str, float]:
    """The five ``arch_heat_*`` features from a :func:`heatmap_moments` summary (zeros when empty)."""
    n = moments[0]
    if n <= 0:
        return dict.fromkeys(("arch_heat_mean", "arch_heat_std", "arch_heat_skewness", "arch_heat_kurtosis", "arch_heat_entropy"), 0.0)
    m, m2, m3, m4 = moments[1:5] / n
    std, skew, kurt = _skew_kurt(m, m2, m3, m4)
    return {
        "arch_heat_mean": float(m),
        "arch_heat_std": std,
        "arch_heat_skewness": skew,
        "arch_heat_kurtosis": kurt,
        "arch_heat_entropy": _entropy_bits(moments[5:]),
    }


# ---------------------------------------------------------------- spatial helpers


def _count_grid(xy_um: np.ndarray, cell_um: float, shape: tuple[int, int]) -> np.ndarray:
    """Points per square cell (rows = y); points outside the grid are ignored."""
    idx = np.floor(xy_um / cell_um).astype(np.int64)
    ok = (idx[:, 0] >= 0) & (idx[:, 1] >= 0) & (idx[:, 0] < shape[1]) & (idx[:, 1] < shape[0])
    flat = idx[ok, 1] * shape[1] + idx[ok, 0]
    return np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)


def hotspot(xy_um: np.ndarray, extent_um: tuple[float, float], window_um: float, steps: int = 4) -> tuple[int, np.ndarray]:
    """The square window of side ``window_um`` holding the most points.

    Windows slide in steps of ``window_um / steps`` over the extent; all positions are evaluated
    at once from the integral image of a count grid of that step.

    Parameters
    ----------
    xy_um : ndarray of float, shape (n, 2)
        Points ``(x, y)`` in µm from the slide origin.
    extent_um : (width, height)
        Extent of the slide in µm.
    window_um : float
        Window side in µm (sqrt(0.2 mm²) = 447 µm for one HPF).
    steps : int
        Sub-steps per window side.

    Returns
    -------
    count : int
        Points in the densest window (0 without points).
    origin_um : ndarray of float64, shape (2,)
        ``(x, y)`` of its top-left corner in µm.
    """
    cell = window_um / steps
    cols = max(int(math.ceil(extent_um[0] / cell)), steps)
    rows = max(int(math.ceil(extent_um[1] / cell)), steps)
    grid = _count_grid(np.asarray(xy_um, dtype=np.float64).reshape(-1, 2), cell, (rows, cols))
    ii = np.pad(grid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = ii[steps:, steps:] - ii[:-steps, steps:] - ii[steps:, :-steps] + ii[:-steps, :-steps]
    r, c = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(sums[r, c]), np.array([c * cell, r * cell])


def delaunay_edges(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique Delaunay edges ``(m, 2)`` (point indices) and triangle areas; empty when degenerate."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 3:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    try:
        tri = spatial.Delaunay(xy)
    except spatial.QhullError:  # all points collinear or coincident
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    s = tri.simplices
    edges = np.sort(np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]]), axis=1)
    a, b, c = xy[s[:, 0]], xy[s[:, 1]], xy[s[:, 2]]
    areas = 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]))
    return np.unique(edges, axis=0), areas


def voronoi_areas(xy: np.ndarray) -> np.ndarray:
    """Areas of the bounded Voronoi cells whose vertices lie inside the points' bounding box.

    Cells on the convex hull are unbounded or reach far outside the sampled region; they are
    dropped rather than clipped, as is usual for Voronoi features of nuclei and mitoses.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 4:
        return np.zeros(0)
    try:
        vor = spatial.Voronoi(xy)
    except spatial.QhullError:
        return np.zeros(0)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    v = vor.vertices
    inside = np.all((v >= lo - 1e-9) & (v <= hi + 1e-9), axis=1)
    areas = []
    for region_index in vor.point_region:
        region = vor.regions[region_index]
        if not region or -1 in region or not inside[region].all():
            continue
        p = v[region]
        areas.append(0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))))
    return np.asarray(areas)


def _gini(x: np.ndarray) -> float:
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.sum(np.arange(1, n + 1) * x) / (n * total)) - (n + 1) / n)


def _morans_i(grid: np.ndarray, valid: np.ndarray) -> float:
    """Moran's I of ``grid`` over ``valid`` cells with rook (4-neighbour) weights."""
    x = np.where(valid, grid - grid[valid].mean(), 0.0) if valid.any() else grid * 0.0
    denom = float((x[valid] ** 2).sum())
    pairs_h = valid[:, 1:] & valid[:, :-1]
    pairs_v = valid[1:, :] & valid[:-1, :]
    w = 2.0 * (pairs_h.sum() + pairs_v.sum())
    if denom == 0 or w == 0:
        return 0.0
    num = 2.0 * ((x[:, 1:] * x[:, :-1])[pairs_h].sum() + (x[1:, :] * x[:-1, :])[pairs_v].sum())
    return float(valid.sum() / w * num / denom)


def _tile_tumor_fraction(tumor: np.ndarray, tumor_mpp: float, tile_um: float, shape: tuple[int, int]) -> np.ndarray:
    """Fraction of each tile (rows, cols of side ``tile_um``) covered by tumor pixels (by pixel centre)."""
    rr, cc = np.nonzero(tumor)
    tr = ((rr + 0.5) * tumor_mpp / tile_um).astype(np.int64)
    tc = ((cc + 0.5) * tumor_mpp / tile_um).astype(np.int64)
    ok = (tr < shape[0]) & (tc < shape[1])
    counts = np.bincount(tr[ok] * shape[1] + tc[ok], minlength=shape[0] * shape[1]).reshape(shape)
    return counts * (tumor_mpp / tile_um) ** 2


def _grid_features(xy_um: np.ndarray, tumor: np.ndarray, tumor_mpp: float, extent_um: tuple[float, float]) -> dict:
    tile = math.sqrt(HPF_MM2) * 1000.0
    shape = (max(1, math.ceil(extent_um[1] / tile)), max(1, math.ceil(extent_um[0] / tile)))
    frac = _tile_tumor_fraction(tumor, tumor_mpp, tile, shape)
    valid = frac >= 0.5
    if not valid.any():  # a tumor smaller than half an HPF everywhere: keep every tile it touches
        valid = frac > 0
    counts_grid = _count_grid(xy_um, tile, shape).astype(np.float64)
    c = counts_grid[valid]
    mean = float(c.mean())
    std, skew, kurt = _skew_kurt(mean, float(np.mean(c**2)), float(np.mean(c**3)), float(np.mean(c**4)))
    h = _entropy_bits(c)
    return {
        "arch_grid_n_tiles": float(valid.sum()),
        "arch_grid_sparsity": float(np.mean(c == 0)),
        "arch_grid_count_mean": mean,
        "arch_grid_count_std": std,
        "arch_grid_count_max": float(c.max()),
        "arch_grid_dispersion_index": std**2 / mean if mean > 0 else 0.0,
        "arch_grid_count_skewness": skew,
        "arch_grid_count_kurtosis": kurt,
        "arch_grid_entropy": h,
        "arch_grid_entropy_norm": h / math.log2(len(c)) if len(c) > 1 else 0.0,
        "arch_grid_gini": _gini(c),
        "arch_grid_morans_i": _morans_i(counts_grid, valid),
        "arch_grid_count_p90": float(np.percentile(c, 90)),
    }


def _nn_features(xy_um: np.ndarray, tumor_area_mm2: float) -> dict:
    tree = spatial.cKDTree(xy_um)
    k = min(3, len(xy_um))
    d, _ = tree.query(xy_um, k=k)
    nn, nn2 = d[:, 1], d[:, min(2, k - 1)]
    s = safe_stats(nn)
    density_um2 = len(xy_um) / (tumor_area_mm2 * 1e6) if tumor_area_mm2 > 0 else 0.0
    expected = 0.5 / math.sqrt(density_um2) if density_um2 > 0 else 0.0
    return {
        "arch_nn_mean": s["mean"],
        "arch_nn_std": s["std"],
        "arch_nn_median": s["median"],
        "arch_nn_min": s["min"],
        "arch_nn_max": s["max"],
        "arch_nn_cv": s["cv"],
        "arch_clark_evans": s["mean"] / expected if expected > 0 else 0.0,
        "arch_frac_nn_lt_50um": float(np.mean(nn < 50.0)),
        "arch_nn2_mean": float(nn2.mean()),
        "arch_frac_nn_gt_500um": float(np.mean(nn > 500.0)),
    }


def _stats_block(prefix: str, values: np.ndarray) -> dict:
    s = safe_stats(values)
    out = {f"{prefix}_{k}": s[k] for k in ("mean", "std", "median", "min", "max", "cv")}
    out[prefix.replace("_edge", "").replace("_area", "") + "_disorder"] = 1.0 - 1.0 / (1.0 + s["cv"])
    return out


def _spread_features(xy_um: np.ndarray) -> dict:
    c = xy_um - xy_um.mean(axis=0)
    rg = math.sqrt(float(np.mean((c**2).sum(axis=1)))) / 1000.0
    hull = 0.0
    if len(xy_um) >= 3:
        try:
            hull = spatial.ConvexHull(xy_um).volume / 1e6  # 2-D "volume" is the area
        except spatial.QhullError:
            hull = 0.0
    ev = np.linalg.eigvalsh(np.cov(c.T)) if len(xy_um) >= 2 else np.zeros(2)
    aniso = 1.0 - ev[0] / ev[1] if ev[1] > 0 else 0.0
    return {"arch_radius_of_gyration_mm": rg, "arch_hull_area_mm2": hull, "arch_spatial_anisotropy": float(aniso)}


def _checked_inputs(xy_l0: np.ndarray, slide_mpp: float, tumor: np.ndarray, tumor_mpp: float):
    """``(xy, tumor)``: detections as float64 (n, 2) level-0 px and the tumor mask as bool (h, w), validated."""
    xy = np.asarray(xy_l0, dtype=np.float64).reshape(-1, 2)
    tumor = np.asarray(tumor, dtype=bool)
    if tumor.ndim != 2:
        raise FeatureError(f"tumor mask must be 2-D, got shape {tumor.shape}")
    if slide_mpp <= 0 or tumor_mpp <= 0:
        raise FeatureError(f"resolutions must be positive, got slide {slide_mpp}, tumor {tumor_mpp}")
    if not np.isfinite(xy).all():
        raise FeatureError("detection coordinates contain NaN or Inf")
    return xy, tumor


def _count_features(xy_um: np.ndarray, tumor: np.ndarray, tumor_mpp: float, tumor_area: float,
                    tissue_area: float, prob: np.ndarray | None) -> dict:
    """Counts, densities (per mm²) and detection confidence of the mitoses at ``xy_um`` (n, 2) µm.

    A mitosis is in the tumor when the mask pixel under it (``tumor`` (h, w) at ``tumor_mpp`` µm/px)
    is set; points outside the mask's extent are outside the tumor.
    """
    n = len(xy_um)
    rc = np.floor(xy_um[:, ::-1] / tumor_mpp).astype(np.int64)
    ok = (rc >= 0).all(axis=1) & (rc[:, 0] < tumor.shape[0]) & (rc[:, 1] < tumor.shape[1])
    in_tumor = np.zeros(n, dtype=bool)
    in_tumor[ok] = tumor[rc[ok, 0], rc[ok, 1]]
    n_t = int(in_tumor.sum())
    out = dict(
        arch_n_mitoses=float(n),
        arch_n_in_tumor=float(n_t),
        arch_frac_in_tumor=n_t / n if n else 0.0,
        arch_density_tumor_per_mm2=n_t / tumor_area if tumor_area > 0 else 0.0,
        arch_density_tissue_per_mm2=n / tissue_area if tissue_area > 0 else 0.0,
    )
    if prob is not None and n:
        p = np.asarray(prob, dtype=np.float64).reshape(-1)
        out.update(arch_prob_mean=float(p.mean()), arch_prob_std=float(p.std()), arch_n_high_conf=float((p >= 0.9).sum()))
    return out


def _window_extent(xy_um: np.ndarray, slide_extent_um: tuple[float, float] | None, tumor_shape: tuple[int, int],
                   tumor_mpp: float) -> tuple[float, float]:
    """``(width, height)`` µm covered by the hotspot windows and the HPF grid.

    The slide's extent (default: the tumor mask's), grown so that every point of ``xy_um`` (n, 2) lies inside.
    """
    extent = slide_extent_um or (tumor_shape[1] * tumor_mpp, tumor_shape[0] * tumor_mpp)
    if len(xy_um):
        extent = (max(extent[0], float(xy_um[:, 0].max()) + 1), max(extent[1], float(xy_um[:, 1].max()) + 1))
    return extent


def _hotspot_features(xy_um: np.ndarray, extent: tuple[float, float], dens_t: float) -> dict:
    """Densest 1-HPF and 10-HPF windows: count, density per mm², and ratio to the tumor density ``dens_t``."""
    out = {}
    for k, area in (("1hpf", HPF_MM2), ("10hpf", 10 * HPF_MM2)):
        count, _ = hotspot(xy_um, extent, math.sqrt(area) * 1000.0)
        out[f"arch_hotspot_{k}_count"] = float(count)
        out[f"arch_hotspot_{k}_density_per_mm2"] = count / area
        out[f"arch_hotspot_{k}_ratio"] = (count / area) / dens_t if dens_t > 0 else 0.0
    return out


def _tessellation_features(xy_um: np.ndarray) -> dict:
    """Delaunay edge lengths (µm) and triangle areas, Voronoi cell areas (mm²), or their missing flags."""
    out = {}
    edges, tri_areas = delaunay_edges(xy_um)
    if len(edges):
        lengths = np.hypot(*(xy_um[edges[:, 0]] - xy_um[edges[:, 1]]).T)
        out.update(_stats_block("arch_delaunay_edge", lengths))
        out["arch_delaunay_tri_area_mean"] = float(tri_areas.mean()) / 1e6
    else:
        out["arch_delaunay_missing"] = 1.0
    areas = voronoi_areas(xy_um) / 1e6
    if len(areas):
        out.update(_stats_block("arch_voronoi_area", areas))
    else:
        out["arch_voronoi_missing"] = 1.0
    return out


# ---------------------------------------------------------------- the sixty features


def arch_features(
    xy_l0: np.ndarray, slide_mpp: float, tumor: np.ndarray, tumor_mpp: float, *,
    prob: np.ndarray | None = None, tissue_area_mm2: float | None = None,
    heat_moments: np.ndarray | None = None, slide_extent_um: tuple[float, float] | None = None,
) -> dict[str, float]:
    """The sixty architectural features and their flags for one slide.

    Parameters
    ----------
    xy_l0 : ndarray of float, shape (n, 2)
        Detected mitoses ``(x, y)`` in level-0 pixels (n may be 0).
    slide_mpp : float
        Level-0 resolution in µm/px.
    tumor : ndarray of bool, shape (h, w)
        Tumor mask at ``tumor_mpp`` µm/px, pixel ``(0, 0)`` at the slide origin.
    tumor_mpp : float
        Resolution of the tumor mask in µm/px.
    prob : ndarray of float, shape (n,), optional
        Detection probabilities (confidence features are 0 without them).
    tissue_area_mm2 : float, optional
        Tissue area for the tissue density (default: the tumor area).
    heat_moments : ndarray, shape (5 + HEAT_BINS,), optional
        :func:`heatmap_moments` of the mitosis heatmap inside the tumor (heatmap features are 0 without).
    slide_extent_um : (width, height), optional
        Extent of the slide in µm (default: the tumor mask's extent, grown to hold every point).

    Returns
    -------
    dict of str -> float
        :data:`ARCH_FEATURES` (sixty) and :data:`ARCH_FLAGS`, all finite.
    """
    xy, tumor = _checked_inputs(xy_l0, slide_mpp, tumor, tumor_mpp)
    xy_um = xy * slide_mpp
    n = len(xy_um)
    # Every name is present, 0.0 until computed, in dictionary order.
    out = dict.fromkeys((f.name for f in ARCH_FEATURES), 0.0)
    out.update(dict.fromkeys((f.name for f in ARCH_FLAGS), 0.0))

    tumor_area = float(tumor.sum()) * (tumor_mpp / 1000.0) ** 2
    tissue_area = tumor_area if tissue_area_mm2 is None else float(tissue_area_mm2)
    out.update(_count_features(xy_um, tumor, tumor_mpp, tumor_area, tissue_area, prob))
    extent = _window_extent(xy_um, slide_extent_um, tumor.shape, tumor_mpp)
    out.update(_hotspot_features(xy_um, extent, out["arch_density_tumor_per_mm2"]))
    if tumor_area > 0:
        out.update(_grid_features(xy_um, tumor, tumor_mpp, extent))
        if heat_moments is not None:
            out.update(heatmap_features(np.asarray(heat_moments, dtype=np.float64)))
    else:
        out["arch_tumor_missing"] = 1.0
    if n >= 2:
        out.update(_nn_features(xy_um, tumor_area))
        out.update(_spread_features(xy_um))
    else:
        out["arch_nn_missing"] = 1.0
    out.update(_tessellation_features(xy_um))
    return {k: float(v) for k, v in out.items()}
