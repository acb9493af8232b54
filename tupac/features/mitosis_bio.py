"""Biological mitosis features: morphometry, stain intensity and texture of the detected figures.

Per fringe patch (1000 x 1000 px at 0.25 µm/px, see :mod:`tupac.features.fringe`) each detected
mitosis is segmented in a window around it (hematoxylin by color deconvolution, Otsu in the window
floored at ``h_floor``, the component under or nearest the detection, holes filled), then measured:
shape (area, perimeter, axes, eccentricity, solidity, ...), hematoxylin and eosin intensity inside
the figure and in a ring around it, and GLCM texture of the figure's gray levels. The fifty per-patch
features (:data:`BIO_PATCH_FEATURES`) summarize the figures of a patch; a slide gets the mean, std
and max of each over its patches, plus three pooled features the paper found significant (number
of mitoses, std of the area of identified mitoses, mean mitotic eccentricity).

Undefined values (a patch without a segmented figure, a patch with one mitosis and so no
nearest neighbour) are NaN per patch and are left out of the slide aggregation; a slide where no
patch defines a feature gets its documented fill (0, or the patch diagonal for neighbour
distances) and the ``bio_missing`` / ``bio_nn_missing`` flags.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from tupac.errors import FeatureError
from tupac.features.dictionary import Feature
from tupac.geometry import MPP_40X

__all__ = [
    "BIO_PATCH_FEATURES",
    "BIO_SLIDE_FEATURES",
    "BIO_FLAGS",
    "figure_properties",
    "patch_bio_features",
    "slide_bio_features",
    "detections_in_patch",
]

# name, unit, description (per patch)
_PATCH = [
    ("bio_n_mitoses", "count", "Detected mitoses in the patch."),
    ("bio_n_segmented", "count", "Detected mitoses whose figure could be segmented."),
    ("bio_density_per_mm2", "1/mm2", "Detected mitoses per mm² of patch."),
    ("bio_prob_mean", "probability", "Mean detection probability."),
    ("bio_area_mean", "um2", "Mean area of the segmented figures."),
    ("bio_area_std", "um2", "Std of the area of the segmented figures (the paper's 'std of nucleus area')."),
    ("bio_area_min", "um2", "Smallest figure area."),
    ("bio_area_max", "um2", "Largest figure area."),
    ("bio_perimeter_mean", "um", "Mean figure perimeter."),
    ("bio_perimeter_std", "um", "Std of figure perimeter."),
    ("bio_eccentricity_mean", "1", "Mean figure eccentricity (the paper's 'mean mitotic eccentricity')."),
    ("bio_eccentricity_std", "1", "Std of figure eccentricity."),
    ("bio_solidity_mean", "1", "Mean solidity (area / convex hull area)."),
    ("bio_solidity_std", "1", "Std of solidity."),
    ("bio_major_axis_mean", "um", "Mean major axis length of the moment ellipse."),
    ("bio_major_axis_std", "um", "Std of major axis length."),
    ("bio_minor_axis_mean", "um", "Mean minor axis length of the moment ellipse."),
    ("bio_minor_axis_std", "um", "Std of minor axis length."),
    ("bio_axis_ratio_mean", "1", "Mean minor / major axis ratio."),
    ("bio_circularity_mean", "1", "Mean circularity 4 pi area / perimeter² (about 1 for a disk)."),
    ("bio_circularity_std", "1", "Std of circularity."),
    ("bio_extent_mean", "1", "Mean extent (area / bounding-box area)."),
    ("bio_equiv_diameter_mean", "um", "Mean diameter of the disk of equal area."),
    ("bio_orientation_coherence", "1", "Resultant length of the doubled figure orientations (1: all parallel)."),
    ("bio_orientation_circstd", "rad", "Circular std of the figure orientations (axial data)."),
    ("bio_h_mean_mean", "OD", "Mean over figures of the mean hematoxylin inside the figure."),
    ("bio_h_mean_std", "OD", "Std over figures of the mean hematoxylin inside the figure."),
    ("bio_h_std_mean", "OD", "Mean over figures of the hematoxylin std inside the figure."),
    ("bio_h_max_mean", "OD", "Mean over figures of the maximum hematoxylin inside the figure."),
    ("bio_h_integrated_mean", "OD*um2", "Mean integrated hematoxylin (sum of H times pixel area; DNA content proxy)."),
    ("bio_h_contrast_mean", "OD", "Mean hematoxylin inside minus in a 2 µm ring around the figure."),
    ("bio_e_mean_mean", "OD", "Mean over figures of the mean eosin inside the figure."),
    ("bio_e_std_mean", "OD", "Mean over figures of the eosin std inside the figure."),
    ("bio_e_ring_mean", "OD", "Mean eosin in the 2 µm ring around the figures (cytoplasm)."),
    ("bio_od_mean_mean", "OD", "Mean total optical density (sum over RGB) inside the figures."),
    ("bio_gray_mean_mean", "1", "Mean gray level (0-1) inside the figures."),
    ("bio_glcm_contrast_mean", "1", "Mean GLCM contrast of the figure crops (32 gray levels, distance 1, 4 angles)."),
    ("bio_glcm_contrast_std", "1", "Std of GLCM contrast."),
    ("bio_glcm_homogeneity_mean", "1", "Mean GLCM homogeneity."),
    ("bio_glcm_homogeneity_std", "1", "Std of GLCM homogeneity."),
    ("bio_glcm_energy_mean", "1", "Mean GLCM energy."),
    ("bio_glcm_energy_std", "1", "Std of GLCM energy."),
    ("bio_glcm_correlation_mean", "1", "Mean GLCM correlation."),
    ("bio_glcm_correlation_std", "1", "Std of GLCM correlation."),
    ("bio_glcm_dissimilarity_mean", "1", "Mean GLCM dissimilarity."),
    ("bio_nn_dist_mean", "um", "Mean distance from each mitosis to its nearest other mitosis in the patch."),
    ("bio_nn_dist_min", "um", "Smallest distance between two mitoses in the patch."),
    ("bio_frac_nn_lt_25um", "fraction", "Fraction of mitoses with another within 25 µm."),
    ("bio_patch_h_mean", "OD", "Mean hematoxylin over the patch's tissue (context)."),
    ("bio_patch_e_mean", "OD", "Mean eosin over the patch's tissue (context)."),
]
BIO_PATCH_FEATURES: tuple[Feature, ...] = tuple(Feature(n, "mitosis_bio_patch", u, d) for n, u, d in _PATCH)
_NN = ("bio_nn_dist_mean", "bio_nn_dist_min")
_AGG = {"mean": "Mean over the slide's patches of", "std": "Std over the slide's patches of", "max": "Max over the slide's patches of"}
_POOLED = (
    Feature("bio_slide_n_mitoses", "mitosis_bio", "count", "Detected mitoses in all fringe patches (the paper's 'number of mitoses')."),
    Feature("bio_slide_n_patches", "mitosis_bio", "count", "Patches the biological features were measured on."),
    Feature("bio_slide_area_std", "mitosis_bio", "um2", "Std of the area of all segmented figures of the slide, pooled."),
    Feature("bio_slide_eccentricity_mean", "mitosis_bio", "1", "Mean eccentricity of all segmented figures of the slide, pooled."),
)


def _fill_text(name: str) -> str:
    return "the patch diagonal" if name in _NN else "0"


BIO_SLIDE_FEATURES: tuple[Feature, ...] = _POOLED + tuple(
    Feature(
        f"{f.name}__{agg}", "mitosis_bio", f.unit,
        f"{text} {f.description[0].lower()}{f.description[1:]} Patches where undefined are skipped; "
        f"{_fill_text(f.name)} when no patch defines it.",
    )
    for f in BIO_PATCH_FEATURES
    for agg, text in _AGG.items()
)
BIO_FLAGS: tuple[Feature, ...] = (
    Feature("bio_missing", "flags", "flag", "1 when no mitosis figure was segmented in any patch (morphometry filled with 0)."),
    Feature("bio_nn_missing", "flags", "flag", "1 when no patch holds two mitoses (neighbour distances filled with the patch diagonal)."),
)


def detections_in_patch(
    xy_l0: np.ndarray, origin_l0: np.ndarray, slide_mpp: float, patch_px: int = 1000, patch_mpp: float = MPP_40X
) -> tuple[np.ndarray, np.ndarray]:
    """Detections inside one patch, in the patch's pixel frame.

    Parameters
    ----------
    xy_l0 : ndarray of float, shape (n, 2)
        Detections ``(x, y)`` in level-0 pixels.
    origin_l0 : array-like of 2 numbers
        Patch top-left ``(x, y)`` in level-0 pixels.
    slide_mpp, patch_mpp : float
        Level-0 and patch resolutions in µm/px.
    patch_px : int
        Patch side in pixels at ``patch_mpp``.

    Returns
    -------
    xy_patch : ndarray of float64, shape (k, 2)
        ``(x, y)`` of the detections inside the patch, in patch pixels.
    index : ndarray of int64, shape (k,)
        Their rows in ``xy_l0``.
    """
    xy = (np.asarray(xy_l0, dtype=np.float64).reshape(-1, 2) - np.asarray(origin_l0, dtype=np.float64)) * (
        slide_mpp / patch_mpp
    )
    inside = np.all((xy >= 0) & (xy < patch_px), axis=1)
    return xy[inside], np.flatnonzero(inside)


def _stain_channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    od = -np.log10(np.clip(rgb.astype(np.float64), 1.0, 255.0) / 255.0).sum(axis=-1)
    return hed[..., 0], hed[..., 1], od


def _segment(h: np.ndarray, xy: np.ndarray, mpp: float, radius_um: float, max_offset_um: float, h_floor: float):
    """Yield ``(window slices, figure mask in the window)`` per detection, or None when none is found."""
    from skimage.filters import threshold_otsu

    r = int(math.ceil(radius_um / mpp))
    hh, ww = h.shape
    for x, y in xy:
        cr, cc = int(y), int(x)
        sl = (slice(max(cr - r, 0), min(cr + r + 1, hh)), slice(max(cc - r, 0), min(cc + r + 1, ww)))
        win = h[sl]
        t = h_floor if np.ptp(win) == 0 else max(float(threshold_otsu(win)), h_floor)
        comps, n = ndi.label(win > t)
        if n == 0:
            yield None
            continue
        # The component under the detection, else the one nearest to it (a detection may sit on an edge).
        dist, (ir, ic) = ndi.distance_transform_edt(comps == 0, return_indices=True)
        lr, lc = cr - sl[0].start, cc - sl[1].start
        if dist[lr, lc] * mpp > max_offset_um:
            yield None
            continue
        k = comps[ir[lr, lc], ic[lr, lc]]
        yield sl, ndi.binary_fill_holes(comps == k)


def _glcm(gray_crop: np.ndarray) -> dict[str, float]:
    from skimage.feature import graycomatrix, graycoprops

    q = np.clip((gray_crop * 32).astype(np.uint8), 0, 31)
    m = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True, normed=True)
    out = {}
    for prop in ("contrast", "homogeneity", "energy", "correlation", "dissimilarity"):
        with np.errstate(invalid="ignore", divide="ignore"):
            v = graycoprops(m, prop)
        out[prop] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    return out


_FIGURE_COLUMNS = [
    "x", "y", "area", "perimeter", "eccentricity", "solidity", "major", "minor", "orientation", "extent",
    "equiv_diameter", "h_mean", "h_std", "h_max", "h_integrated", "h_contrast", "e_mean", "e_std", "e_ring",
    "od_mean", "gray_mean", "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation",
    "glcm_dissimilarity",
]


def figure_properties(
    rgb: np.ndarray,
    xy: np.ndarray,
    mpp: float = MPP_40X,
    *,
    radius_um: float = 8.0,
    max_offset_um: float = 3.0,
    h_floor: float = 0.035,
    ring_um: float = 2.0,
    _channels=None,
) -> pd.DataFrame:
    """Segment and measure the mitotic figure at each detection.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
        H&E patch at ``mpp`` µm/px; not modified.
    xy : ndarray of float, shape (n, 2)
        Detections ``(x, y)`` in patch pixels.
    mpp : float
        Patch resolution in µm/px.
    radius_um : float
        Half side of the segmentation window around each detection.
    max_offset_um : float
        A figure further than this from its detection is not accepted.
    h_floor : float
        Lowest hematoxylin threshold (``rgb2hed`` units); keeps pale windows from yielding figures.
    ring_um : float
        Width of the ring around the figure where the surrounding stain is measured.

    Returns
    -------
    DataFrame, one row per segmented figure
        Columns ``x, y`` (patch px), ``area`` (µm²), ``perimeter``, ``major``, ``minor``,
        ``equiv_diameter`` (µm), ``eccentricity``, ``solidity``, ``orientation`` (rad), ``extent``,
        stain statistics (``h_*``, ``e_*``, ``od_mean``, ``gray_mean``) and ``glcm_*`` texture.
    """
    from skimage.measure import regionprops

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise FeatureError(f"patch must be a (h, w, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    h, e, od = _channels if _channels is not None else _stain_channels(rgb)
    h_seg = ndi.gaussian_filter(h, 0.5 / mpp)
    gray = rgb.mean(axis=-1) / 255.0
    ring_fp = np.ones((2 * int(round(ring_um / mpp)) + 1,) * 2, dtype=bool)
    rows = []
    for (x, y), seg in zip(xy, _segment(h_seg, xy, mpp, radius_um, max_offset_um, h_floor)):
        if seg is None:
            continue
        sl, m = seg
        p = regionprops(m.astype(np.uint8))[0]
        ring = ndi.binary_dilation(m, ring_fp) & ~m
        hw, ew = h[sl], e[sl]
        hin, ein = hw[m], ew[m]
        r0, c0, r1, c1 = p.bbox
        tex = _glcm(gray[sl][max(r0 - 2, 0) : r1 + 2, max(c0 - 2, 0) : c1 + 2])
        perim = float(p.perimeter_crofton) * mpp
        rows.append(
            [x, y, p.area * mpp**2, perim, p.eccentricity, p.solidity, p.axis_major_length * mpp,
             p.axis_minor_length * mpp, p.orientation, p.extent, p.equivalent_diameter_area * mpp,
             hin.mean(), hin.std(), hin.max(), hin.sum() * mpp**2,
             hin.mean() - (hw[ring].mean() if ring.any() else 0.0),
             ein.mean(), ein.std(), ew[ring].mean() if ring.any() else 0.0,
             od[sl][m].mean(), gray[sl][m].mean(),
             tex["contrast"], tex["homogeneity"], tex["energy"], tex["correlation"], tex["dissimilarity"]]
        )
    return pd.DataFrame(rows, columns=_FIGURE_COLUMNS, dtype=np.float64)


def _m(v: pd.Series | np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _s(v: pd.Series | np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std()) if v.size else math.nan


def _nn(xy: np.ndarray, mpp: float) -> np.ndarray:
    """Distance (µm) from each point to its nearest other point; empty for fewer than two points."""
    if len(xy) < 2:
        return np.zeros(0)
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1) * mpp


def _shape_block(figs: pd.DataFrame) -> dict[str, float]:
    """Size and shape of the segmented figures (µm, µm²; ratios unitless); NaN without a figure."""
    # Axis ratio and circularity are undefined (NaN, left out by _m/_s) for a zero major axis or perimeter.
    circularity = 4 * np.pi * figs["area"] / figs["perimeter"].where(figs["perimeter"] > 0) ** 2
    return {
        "bio_area_mean": _m(figs["area"]),
        "bio_area_std": _s(figs["area"]),
        "bio_area_min": float(figs["area"].min()) if len(figs) else math.nan,
        "bio_area_max": float(figs["area"].max()) if len(figs) else math.nan,
        "bio_perimeter_mean": _m(figs["perimeter"]),
        "bio_perimeter_std": _s(figs["perimeter"]),
        "bio_eccentricity_mean": _m(figs["eccentricity"]),
        "bio_eccentricity_std": _s(figs["eccentricity"]),
        "bio_solidity_mean": _m(figs["solidity"]),
        "bio_solidity_std": _s(figs["solidity"]),
        "bio_major_axis_mean": _m(figs["major"]),
        "bio_major_axis_std": _s(figs["major"]),
        "bio_minor_axis_mean": _m(figs["minor"]),
        "bio_minor_axis_std": _s(figs["minor"]),
        "bio_axis_ratio_mean": _m(figs["minor"] / figs["major"].where(figs["major"] > 0)),
        "bio_circularity_mean": _m(circularity),
        "bio_circularity_std": _s(circularity),
        "bio_extent_mean": _m(figs["extent"]),
        "bio_equiv_diameter_mean": _m(figs["equiv_diameter"]),
    }


def _orientation_block(figs: pd.DataFrame) -> dict[str, float]:
    """How aligned the figures' major axes are (orientations in radians, axial); NaN without a figure."""
    # Orientations are axial (θ and θ + π are the same axis): doubling the angles makes them circular.
    doubled = 2 * figs["orientation"].to_numpy()
    resultant = float(np.hypot(np.cos(doubled).mean(), np.sin(doubled).mean())) if len(figs) else math.nan
    return {
        "bio_orientation_coherence": resultant,
        # Axial circular std: sqrt(-2 ln R) of the doubled angles, halved back to the axial scale.
        "bio_orientation_circstd": math.sqrt(max(-2 * math.log(max(resultant, 1e-12)), 0.0)) / 2 if len(figs) else math.nan,
    }


def _stain_texture_block(figs: pd.DataFrame) -> dict[str, float]:
    """Stain intensity (hematoxylin, eosin, summed optical density, gray level) and GLCM texture of the
    figures (see :func:`figure_properties`); NaN without a figure."""
    return {
        "bio_h_mean_mean": _m(figs["h_mean"]),
        "bio_h_mean_std": _s(figs["h_mean"]),
        "bio_h_std_mean": _m(figs["h_std"]),
        "bio_h_max_mean": _m(figs["h_max"]),
        "bio_h_integrated_mean": _m(figs["h_integrated"]),
        "bio_h_contrast_mean": _m(figs["h_contrast"]),
        "bio_e_mean_mean": _m(figs["e_mean"]),
        "bio_e_std_mean": _m(figs["e_std"]),
        "bio_e_ring_mean": _m(figs["e_ring"]),
        "bio_od_mean_mean": _m(figs["od_mean"]),
        "bio_gray_mean_mean": _m(figs["gray_mean"]),
        "bio_glcm_contrast_mean": _m(figs["glcm_contrast"]),
        "bio_glcm_contrast_std": _s(figs["glcm_contrast"]),
        "bio_glcm_homogeneity_mean": _m(figs["glcm_homogeneity"]),
        "bio_glcm_homogeneity_std": _s(figs["glcm_homogeneity"]),
        "bio_glcm_energy_mean": _m(figs["glcm_energy"]),
        "bio_glcm_energy_std": _s(figs["glcm_energy"]),
        "bio_glcm_correlation_mean": _m(figs["glcm_correlation"]),
        "bio_glcm_correlation_std": _s(figs["glcm_correlation"]),
        "bio_glcm_dissimilarity_mean": _m(figs["glcm_dissimilarity"]),
    }


def _neighbour_block(xy: np.ndarray, mpp: float) -> dict[str, float]:
    """Nearest-neighbour distances (µm) between the mitoses at ``xy`` (n, 2) patch px; NaN for n < 2."""
    nn = _nn(xy, mpp)
    return {
        "bio_nn_dist_mean": _m(nn),
        "bio_nn_dist_min": float(nn.min()) if nn.size else math.nan,
        "bio_frac_nn_lt_25um": float((nn < 25.0).mean()) if nn.size else math.nan,
    }


def _patch_stain_block(rgb: np.ndarray, h: np.ndarray, e: np.ndarray) -> dict[str, float]:
    """Mean hematoxylin and eosin of the patch's tissue (of the whole patch if it has no tissue).

    ``rgb`` is (h, w, 3) uint8; ``h`` and ``e`` (h, w) are its ``skimage.color.rgb2hed`` channels.
    """
    # Glass is bright in every channel; stained tissue is dark (OD > 0.1) in at least its darkest one.
    tissue = np.asarray(rgb).min(axis=-1) < 255.0 * 10**-0.1
    return {
        "bio_patch_h_mean": float(h[tissue].mean()) if tissue.any() else float(h.mean()),
        "bio_patch_e_mean": float(e[tissue].mean()) if tissue.any() else float(e.mean()),
    }


def patch_bio_features(
    rgb: np.ndarray,
    xy: np.ndarray,
    prob: np.ndarray | None = None,
    mpp: float = MPP_40X,
    *,
    return_figures: bool = False,
    **segment_kwargs,
) -> dict[str, float] | tuple[dict[str, float], pd.DataFrame]:
    """The fifty :data:`BIO_PATCH_FEATURES` of one patch.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
        H&E patch at ``mpp`` µm/px (1000 x 1000 at 0.25 µm/px in the paper's setting).
    xy : ndarray of float, shape (n, 2)
        Detected mitoses inside the patch, ``(x, y)`` in patch pixels (see :func:`detections_in_patch`).
    prob : ndarray of float, shape (n,), optional
        Detection probabilities.
    mpp : float
        Patch resolution in µm/px.
    return_figures : bool
        Also return the per-figure table of :func:`figure_properties` (for slide-level pooling).
    **segment_kwargs
        Passed to :func:`figure_properties`.

    Returns
    -------
    dict of str -> float
        Exactly the fifty names of :data:`BIO_PATCH_FEATURES`; NaN where a value is undefined
        (no segmented figure; fewer than two mitoses for neighbour distances).
    figures : DataFrame
        Only with ``return_figures``.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    channels = _stain_channels(np.asarray(rgb))
    figs = figure_properties(rgb, xy, mpp, _channels=channels, **segment_kwargs)
    h, e, _ = channels
    area_mm2 = rgb.shape[0] * rgb.shape[1] * (mpp / 1000.0) ** 2
    out = {
        "bio_n_mitoses": float(len(xy)),
        "bio_n_segmented": float(len(figs)),
        "bio_density_per_mm2": len(xy) / area_mm2,
        "bio_prob_mean": _m(prob) if prob is not None and len(prob) else math.nan,
        **_shape_block(figs),
        **_orientation_block(figs),
        **_stain_texture_block(figs),
        **_neighbour_block(xy, mpp),
        **_patch_stain_block(rgb, h, e),
    }
    return (out, figs) if return_figures else out


def slide_bio_features(
    patches: list[dict[str, float]],
    figures: list[pd.DataFrame] | None = None,
    *,
    patch_diagonal_um: float = 1000 * MPP_40X * math.sqrt(2),
) -> dict[str, float]:
    """Aggregate per-patch features (from :func:`patch_bio_features`) to one slide.

    Parameters
    ----------
    patches : list of dict
        One :func:`patch_bio_features` result per patch (may be empty: no tumor, no patch).
    figures : list of DataFrame, optional
        The per-figure tables of the same patches (``return_figures=True``), pooled for the
        slide-level area std and mean eccentricity; without them those two are 0 and ``bio_missing`` is
        decided from the per-patch counts.
    patch_diagonal_um : float
        Fill value of the neighbour distances when no patch defines them.

    Returns
    -------
    dict of str -> float
        :data:`BIO_SLIDE_FEATURES` and :data:`BIO_FLAGS`, all finite.
    """
    names = [f.name for f in BIO_PATCH_FEATURES]
    table = pd.DataFrame([{k: p[k] for k in names} for p in patches], columns=names, dtype=np.float64)
    figs = [f for f in (figures or []) if len(f)]
    pooled = pd.concat(figs, ignore_index=True) if figs else pd.DataFrame(columns=_FIGURE_COLUMNS, dtype=np.float64)
    out: dict[str, float] = {
        "bio_slide_n_mitoses": float(table["bio_n_mitoses"].sum()),
        "bio_slide_n_patches": float(len(table)),
        "bio_slide_area_std": float(pooled["area"].std(ddof=0)) if len(pooled) else 0.0,
        "bio_slide_eccentricity_mean": float(pooled["eccentricity"].mean()) if len(pooled) else 0.0,
    }
    for name in names:
        v = table[name].to_numpy()
        v = v[np.isfinite(v)]
        fill = patch_diagonal_um if name in _NN else 0.0
        out[f"{name}__mean"] = float(v.mean()) if v.size else fill
        out[f"{name}__std"] = float(v.std()) if v.size else 0.0
        out[f"{name}__max"] = float(v.max()) if v.size else fill
    out["bio_missing"] = 0.0 if table["bio_n_segmented"].sum() > 0 else 1.0
    out["bio_nn_missing"] = 0.0 if np.isfinite(table["bio_nn_dist_mean"].to_numpy()).any() else 1.0
    return out
