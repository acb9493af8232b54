"""Tumor localization features from a tumor probability heatmap and a tissue mask.

The heatmap is thresholded (default 0.5) inside tissue; connected tumor regions (8-connectivity)
smaller than ``min_region_mm2`` are dropped as speckle, and what remains is *the tumor mask*:
every area, shape and location feature below is computed on it. Pixel ``(r, c)`` of a raster at
``mpp`` µm/px covers ``[c * mpp, (c + 1) * mpp)`` µm horizontally from the slide origin (and the
same vertically), which is how rasters of different resolutions are aligned.

A slide without tumor gets zeros for every feature and ``tumor_missing = 1``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from tupac.errors import FeatureError
from tupac.features.dictionary import Feature

__all__ = ["TUMOR_FEATURES", "TUMOR_FLAGS", "tumor_features", "tumor_mask", "resample_nearest"]

_G = "tumor"
TUMOR_FEATURES: tuple[Feature, ...] = (
    Feature("tumor_area_mm2", _G, "mm2", "Area of the tumor mask (heatmap >= threshold inside tissue, speckle removed)."),
    Feature("tissue_area_mm2", _G, "mm2", "Area of the tissue mask."),
    Feature("tumor_tissue_fraction", _G, "fraction", "Tumor area / tissue area (0 when there is no tissue)."),
    Feature("tumor_n_regions", _G, "count", "Number of connected tumor regions (8-connectivity) after speckle removal."),
    Feature("tumor_region1_area_mm2", _G, "mm2", "Area of the largest tumor region."),
    Feature("tumor_region2_area_mm2", _G, "mm2", "Area of the second largest tumor region (0 if none)."),
    Feature("tumor_region3_area_mm2", _G, "mm2", "Area of the third largest tumor region (0 if none)."),
    Feature("tumor_largest_fraction", _G, "fraction", "Largest region area / total tumor area."),
    Feature("tumor_largest_solidity", _G, "1", "Solidity (area / convex hull area) of the largest region."),
    Feature("tumor_largest_eccentricity", _G, "1", "Eccentricity of the ellipse with the largest region's second moments."),
    Feature("tumor_largest_perimeter_mm", _G, "mm", "Perimeter of the largest region (Crofton estimate, within 1% for a disk)."),
    Feature("tumor_largest_perimeter_per_area", _G, "1/mm", "Perimeter / area of the largest region (2/R for a disk)."),
    Feature("tumor_bbox_width_mm", _G, "mm", "Width of the bounding box of all tumor."),
    Feature("tumor_bbox_height_mm", _G, "mm", "Height of the bounding box of all tumor."),
    Feature("tumor_bbox_diagonal_mm", _G, "mm", "Diagonal of the bounding box of all tumor (overall extent)."),
    Feature("tumor_bbox_fill", _G, "fraction", "Tumor area / bounding-box area (how compact the tumor is)."),
    Feature("tumor_centroid_offset_mm", _G, "mm", "Distance from the tumor centroid to the tissue centroid."),
    Feature(
        "tumor_region_centroid_spread_mm", _G, "mm",
        "Area-weighted RMS distance of the region centroids from the tumor centroid (0 for one region).",
    ),
    Feature("tumor_radius_of_gyration_mm", _G, "mm", "RMS distance of tumor pixels from the tumor centroid."),
    Feature("tumor_prob_mean", _G, "probability", "Mean heatmap value inside the tumor mask."),
    Feature("tumor_prob_p10", _G, "probability", "10th percentile of the heatmap inside the tumor mask."),
    Feature("tumor_prob_p50", _G, "probability", "Median of the heatmap inside the tumor mask."),
    Feature("tumor_prob_p90", _G, "probability", "90th percentile of the heatmap inside the tumor mask."),
    Feature("tumor_prob_mean_tissue", _G, "probability", "Mean heatmap value over the whole tissue mask."),
)
TUMOR_FLAGS: tuple[Feature, ...] = (
    Feature("tumor_missing", "flags", "flag", "1 when the slide has no tumor: every tumor_* feature is then 0."),
)


def resample_nearest(mask: np.ndarray, from_mpp: float, to_mpp: float, shape: tuple[int, int]) -> np.ndarray:
    """Resample a raster to another resolution by nearest neighbour (pixel centres).

    Parameters
    ----------
    mask : ndarray, shape (h, w)
        Raster at ``from_mpp`` µm/px; any dtype.
    from_mpp, to_mpp : float
        Source and target resolutions in µm/px.
    shape : (rows, cols)
        Shape of the target raster.

    Returns
    -------
    ndarray, shape ``shape``, dtype of ``mask``
        Target pixels whose centre falls outside the source get the nearest edge value.
    """
    rows = np.clip(((np.arange(shape[0]) + 0.5) * to_mpp / from_mpp).astype(np.int64), 0, mask.shape[0] - 1)
    cols = np.clip(((np.arange(shape[1]) + 0.5) * to_mpp / from_mpp).astype(np.int64), 0, mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def _as_tissue(tissue: np.ndarray | None, tissue_mpp: float | None, prob: np.ndarray, mpp: float) -> np.ndarray:
    if tissue is None:
        # No tissue mask: every pixel the heatmap covers (finite) counts as tissue.
        return np.isfinite(prob)
    tissue = np.asarray(tissue, dtype=bool)
    if tissue.ndim != 2:
        raise FeatureError(f"tissue mask must be 2-D, got shape {tissue.shape}")
    if tissue_mpp is None or (math.isclose(tissue_mpp, mpp) and tissue.shape == prob.shape):
        if tissue.shape != prob.shape:
            raise FeatureError(f"tissue mask {tissue.shape} and heatmap {prob.shape} differ; pass tissue_mpp")
        return tissue
    return resample_nearest(tissue, tissue_mpp, mpp, prob.shape)


def tumor_mask(
    prob: np.ndarray, threshold: float = 0.5, tissue: np.ndarray | None = None, min_region_px: float = 0.0
) -> tuple[np.ndarray, int]:
    """Threshold a tumor heatmap inside tissue and drop small regions.

    Parameters
    ----------
    prob : ndarray of float, shape (h, w)
        Tumor probability; NaN counts as not tumor.
    threshold : float
        Pixels with ``prob >= threshold`` are tumor.
    tissue : ndarray of bool, shape (h, w), optional
        Tumor outside tissue is ignored.
    min_region_px : float
        Regions with fewer pixels are dropped.

    Returns
    -------
    labels : ndarray of int32, shape (h, w)
        0 background, regions ``1..n`` numbered by decreasing area (ties by first pixel).
    n : int
        Number of regions.
    """
    with np.errstate(invalid="ignore"):
        mask = np.asarray(prob) >= threshold
    if tissue is not None:
        mask &= tissue
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return labels.astype(np.int32), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = np.flatnonzero(sizes >= max(min_region_px, 1))
    order = keep[np.argsort(-sizes[keep], kind="stable")]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[order + 1] = np.arange(1, len(order) + 1, dtype=np.int32)
    return relabel[labels], len(order)


def _largest_shape(labels: np.ndarray, mpp: float) -> tuple[float, float, float]:
    """Solidity, eccentricity and perimeter (µm) of region 1, on its padded crop."""
    from skimage.measure import regionprops

    sl = ndi.find_objects(labels == 1, max_label=1)[0]
    crop = np.pad(labels[sl] == 1, 1).astype(np.uint8)
    p = regionprops(crop)[0]
    return float(p.solidity), float(p.eccentricity), float(p.perimeter_crofton) * mpp


def _shape_features(labels: np.ndarray, n: int, tissue: np.ndarray, mpp: float) -> dict[str, float]:
    px_mm2 = (mpp / 1000.0) ** 2
    mm = mpp / 1000.0
    rr, cc = np.nonzero(labels)
    lab = labels[rr, cc]
    sizes = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    area = sizes.sum() * px_mm2
    # Pixel centres in mm.
    y, x = (rr + 0.5) * mm, (cc + 0.5) * mm
    cy, cx = y.mean(), x.mean()
    ty, tx = np.nonzero(tissue)
    tcy, tcx = (ty.mean() + 0.5) * mm, (tx.mean() + 0.5) * mm
    ry = np.bincount(lab, weights=y, minlength=n + 1)[1:] / sizes
    rx = np.bincount(lab, weights=x, minlength=n + 1)[1:] / sizes
    w = sizes / sizes.sum()
    bw = (cc.max() - cc.min() + 1) * mm
    bh = (rr.max() - rr.min() + 1) * mm
    solidity, ecc, perim_um = _largest_shape(labels, mpp)
    top = np.zeros(3)
    top[: min(3, n)] = sizes[:3] * px_mm2
    return {
        "tumor_area_mm2": area,
        "tumor_n_regions": float(n),
        "tumor_region1_area_mm2": top[0],
        "tumor_region2_area_mm2": top[1],
        "tumor_region3_area_mm2": top[2],
        "tumor_largest_fraction": sizes[0] / sizes.sum(),
        "tumor_largest_solidity": solidity,
        "tumor_largest_eccentricity": ecc,
        "tumor_largest_perimeter_mm": perim_um / 1000.0,
        "tumor_largest_perimeter_per_area": (perim_um / 1000.0) / (sizes[0] * px_mm2),
        "tumor_bbox_width_mm": bw,
        "tumor_bbox_height_mm": bh,
        "tumor_bbox_diagonal_mm": math.hypot(bw, bh),
        "tumor_bbox_fill": area / (bw * bh),
        "tumor_centroid_offset_mm": math.hypot(cy - tcy, cx - tcx),
        "tumor_region_centroid_spread_mm": math.sqrt(float(np.sum(w * ((ry - cy) ** 2 + (rx - cx) ** 2)))),
        "tumor_radius_of_gyration_mm": math.sqrt(float(np.mean((y - cy) ** 2 + (x - cx) ** 2))),
    }


def tumor_features(
    prob: np.ndarray,
    mpp: float,
    tissue: np.ndarray | None = None,
    tissue_mpp: float | None = None,
    *,
    threshold: float = 0.5,
    min_region_mm2: float = 0.01,
    return_mask: bool = False,
) -> dict[str, float] | tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Tumor localization features of one slide.

    Parameters
    ----------
    prob : ndarray of float, shape (h, w)
        Tumor probability heatmap in [0, 1] at ``mpp`` µm/px; NaN means not computed (not tumor,
        and not tissue when ``tissue`` is None).
    mpp : float
        Heatmap resolution in µm/px.
    tissue : ndarray of bool, shape (ht, wt), optional
        Tissue mask; resampled to the heatmap grid (nearest) when ``tissue_mpp`` differs. None: every
        finite heatmap pixel is tissue.
    tissue_mpp : float, optional
        Resolution of ``tissue`` in µm/px (default: the heatmap's, shapes must then agree).
    threshold : float
        Tumor where ``prob >= threshold``.
    min_region_mm2 : float
        Regions smaller than this are speckle and dropped (0.01 mm² = a 100 µm square).
    return_mask : bool
        Also return the tumor mask and the tissue mask on the heatmap grid (bool, shape (h, w)), for
        the fringe and architectural features.

    Returns
    -------
    dict of str -> float
        The :data:`TUMOR_FEATURES` plus the ``tumor_missing`` flag; all finite.
    tumor, tissue : ndarray of bool, shape (h, w)
        Only with ``return_mask``.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise FeatureError(f"tumor heatmap must be 2-D, got shape {prob.shape}")
    if not (mpp > 0):
        raise FeatureError(f"heatmap mpp must be positive, got {mpp}")
    tissue_b = _as_tissue(tissue, tissue_mpp, prob, mpp)
    px_mm2 = (mpp / 1000.0) ** 2
    labels, n = tumor_mask(prob, threshold, tissue_b, min_region_mm2 / px_mm2)
    tissue_area = float(tissue_b.sum()) * px_mm2
    out = dict.fromkeys((f.name for f in TUMOR_FEATURES), 0.0)
    out["tissue_area_mm2"] = tissue_area
    in_tissue = prob[tissue_b]
    in_tissue = in_tissue[np.isfinite(in_tissue)]
    out["tumor_prob_mean_tissue"] = float(in_tissue.mean()) if in_tissue.size else 0.0
    out["tumor_missing"] = 1.0 if n == 0 else 0.0
    if n > 0:
        _fill_tumor(out, prob, labels, n, tissue_b, tissue_area, mpp)
    out = {k: float(v) for k, v in out.items()}
    return (out, labels > 0, tissue_b) if return_mask else out


def _fill_tumor(out: dict, prob, labels, n, tissue_b, tissue_area, mpp) -> None:
    out.update(_shape_features(labels, n, tissue_b, mpp))
    out["tumor_tissue_fraction"] = out["tumor_area_mm2"] / tissue_area if tissue_area > 0 else 0.0
    inside = prob[labels > 0].astype(np.float64)
    p10, p50, p90 = np.percentile(inside, [10, 50, 90])
    out.update(tumor_prob_mean=float(inside.mean()), tumor_prob_p10=p10, tumor_prob_p50=p50, tumor_prob_p90=p90)
