"""Macenko stain normalization (Macenko et al., ISBI 2009).

Stain vectors are the extreme angles of the optical densities projected on the plane of their
two main principal directions; concentrations come from unmixing with those vectors, and are
rescaled so that their 99th percentiles match the template's. Constants (``Io = 240``,
``alpha = 1``, ``beta = 0.15``) are those of the reference implementation (and of torchstain).

Parameters (``SlideStainStats.params``):

- ``stain_matrix``: (3, 2) float32, unit OD vectors of hematoxylin (column 0) and eosin (column 1).
- ``max_conc``: (2,) float32, the 99th percentile of each stain's concentration.

The transform is ``Io * exp(-OD @ A.T)`` with one 3x3 matrix
``A = HE_ref @ diag(maxC_ref / maxC_src) @ pinv(HE_src)``, so it is a function of the pixel only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tupac.preprocess.stain.base import Params, StainMethod

IO = 240.0
ALPHA = 1.0
BETA = 0.15
MAX_FIT_PIXELS = 2_000_000
MIN_TISSUE_PIXELS = 100

# OD of each 8-bit value at Io = 240 (may be negative for values above 239: brighter than Io).
_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / IO)).astype(np.float32)


def _pixels(tiles: Sequence[np.ndarray], seed: int) -> np.ndarray:
    px = np.concatenate([t.reshape(-1, 3) for t in tiles], axis=0)
    if px.shape[0] > MAX_FIT_PIXELS:
        px = px[np.random.default_rng(seed).choice(px.shape[0], MAX_FIT_PIXELS, replace=False)]
    return px


def stain_matrix(od_tissue: np.ndarray) -> np.ndarray:
    """Macenko's H and E vectors from tissue optical densities ``(n, 3)`` -> ``(3, 2)``."""
    _, eigvecs = np.linalg.eigh(np.cov(od_tissue.T))
    plane = eigvecs[:, 1:3]
    proj = od_tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ALPHA, 100.0 - ALPHA])
    v_min = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_max = plane @ np.array([np.cos(hi), np.sin(hi)])
    # hematoxylin absorbs more red than eosin does: it goes first
    he = np.stack([v_min, v_max], axis=1) if v_min[0] > v_max[0] else np.stack([v_max, v_min], axis=1)
    # an eigenvector's sign is arbitrary; stain ODs are positive
    he *= np.where(he.sum(axis=0) < 0, -1.0, 1.0)
    return he


def fit_tiles(tiles: Sequence[np.ndarray], seed: int = 0):
    """Fit ``stain_matrix`` and ``max_conc`` on the pixels of ``tiles``; None if < 100 tissue pixels."""
    od = _OD_LUT[_pixels(tiles, seed)].astype(np.float64)
    tissue = od[~np.any(od < BETA, axis=1)]
    if tissue.shape[0] < MIN_TISSUE_PIXELS:
        return None
    he = stain_matrix(tissue)
    conc = np.linalg.pinv(he) @ od.T  # (2, n): every pixel, as the reference implementation does
    max_c = np.percentile(conc, 99, axis=1)
    max_c = np.maximum(max_c, 1e-3)  # an image with (almost) no eosin or hematoxylin
    return {"stain_matrix": he, "max_conc": max_c}, int(od.shape[0])


def mixing_matrix(src: Params, ref: Params) -> np.ndarray:
    """The 3x3 matrix ``A`` of the transform ``OD_out = A @ OD_in`` (float32)."""
    he_s = np.asarray(src["stain_matrix"], dtype=np.float64)
    he_r = np.asarray(ref["stain_matrix"], dtype=np.float64)
    ratio = np.asarray(ref["max_conc"], dtype=np.float64) / np.asarray(src["max_conc"], dtype=np.float64)
    a = he_r @ np.diag(ratio) @ np.linalg.pinv(he_s)
    return np.nan_to_num(a).astype(np.float32)


def transform_pixels(rgb: np.ndarray, src: Params, ref: Params) -> np.ndarray:
    """Macenko-normalize ``(n, 3)`` uint8 pixels; returns ``(n, 3)`` uint8."""
    a = mixing_matrix(src, ref)
    od = _OD_LUT[rgb]
    o0, o1, o2 = od[:, 0], od[:, 1], od[:, 2]
    out = np.empty(rgb.shape, dtype=np.uint8)
    for c in range(3):  # written out per channel (not BLAS) so results are batch-independent
        od_c = a[c, 0] * o0 + a[c, 1] * o1 + a[c, 2] * o2
        # clip OD at the low end only: Io * exp(-od) > 255 is white anyway, and exp stays finite
        v = np.float32(IO) * np.exp(-np.clip(od_c, np.float32(-0.1), np.float32(30.0)))
        out[:, c] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return out


METHOD = StainMethod(
    name="macenko",
    fit_tiles=fit_tiles,
    transform_pixels=transform_pixels,
    param_shapes={"stain_matrix": (3, 2), "max_conc": (2,)},
)
fit = METHOD.fit
fit_image = METHOD.fit_image
fit_slide = METHOD.fit_slide
transform = METHOD.transform
