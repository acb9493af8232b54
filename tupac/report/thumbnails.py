"""Per-slide thumbnails with tissue, tumor-heatmap and mitosis overlays (numpy + PIL).

Everything is drawn at the thumbnail's resolution: heatmaps are sampled at the thumbnail pixel
centres (nearest cell, from the coarsest stored pyramid level that is still at least as fine as
the thumbnail), so memory is the thumbnail's size whatever the slide's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tupac.heatmaps.store import HeatmapStore
from tupac.report.run import read_detections
from tupac.slide import open_slide

__all__ = ["colormap", "sample_heatmap", "draw_overlay", "SlideThumbnails", "render_slide", "thumbnail_mpp"]

# Stops of matplotlib's "inferno" (perceptually uniform, readable in greyscale); interpolated linearly.
_INFERNO = np.array([
    (0.00, 0, 0, 4), (0.13, 31, 12, 72), (0.25, 85, 15, 109), (0.38, 136, 34, 106), (0.50, 186, 54, 85),
    (0.63, 227, 89, 51), (0.75, 249, 140, 10), (0.88, 249, 201, 50), (1.00, 252, 255, 164),
], np.float64)
TISSUE_RGB = (40, 170, 70)
TUMOR_EDGE_RGB = (25, 25, 35)
MITOSIS_RGB = (0, 230, 255)


def colormap(values: np.ndarray) -> np.ndarray:
    """Inferno colours of ``values`` in [0, 1] (clipped; NaN -> 0): uint8, shape ``values.shape + (3,)``."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float64), nan=0.0), 0.0, 1.0)
    rgb = [np.interp(v, _INFERNO[:, 0], _INFERNO[:, k]) for k in (1, 2, 3)]
    return np.rint(np.stack(rgb, axis=-1)).astype(np.uint8)


def thumbnail_mpp(size_l0: tuple[int, int], slide_mpp: float, max_side: int) -> float:
    """µm/px of a thumbnail whose longer side is ``max_side`` pixels (never finer than level 0)."""
    return max(slide_mpp, max(size_l0) * slide_mpp / max_side)


def sample_heatmap(store: Any, name: str, shape: tuple[int, int], mpp: float) -> np.ndarray:
    """Heatmap ``name`` at the centres of a ``shape`` raster of ``mpp`` µm/px anchored at the slide origin.

    Parameters
    ----------
    store : HeatmapStore
    name : str
    shape : (rows, cols)
        The thumbnail's shape.
    mpp : float
        The thumbnail's µm per pixel.

    Returns
    -------
    ndarray of float32, shape ``shape``
        Nearest-cell values; NaN where the raster lies outside the heatmap.
    """
    spec = store.spec(name)
    level = 0
    while level + 1 < spec.levels and spec.mpp * 2 ** (level + 1) <= mpp:
        level += 1
    f = 2**level
    cell = spec.mpp * f
    arr = store.array(name, level)
    idx = []
    for axis in (0, 1):
        centres_um = (np.arange(shape[axis]) + 0.5) * mpp
        first_um = spec.offset_um[axis] + (f - 1) / 2 * spec.mpp
        idx.append(np.rint((centres_um - first_um) / cell).astype(np.int64))
    ok_r = (idx[0] >= 0) & (idx[0] < arr.shape[0])
    ok_c = (idx[1] >= 0) & (idx[1] < arr.shape[1])
    out = np.full(shape, np.nan, np.float32)
    if not ok_r.any() or not ok_c.any():
        return out
    ur, inv_r = np.unique(idx[0][ok_r], return_inverse=True)
    uc, inv_c = np.unique(idx[1][ok_c], return_inverse=True)
    block = np.asarray(arr.get_orthogonal_selection((ur, uc)), np.float32)  # only the sampled cells
    out[np.ix_(ok_r, ok_c)] = block[np.ix_(inv_r, inv_c)]
    return out


def _edges(mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(mask, mode="inner") if mask.any() else mask


def draw_overlay(
    rgb: np.ndarray,
    tissue: np.ndarray | None,
    tumor: np.ndarray | None,
    mitoses_xy: np.ndarray | None,
    threshold: float = 0.5,
    alpha: float = 0.6,
    radius: int = 6,
) -> np.ndarray:
    """Tissue outline, tumor heatmap (inferno, alpha rising with probability, dark outline at
    ``threshold``) and mitosis circles over a thumbnail.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
        The thumbnail (not modified).
    tissue : ndarray of bool, shape (h, w), optional
    tumor : ndarray of float, shape (h, w), optional
        Probability in [0, 1]; NaN = not computed (left transparent).
    mitoses_xy : ndarray of float, shape (n, 2), optional
        ``(x, y)`` in thumbnail pixels.
    threshold, alpha, radius
        Tumor outline level, maximum heatmap opacity, circle radius in pixels.

    Returns
    -------
    ndarray of uint8, shape (h, w, 3)
    """
    from PIL import Image, ImageDraw

    out = np.asarray(rgb, np.float32).copy()
    if tumor is not None:
        p = np.nan_to_num(np.asarray(tumor, np.float32), nan=0.0)
        a = (alpha * np.clip(p, 0.0, 1.0))[..., None]
        out = out * (1 - a) + colormap(p).astype(np.float32) * a
        out[_edges(p >= threshold)] = TUMOR_EDGE_RGB
    if tissue is not None:
        out[_edges(np.asarray(tissue, bool))] = TISSUE_RGB
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    if mitoses_xy is not None and len(mitoses_xy):
        d = ImageDraw.Draw(img)
        for x, y in np.asarray(mitoses_xy, np.float64):
            d.ellipse((x - radius, y - radius, x + radius, y + radius), outline=MITOSIS_RGB, width=2)
    return np.asarray(img)


@dataclass(frozen=True)
class SlideThumbnails:
    """The two PNGs of a slide and what they show.

    Attributes
    ----------
    plain, overlay : Path
    mpp : float
        µm per thumbnail pixel.
    shape : (int, int)
    n_mitoses : int or None
    tumor_fraction : float or None
        Fraction of tissue pixels (thumbnail grid) with tumor probability >= threshold.
    """

    plain: Path
    overlay: Path
    mpp: float
    shape: tuple[int, int]
    n_mitoses: int | None
    tumor_fraction: float | None


def render_slide(entry: Any, out_dir: str | Path, threshold: float, max_side: int = 640,
                 slide_mpp: float | None = None) -> SlideThumbnails:
    """Write ``<id>.thumb.png`` and ``<id>.overlay.png`` of one committed slide.

    Raises
    ------
    TupacError
        The slide file cannot be read (SlideOpenError, ReportError) or the store is broken.
    """
    from PIL import Image

    with open_slide(entry.record.input_path, backend="openslide", mpp=slide_mpp) as s:
        mpp = thumbnail_mpp(s.dimensions, s.mpp, max_side)
        rgb = s.thumbnail(mpp)
        l0_mpp = s.mpp
    shape = rgb.shape[:2]
    store = HeatmapStore.open(entry.store, mode="r")
    tissue = sample_heatmap(store, "tissue", shape, mpp) > 0 if "tissue" in store.names else None
    tumor = sample_heatmap(store, "tumor", shape, mpp) if "tumor" in store.names else None
    det = read_detections(entry.detections_csv)
    xy = None if det is None else det[["x", "y"]].to_numpy(np.float64) * (l0_mpp / mpp)
    over = draw_overlay(rgb, tissue, tumor, xy, threshold)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain, overlay = out / f"{entry.slide_id}.thumb.png", out / f"{entry.slide_id}.overlay.png"
    Image.fromarray(rgb).save(plain, optimize=True)
    Image.fromarray(over).save(overlay, optimize=True)
    frac = None
    if tumor is not None:
        region = np.nan_to_num(tumor, nan=0.0) >= threshold
        base = tissue if tissue is not None and tissue.any() else np.ones(shape, bool)
        frac = float((region & base).sum() / max(int(base.sum()), 1))
    return SlideThumbnails(plain, overlay, mpp, shape, None if det is None else len(det), frac)
