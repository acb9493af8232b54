"""Fringe patches: where on a slide the biological mitosis features are measured.

The paper measures mitosis morphology on fifty 1000 x 1000 patches at 40x taken preferentially from
the fringes of the largest localized tumor regions (the invasive front, where proliferation is
highest). Here:

- the *largest regions* are the ``n_regions`` largest connected components of the tumor mask;
- their *boundary band* is the set of their pixels within ``band_um`` of non-tumor (default half a
  patch side, so that a patch centred in the band holds tumor and reaches its edge);
- patch centres are drawn at random (seeded) from the band, then, if the band cannot hold ``n``
  patches, from the interior of the largest regions, then from the other tumor regions;
- patches do not overlap (centres at least ``min_spacing_um`` apart, default one patch side) and hold
  at least ``min_tissue_fraction`` tissue; so a small tumor yields fewer than ``n`` patches.

Random order is made cheap by thinning the candidates to one per cell of half the spacing (chosen
at random) before the greedy spacing test, so the cost does not grow with the mask's pixel count
beyond one pass of numpy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from tupac.errors import FeatureError
from tupac.features.dictionary import Feature
from tupac.features.tumor import resample_nearest, tumor_mask
from tupac.geometry import MPP_40X

__all__ = ["FRINGE_FEATURES", "fringe_band", "fringe_patches", "fringe_summary"]

FRINGE_FEATURES: tuple[Feature, ...] = (
    Feature("fringe_n_patches", "fringe", "count", "Number of fringe patches selected (at most 50; fewer for small tumors)."),
    Feature("fringe_n_in_band", "fringe", "count", "Fringe patches whose centre lies in the boundary band."),
    Feature("fringe_band_area_mm2", "fringe", "mm2", "Area of the boundary band of the largest tumor regions."),
)


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise FeatureError(f"{name} must be a 2-D mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def fringe_band(
    tumor: np.ndarray, mpp: float, *, band_um: float = 125.0, n_regions: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """The boundary band and the interior of the largest tumor regions.

    Parameters
    ----------
    tumor : ndarray of bool, shape (h, w)
        Tumor mask at ``mpp`` µm/px.
    mpp : float
        Mask resolution in µm/px.
    band_um : float
        Width of the band, measured inward from the region boundary.
    n_regions : int
        How many of the largest regions (8-connectivity) count.

    Returns
    -------
    band, interior : ndarray of bool, shape (h, w)
        Pixels of the largest regions within ``band_um`` of non-tumor, and the rest of them.
    """
    tumor = _check_mask(tumor, "tumor mask")
    labels, _ = tumor_mask(tumor.astype(np.float32), 0.5)
    largest = (labels > 0) & (labels <= n_regions)
    # Distance (µm) from each tumor pixel to the nearest non-tumor pixel centre; boundary pixels get mpp.
    depth = ndi.distance_transform_edt(largest) * mpp
    band = largest & (depth <= band_um)
    return band, largest & ~band


def _tissue_fraction(tissue: np.ndarray, rc: np.ndarray, half_px: float) -> np.ndarray:
    """Fraction of tissue in the square of half side ``half_px`` around each ``(row, col)``."""
    ii = np.pad(np.cumsum(np.cumsum(tissue, axis=0, dtype=np.int64), axis=1), ((1, 0), (1, 0)))
    h, w = tissue.shape
    r0 = np.clip(np.round(rc[:, 0] + 0.5 - half_px).astype(np.int64), 0, h)
    r1 = np.clip(np.round(rc[:, 0] + 0.5 + half_px).astype(np.int64), 0, h)
    c0 = np.clip(np.round(rc[:, 1] + 0.5 - half_px).astype(np.int64), 0, w)
    c1 = np.clip(np.round(rc[:, 1] + 0.5 + half_px).astype(np.int64), 0, w)
    area = np.maximum((r1 - r0) * (c1 - c0), 1)
    inside = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
    # The window is nominally (2 * half_px)^2; a window cut by the raster edge counts the cut part as glass.
    return inside / np.maximum(area, (2 * half_px) ** 2)


def _thin(rc: np.ndarray, cell_px: float, rng: np.random.Generator) -> np.ndarray:
    """Shuffle candidates and keep one (random) per square cell of side ``cell_px``, in shuffled order."""
    rc = rc[rng.permutation(len(rc))]
    cell = np.floor(rc / max(cell_px, 1.0)).astype(np.int64)
    key = cell[:, 0] * (int(cell[:, 1].max(initial=0)) + 1) + cell[:, 1]
    _, first = np.unique(key, return_index=True)
    return rc[np.sort(first)]


def _tissue_on_mask(tumor: np.ndarray, tissue: np.ndarray | None, tissue_mpp: float | None,
                    mask_mpp: float) -> np.ndarray:
    """The tissue mask as bool on the tumor mask's grid (``tumor.shape`` at ``mask_mpp`` µm/px); all tissue if None."""
    if tissue is None:
        return np.ones_like(tumor)
    tissue_b = _check_mask(tissue, "tissue mask")
    if tissue_b.shape != tumor.shape or (tissue_mpp is not None and tissue_mpp != mask_mpp):
        tissue_b = resample_nearest(tissue_b, tissue_mpp or mask_mpp, mask_mpp, tumor.shape)
    return tissue_b


def _choose_centres(tiers: tuple[np.ndarray, ...], tissue: np.ndarray, half_px: float, min_tissue_fraction: float,
                    spacing_px: float, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``n`` patch centres ``(row, col)`` in mask pixels, greedily from each tier in turn.

    Parameters
    ----------
    tiers : tuple of ndarray of bool, shape (h, w)
        Candidate pixels, most wanted first (band, interior, other regions).
    tissue : ndarray of bool, shape (h, w)
        Tissue mask; a candidate's patch (half side ``half_px`` mask px) needs ``min_tissue_fraction`` of it.
    spacing_px : float
        Minimum distance between chosen centres, in mask px.
    rng : numpy.random.Generator
        Draws the random order of each tier's candidates (one permutation per non-empty tier).
    """
    chosen: list[np.ndarray] = []
    for tier in tiers:
        if len(chosen) >= n:
            break
        rc = np.argwhere(tier).astype(np.float64)
        if len(rc) == 0:
            continue
        rc = rc[_tissue_fraction(tissue, rc, half_px) >= min_tissue_fraction]
        if len(rc) == 0:
            continue
        for cand in _thin(rc, spacing_px / 2, rng):
            if chosen and np.min(np.hypot(*(np.asarray(chosen) - cand).T)) < spacing_px:
                continue
            chosen.append(cand)
            if len(chosen) >= n:
                break
    return chosen


def _origins_l0(chosen: list[np.ndarray], mask_mpp: float, slide_mpp: float, patch_um: float,
                slide_dimensions_l0: tuple[int, int] | None) -> np.ndarray:
    """Top-left ``(x, y)`` level-0 px (int64, shape (k, 2)) of patches of side ``patch_um`` µm centred on the
    mask pixels ``chosen`` ``(row, col)``, clipped to the slide when its dimensions are known."""
    centre_um = (np.asarray(chosen)[:, ::-1] + 0.5) * mask_mpp
    patch_l0 = patch_um / slide_mpp
    origins = np.round(centre_um / slide_mpp - patch_l0 / 2)
    hi = np.inf if slide_dimensions_l0 is None else np.asarray(slide_dimensions_l0, dtype=np.float64) - patch_l0
    return np.clip(origins, 0, np.maximum(hi, 0)).astype(np.int64)


def fringe_patches(
    tumor: np.ndarray, mask_mpp: float, slide_mpp: float, *,
    tissue: np.ndarray | None = None, tissue_mpp: float | None = None, n: int = 50,
    patch_px: int = 1000, patch_mpp: float = MPP_40X, band_um: float | None = None, n_regions: int = 3,
    min_spacing_um: float | None = None, min_tissue_fraction: float = 0.5,
    slide_dimensions_l0: tuple[int, int] | None = None, seed: int = 0,
) -> np.ndarray:
    """Level-0 origins of up to ``n`` patches from the fringes of the largest tumor regions.

    Parameters
    ----------
    tumor : ndarray of bool, shape (h, w)
        Tumor mask at ``mask_mpp`` µm/px (pixel ``(0, 0)`` at the slide origin).
    mask_mpp : float
        Resolution of the tumor mask in µm/px.
    slide_mpp : float
        Level-0 resolution of the slide in µm/px.
    tissue : ndarray of bool, optional
        Tissue mask at ``tissue_mpp`` (default: the tumor mask's resolution and shape); patch centres
        must be in tissue and patches must hold at least ``min_tissue_fraction`` tissue.
    n : int
        Number of patches wanted (50 in the paper).
    patch_px, patch_mpp : int, float
        Patch side in pixels at ``patch_mpp`` µm/px (1000 px at 40x = 250 µm).
    band_um, min_spacing_um : float, optional
        Width of the boundary band (default half the patch side) and minimum distance between patch
        centres (default the patch side: patches do not overlap), in µm.
    n_regions : int
        Number of largest regions whose fringes are sampled first.
    min_tissue_fraction : float
        Minimum tissue fraction of a patch.
    slide_dimensions_l0 : (width, height), optional
        When given, origins are clipped so that patches stay inside the slide.
    seed : int
        Seed of the random choice; the result is a deterministic function of the inputs and ``seed``.

    Returns
    -------
    ndarray of int64, shape (k, 2), k <= n
        Top-left ``(x, y)`` of each patch in level-0 pixels; band patches first, then interior,
        then other regions; ``(0, 2)`` when there is no tumor.
    """
    tumor = _check_mask(tumor, "tumor mask")
    if mask_mpp <= 0 or slide_mpp <= 0 or patch_mpp <= 0:
        raise FeatureError(f"resolutions must be positive, got mask {mask_mpp}, slide {slide_mpp}, patch {patch_mpp}")
    patch_um = patch_px * patch_mpp
    band_um = patch_um / 2 if band_um is None else band_um
    spacing_um = patch_um if min_spacing_um is None else min_spacing_um
    tissue_b = _tissue_on_mask(tumor, tissue, tissue_mpp, mask_mpp)
    tumor = tumor & tissue_b
    band, interior = fringe_band(tumor, mask_mpp, band_um=band_um, n_regions=n_regions)
    others = tumor & ~band & ~interior
    chosen = _choose_centres((band, interior, others), tissue_b, patch_um / mask_mpp / 2, min_tissue_fraction,
                             spacing_um / mask_mpp, n, np.random.default_rng(seed))
    if not chosen:
        return np.zeros((0, 2), dtype=np.int64)
    return _origins_l0(chosen, mask_mpp, slide_mpp, patch_um, slide_dimensions_l0)


def fringe_summary(
    origins_l0: np.ndarray,
    tumor: np.ndarray,
    mask_mpp: float,
    slide_mpp: float,
    *,
    patch_px: int = 1000,
    patch_mpp: float = MPP_40X,
    band_um: float | None = None,
    n_regions: int = 3,
) -> dict[str, float]:
    """The :data:`FRINGE_FEATURES` of a selection made by :func:`fringe_patches` (same parameters)."""
    patch_um = patch_px * patch_mpp
    band, _ = fringe_band(tumor, mask_mpp, band_um=patch_um / 2 if band_um is None else band_um, n_regions=n_regions)
    origins_l0 = np.asarray(origins_l0, dtype=np.float64).reshape(-1, 2)
    centre_px = ((origins_l0 * slide_mpp + patch_um / 2) / mask_mpp).astype(np.int64)
    r = np.clip(centre_px[:, 1], 0, band.shape[0] - 1)
    c = np.clip(centre_px[:, 0], 0, band.shape[1] - 1)
    return {
        "fringe_n_patches": float(len(origins_l0)),
        "fringe_n_in_band": float(band[r, c].sum()),
        "fringe_band_area_mm2": float(band.sum()) * (mask_mpp / 1000.0) ** 2,
    }
