"""Macenko stain normalization (Macenko et al., ISBI 2009).

Stain vectors are the extreme angles of the optical densities projected on the plane of their
two main principal directions; concentrations come from unmixing with those vectors, and are
rescaled so that their 99th percentiles match the template's. Constants (``Io = 240``,
``alpha = 1``, ``beta = 0.15``) are those of the reference implementation (and of torchstain).

Parameters (``SlideStainStats.params``):

- ``stain_matrix``: (3, 2) float32, unit OD vectors of hematoxylin (column 0) and eosin (column 1).
- ``max_conc``: (2,) float32, the 99th percentile of each stain's concentration.
- ``io``: (3,) float32, the white (transmitted light ``Io``) per channel, R, G, B. Optional in
  references read from JSON (older ones lack it); absent means 240 in every channel.

Two estimators fill them:

- ``fit_image`` / ``fit`` (one image, no tissue mask): the reference implementation exactly, so
  it agrees with torchstain: ``Io = 240`` assumed, and a pixel counts as stained only when *every*
  channel's OD reaches ``beta``.
- ``fit_slide`` (whole-slide statistics, glass known from the tissue mask) measures instead of
  assuming, where the reference implementation's assumptions bias the vectors:

  * ``Io`` is the median of the slide's empty glass (:func:`white_point`; glass pixels of the
    sampled tissue tiles, from the tissue mask), so the OD of glass is 0 and the stain vectors
    are not tilted towards the scanner's tint. On the phantom cohort the glass is 0.02-0.05 OD
    darker than 255 and different per center; with ``Io = 240`` it sits at about -0.03 OD and
    tilts every vector. The transform renders with the reference's ``Io``, so every slide's glass
    becomes the reference's white (240 for a reference fitted on an image).
  * a pixel counts as stained when its OD *magnitude* reaches ``beta`` (Macenko et al.: "remove
    data with OD intensity less than beta") and every channel is measurably below white
    (:data:`OD_FLOOR`). The reference implementation asks every channel to reach ``beta``, which
    discards eosin-only tissue, because eosin absorbs little red (R OD ~0.1 per unit), and keeps
    only stroma that happens to carry a hematoxylin counterstain: the fitted E vector then leans
    towards H (phantom center A: true E ``[0.12, 0.81, 0.58]``, per-channel fit
    ``[0.24, 0.84, 0.49]``), by an amount that depends on each center's eosin strength.

  Measured on the three-center phantom cohort (tests/preprocess/stain/test_stain_cohort.py,
  reduction of the mean CIEDE2000 between slides' mean tissue color; in brackets a 6-slide
  cohort, ``tupac synth --slides 6 --seed 3``): reference estimator 28% (35%), measured ``Io``
  alone 41% (42%), OD-magnitude rule alone 81% (81%), both 87% (86%). The E vector then lies
  within 1-2 degrees of the truth instead of ~9.

The transform is ``Io_ref * exp(-(OD_src @ A.T))`` with ``OD_src = -log((I + 1) / Io_src)`` and one
3x3 matrix ``A = HE_ref @ diag(maxC_ref / maxC_src) @ pinv(HE_src)``, so it is a function of the
pixel only. With ``Io = 240`` on both sides it is the reference implementation's transform.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tupac.preprocess.stain.base import Params, StainMethod, register_method

IO = 240.0
ALPHA = 1.0
BETA = 0.15
MAX_FIT_PIXELS = 2_000_000
MIN_TISSUE_PIXELS = 100
MIN_GLASS_PIXELS = 1000
OD_FLOOR = 0.04
"""Least OD per channel for a pixel to inform the whole-slide stain vectors: 10 gray levels below
the white. A channel closer to white (or clipped at 255) has no measurable absorbance, and its
direction is noise (on real slides it bends the eosin vector to negative red)."""

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


def _fit_od(od: np.ndarray, stained: np.ndarray, io: np.ndarray):
    """Stain matrix from the ``stained`` rows of ``od`` (n, 3) and 99th-percentile concentrations
    over every row (as the reference implementation does); None if < 100 stained pixels."""
    tissue = od[stained]
    if tissue.shape[0] < MIN_TISSUE_PIXELS:
        return None
    he = stain_matrix(tissue)
    conc = np.linalg.pinv(he) @ od.T  # (2, n)
    max_c = np.percentile(conc, 99, axis=1)
    max_c = np.maximum(max_c, 1e-3)  # an image with (almost) no eosin or hematoxylin
    return {"stain_matrix": he, "max_conc": max_c, "io": io}, int(od.shape[0])


def fit_tiles(tiles: Sequence[np.ndarray], seed: int = 0):
    """The reference implementation's fit on the pixels of ``tiles`` (``Io = 240``, a pixel is
    stained when every channel's OD >= beta); None if < 100 stained pixels."""
    od = _OD_LUT[_pixels(tiles, seed)].astype(np.float64)
    return _fit_od(od, ~np.any(od < BETA, axis=1), np.full(3, IO))


def white_point(glass: np.ndarray) -> np.ndarray:
    """``Io`` per channel, (3,) float64: the median of ``I + 1`` over ``glass`` pixels ((n, 3)
    uint8), so that glass has OD 0 in ``-log((I + 1) / Io)``.

    Pixels darker than ``beta`` OD (at ``Io = 240``) are left out, so tissue the mask missed, dust
    or pen do not pull the white down; with fewer than :data:`MIN_GLASS_PIXELS` left (no glass
    on the slide), the reference implementation's 240 is returned.
    """
    glass = np.asarray(glass, dtype=np.uint8).reshape(-1, 3)
    bright = glass[np.linalg.norm(_OD_LUT[glass], axis=1) < BETA]
    if bright.shape[0] < MIN_GLASS_PIXELS:
        return np.full(3, IO)
    return np.median(bright.astype(np.float64), axis=0) + 1.0


def fit_slide_tiles(tiles: Sequence[np.ndarray], glass: np.ndarray, seed: int = 0):
    """The whole-slide fit (see the module docstring): ``Io`` measured on the slide's glass, and a
    pixel is stained when the norm of its OD is >= beta and every channel's OD >= ``OD_FLOOR``;
    None if < 100 stained pixels."""
    io = white_point(glass)
    od = _OD_LUT[_pixels(tiles, seed)].astype(np.float64) + np.log(io / IO)  # -log((I + 1) / io)
    stained = (np.linalg.norm(od, axis=1) >= BETA) & np.all(od >= OD_FLOOR, axis=1)
    return _fit_od(od, stained, io)


def mixing_matrix(src: Params, ref: Params) -> np.ndarray:
    """The 3x3 matrix ``A`` of the transform ``OD_out = A @ OD_in`` (float32)."""
    he_s = np.asarray(src["stain_matrix"], dtype=np.float64)
    he_r = np.asarray(ref["stain_matrix"], dtype=np.float64)
    ratio = np.asarray(ref["max_conc"], dtype=np.float64) / np.asarray(src["max_conc"], dtype=np.float64)
    a = he_r @ np.diag(ratio) @ np.linalg.pinv(he_s)
    return np.nan_to_num(a).astype(np.float32)


def _io(params: Params) -> np.ndarray:
    """The white ``Io`` (3,) float32 of a parameter set (240 where a reference predates it)."""
    return np.asarray(params["io"], dtype=np.float32) if "io" in params else np.full(3, IO, np.float32)


def transform_pixels(rgb: np.ndarray, src: Params, ref: Params) -> np.ndarray:
    """Macenko-normalize ``(n, 3)`` uint8 pixels; returns ``(n, 3)`` uint8."""
    a = mixing_matrix(src, ref)
    io_src, io_ref = _io(src), _io(ref)
    # OD_src = OD_240 + log(io_src / 240), so A @ OD_src = A @ OD_240 + offset (0 when io_src is 240)
    offset = (a.astype(np.float64) @ np.log(io_src.astype(np.float64) / IO)).astype(np.float32)
    od = _OD_LUT[rgb]
    o0, o1, o2 = od[:, 0], od[:, 1], od[:, 2]
    out = np.empty(rgb.shape, dtype=np.uint8)
    for c in range(3):  # written out per channel (not BLAS) so results are batch-independent
        od_c = a[c, 0] * o0 + a[c, 1] * o1 + a[c, 2] * o2
        if offset[c] != 0:
            od_c += offset[c]
        # clip OD at the low end only: Io * exp(1) > 255 is white anyway, and exp stays finite
        v = io_ref[c] * np.exp(-np.clip(od_c, np.float32(-1.0), np.float32(30.0)))
        out[:, c] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return out


METHOD = register_method(StainMethod(
    name="macenko",
    fit_tiles=fit_tiles,
    transform_pixels=transform_pixels,
    param_shapes={"stain_matrix": (3, 2), "max_conc": (2,)},
    fit_slide_tiles=fit_slide_tiles,
    optional_shapes={"io": (3,)},
))
fit = METHOD.fit
fit_image = METHOD.fit_image
fit_slide = METHOD.fit_slide
transform = METHOD.transform
