"""Per-slide stain and texture statistics for the out-of-distribution check, and their reference ranges.

The measuring half of :mod:`tupac.features.ood`, kept at the preprocessing layer so that the
trainings (:mod:`tupac.tumor.training`, :mod:`tupac.mitosis.training`) record a reference in their
cards and the inference job measures each slide with the same code, without importing the features
stage above them. The rule that compares the two, and its reports, live in :mod:`tupac.features.ood`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from tupac.preprocess.color import rgb_to_od

__all__ = ["REFERENCE_KEY", "QC_TILES", "QC_TILE_PX", "image_stats", "slide_stats", "slide_density_stats",
           "reference_from_stats", "reference_from_inputs"]

REFERENCE_KEY = "ood_reference"
"""The key of the reference statistics in ``ModelCard.extra``."""

QC_TILES = 8
"""Tissue tiles per model resolution read for a slide's statistics (cheap: 8 x 256² pixels)."""
QC_TILE_PX = 256


# Ruifrok & Johnston (2001) stain vectors (OD per RGB channel) of hematoxylin and eosin, as in
# skimage.color.rgb2hed; a fixed basis on purpose: it measures how much stain a slide carries in
# one common frame, whereas a per-slide fitted basis (Macenko) would absorb the shift we look for.
_HE = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]], dtype=np.float64)
_HE /= np.linalg.norm(_HE, axis=1, keepdims=True)
_UNMIX = np.linalg.pinv(_HE)  # (3, 2): OD (n, 3) @ _UNMIX -> (n, 2) concentrations
TISSUE_OD = 0.15
"""A pixel is tissue when its largest channel OD exceeds this (glass is near 0; Macenko's beta)."""
MIN_TISSUE_PIXELS = 100


def image_stats(tiles: Sequence[np.ndarray] | np.ndarray) -> dict[str, float] | None:
    """Stain and texture statistics of a set of RGB tiles (one slide, or one training image).

    Parameters
    ----------
    tiles : sequence of ndarray of uint8, each (h, w, 3), or ndarray (n, h, w, 3)
        RGB tiles at the model's resolution (µm/px of its card).

    Returns
    -------
    dict of str to float, or None
        ``od_mean``, ``od_std`` (channel-mean OD of tissue pixels, unitless), ``h_od_p50``,
        ``h_od_p95``, ``e_od_p50`` (stain concentrations in OD units), ``sharpness`` (median over
        tiles of the variance of the Laplacian of the grey level in [0, 1], per px²). None when the
        tiles hold fewer than ``MIN_TISSUE_PIXELS`` tissue pixels.
    """
    od_all, sharp = [], []
    for tile in tiles:
        tile = np.asarray(tile)
        od = rgb_to_od(tile).reshape(-1, 3)
        tissue = od.max(axis=1) > TISSUE_OD
        if tissue.sum() < MIN_TISSUE_PIXELS:
            continue
        od_all.append(od[tissue])
        grey = tile.astype(np.float32).mean(axis=2) / 255.0
        sharp.append(float(ndimage.laplace(grey)[1:-1, 1:-1].var()))
    if not od_all:
        return None
    od = np.concatenate(od_all).astype(np.float64)
    conc = od @ _UNMIX  # (n, 2): hematoxylin, eosin
    mean_od = od.mean(axis=1)
    return {
        "od_mean": float(mean_od.mean()),
        "od_std": float(mean_od.std()),
        "h_od_p50": float(np.percentile(conc[:, 0], 50)),
        "h_od_p95": float(np.percentile(conc[:, 0], 95)),
        "e_od_p50": float(np.percentile(conc[:, 1], 50)),
        "sharpness": float(np.median(sharp)),
    }


def slide_stats(reader, tissue_mask, mpp: float, seed: int = 0, max_tiles: int = QC_TILES,
                tile_px: int = QC_TILE_PX) -> dict[str, float] | None:
    """:func:`image_stats` of up to ``max_tiles`` tissue tiles of a slide read at ``mpp``.

    Parameters
    ----------
    reader : SlideReader
        The open slide.
    tissue_mask : TissueMask
        ``mask`` (bool, (h, w)) and ``mpp``.
    mpp : float
        The model's resolution, µm/px.
    """
    from tupac.preprocess.stain import sample_tissue_tiles  # deferred: stain imports its methods

    tiles = sample_tissue_tiles(reader, tissue_mask, mpp=mpp, tile_px=tile_px, max_tiles=max_tiles, seed=seed)
    return image_stats(tiles) if tiles else None


def slide_density_stats(tumor_area_mm2: float | None, tissue_area_mm2: float | None,
                        mitoses: int | None) -> dict[str, float]:
    """Tumor fraction of tissue and mitotic density of one slide (only the ones that are defined).

    Parameters
    ----------
    tumor_area_mm2, tissue_area_mm2 : float or None
        Areas in mm².
    mitoses : int or None
        Detections of the slide (None: the mitosis stage did not run).

    Returns
    -------
    dict
        ``tumor_fraction`` (in [0, 1]) when the tissue area is positive; ``mitoses_per_mm2`` when
        the tumor area is positive and detections exist.
    """
    out: dict[str, float] = {}
    if tumor_area_mm2 is not None and tissue_area_mm2:
        out["tumor_fraction"] = float(tumor_area_mm2) / float(tissue_area_mm2)
    if mitoses is not None and tumor_area_mm2:
        out["mitoses_per_mm2"] = float(mitoses) / float(tumor_area_mm2)
    return out


def reference_from_stats(items: Iterable[Mapping[str, float] | None]) -> dict[str, Any]:
    """Robust reference ranges of statistics over training items, small enough for a model card.

    Parameters
    ----------
    items : iterable of dict or None
        Per training item (slide, image), its statistics (e.g. :func:`image_stats`); None items
        (no tissue) are skipped.

    Returns
    -------
    dict
        ``{"n": items used, "stats": {name: {"median", "mad", "q01", "q99", "n"}}}``, values
        rounded to 6 significant digits.
    """
    rows = [dict(r) for r in items if r]
    names = sorted({k for r in rows for k in r})
    stats = {}
    for name in names:
        v = np.asarray([r[name] for r in rows if name in r and np.isfinite(r[name])], dtype=np.float64)
        if not len(v):
            continue
        med = float(np.median(v))
        stats[name] = {
            "median": _round(med),
            "mad": _round(float(np.median(np.abs(v - med)))),
            "q01": _round(float(np.percentile(v, 1))),
            "q99": _round(float(np.percentile(v, 99))),
            "n": int(len(v)),
        }
    return {"n": len(rows), "stats": stats}


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def reference_from_inputs(paths: Sequence[str | Path], mpp: float, images: bool = False, tissue_mpp: float = 8.0,
                          seed: int = 0) -> dict[str, Any]:
    """Reference ranges over training inputs: whole slides (tiles at ``mpp`` as at inference) or,
    with ``images``, plain images (e.g. the mitosis training fields, taken as read at ``mpp``).

    For models trained before the card kept a reference, or whose training code does not record
    one (mitosis): run it on the training set and :func:`record_reference` the result.

    Parameters
    ----------
    paths : sequence of path
        One training item each.
    mpp : float
        The model's resolution (card ``mpp``), µm/px.
    images : bool
        Read every path as one image (PIL), not as a whole-slide image.
    """
    from PIL import Image

    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide

    items = []
    for p in map(Path, paths):
        if images:
            with Image.open(p) as im:
                items.append(image_stats([np.asarray(im.convert("RGB"))]))
            continue
        with open_slide(p) as reader:
            items.append(slide_stats(reader, slide_tissue_mask(reader, tissue_mpp), mpp, seed=seed))
    return reference_from_stats(items)
