"""Whole-slide image color standardization, WSICS (Ehteshami Bejnordi et al., IEEE TMI 2016).

1. Pixels go to the hue-saturation-density model (HSD: chromatic ``cx, cy`` and density ``D``,
   see :mod:`tupac.preprocess.color`).
2. Classes, seeded with a priori knowledge: *hematoxylin* seeds are pixels of dark blobs (dense
   pixels, more red-absorbing than the tissue's typical pixel, in connected groups that survive
   an opening: nuclei); *eosin* seeds are the other, less red-absorbing tissue pixels away from
   those blobs; *background* seeds are pixels lighter than glass-level density. A Gaussian per
   class in ``(cx, cy, D)`` is fitted on its seeds; its posterior is then the class membership of
   every pixel. The posterior depends on the pixel's own value only (blob detection is used to
   *fit*, never to *apply*), so overlapping tiles of a slide get identical pixels.
3. Per class, membership-weighted statistics: the chromatic distribution (mean and 2x2
   covariance) and the density distribution (percentiles).
4. Transform, per class: the chromatic distribution is moved onto the template's by the affine
   map that takes one Gaussian to the other with the least displacement (translation plus the
   symmetric matrix ``S_t^1/2 (S_t^1/2 S_s S_t^1/2)^-1/2 S_t^1/2``: it aligns and rescales the
   principal axes without the arbitrary rotation an eigenvector pairing can introduce when a
   class is nearly isotropic); the density goes through the percentile-matching curve. The
   results of the classes are blended with the pixel's posterior and converted back to RGB.
   The background class is left as it is: a template's "background" is often pale tissue or
   lumen rather than glass (a tumor field has little glass), and mapping glass onto it tints the
   glass; keeping it as a class still lets pale pixels blend smoothly between glass and tissue.

Parameters (``SlideStainStats.params``), classes in the order (hematoxylin, eosin, background):

- ``present``: (3,) 1.0 where the class had enough seeds, else 0.0.
- ``gauss_mean``: (3, 3) class means of ``(cx, cy, D)``; ``gauss_prec``: (3, 3, 3) precision
  matrices; ``gauss_logc``: (3,) log prior minus half the log-determinant of the covariance.
- ``chroma_mean``: (3, 2), ``chroma_cov``: (3, 2, 2): membership-weighted chromatic statistics.
- ``density_q``: (3, 101) membership-weighted density percentiles 0, 1, ..., 100 (ends at 0.1 and 99.9).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from tupac.preprocess.color import hsd_to_rgb, rgb_to_hsd
from tupac.preprocess.stain.base import Params, StainMethod, register_method

CLASSES = ("hematoxylin", "eosin", "background")
H, E, B = 0, 1, 2
BG_DENSITY = 0.10
"""Mean optical density below which a pixel is a background seed (about RGB 231 gray)."""
MIN_CLASS_PIXELS = 50
MIN_BLOB_PX = 6
MAX_FIT_PIXELS = 1_000_000
PERCENTILES = np.concatenate([[0.1], np.arange(1.0, 100.0), [99.9]])
D_MAX = 6.0  # above ln(256): every 8-bit density lies below
_COV_REG = np.float64(1e-5)


# --- fitting -----------------------------------------------------------------------------------


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size < 2 or np.ptp(values) == 0:
        return float(np.median(values)) if values.size else 0.0
    return float(threshold_otsu(values))


def seed_masks(hsd_tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per tile, an int8 map of seeds: 0 hematoxylin, 1 eosin, 2 background, -1 none.

    Parameters
    ----------
    hsd_tiles : sequence of ndarray of float32, each (h, w, 3)
        Tiles in HSD ``(cx, cy, D)``.
    """
    tissue_d, tissue_cx = [], []
    for t in hsd_tiles:
        m = t[..., 2] >= BG_DENSITY
        tissue_d.append(t[..., 2][m])
        tissue_cx.append(t[..., 0][m])
    d_all, cx_all = np.concatenate(tissue_d), np.concatenate(tissue_cx)
    # dense and red-absorbing relative to this slide's tissue: thresholds adapt to the stain
    t_d, t_cx = _otsu(d_all), _otsu(cx_all)
    open_se = ndi.generate_binary_structure(2, 1)
    seeds = []
    for t in hsd_tiles:
        cx, d = t[..., 0], t[..., 2]
        tissue = d >= BG_DENSITY
        d_s = ndi.gaussian_filter(d, 1.0)
        cx_s = ndi.gaussian_filter(cx, 1.0)
        cand = tissue & (d_s > t_d) & (cx_s > t_cx)
        blobs = ndi.binary_opening(cand, open_se)
        lab, n = ndi.label(blobs)
        if n:
            sizes = np.bincount(lab.ravel())
            keep = sizes >= MIN_BLOB_PX
            keep[0] = False
            blobs = keep[lab]
        s = np.full(d.shape, -1, dtype=np.int8)
        s[~tissue] = B
        near_nuclei = ndi.binary_dilation(cand, iterations=2)
        s[tissue & ~near_nuclei & (cx <= t_cx)] = E
        s[blobs] = H
        seeds.append(s)
    return seeds


def _gaussian(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    if w is None:
        w = np.ones(x.shape[0])
    w = w / w.sum()
    mean = w @ x
    d = x - mean
    cov = (d * w[:, None]).T @ d + _COV_REG * np.eye(x.shape[1])
    return mean, cov


def _weighted_percentiles(values: np.ndarray, w: np.ndarray, order: np.ndarray) -> np.ndarray:
    v, cw = values[order], np.cumsum(w[order])
    cw = (cw - 0.5 * w[order]) / cw[-1] * 100.0
    return np.interp(PERCENTILES, cw, v)


def fit_tiles(tiles: Sequence[np.ndarray], seed: int = 0):
    """Fit the class model and the per-class statistics on ``tiles`` ((h, w, 3) uint8 each)."""
    hsd_tiles = [rgb_to_hsd(t) for t in tiles]
    seeds = seed_masks(hsd_tiles)
    x = np.concatenate([t.reshape(-1, 3) for t in hsd_tiles]).astype(np.float64)
    s = np.concatenate([m.ravel() for m in seeds])
    rng = np.random.default_rng(seed)
    if x.shape[0] > MAX_FIT_PIXELS:
        keep = rng.choice(x.shape[0], MAX_FIT_PIXELS, replace=False)
        x, s = x[keep], s[keep]
    present = np.array([np.count_nonzero(s == k) >= MIN_CLASS_PIXELS for k in range(3)])
    if not (present[H] or present[E]):
        return None  # no tissue: nothing to standardize
    g_mean = np.zeros((3, 3))
    g_prec = np.tile(np.eye(3), (3, 1, 1))
    g_logc = np.zeros(3)
    n_seeds = np.array([np.count_nonzero(s == k) for k in range(3)], dtype=np.float64)
    prior = n_seeds / n_seeds[present].sum()
    for k in np.flatnonzero(present):
        mean, cov = _gaussian(x[s == k])
        g_mean[k], g_prec[k] = mean, np.linalg.inv(cov)
        g_logc[k] = np.log(prior[k]) - 0.5 * np.linalg.slogdet(cov)[1]
    params = {"present": present.astype(np.float32), "gauss_mean": g_mean, "gauss_prec": g_prec, "gauss_logc": g_logc}
    post = posterior(x.astype(np.float32), params).astype(np.float64)
    chroma_mean, chroma_cov = np.zeros((3, 2)), np.tile(np.eye(2) * 1e-2, (3, 1, 1))
    density_q = np.tile(np.linspace(0.0, 1.0, PERCENTILES.size), (3, 1))
    order = np.argsort(x[:, 2], kind="stable")
    for k in np.flatnonzero(present):
        w = post[:, k]
        if w.sum() < 1.0:
            present[k] = False
            continue
        chroma_mean[k], chroma_cov[k] = _gaussian(x[:, :2], w)
        density_q[k] = _weighted_percentiles(x[:, 2], w, order)
    params.update(
        present=present.astype(np.float32), chroma_mean=chroma_mean, chroma_cov=chroma_cov, density_q=density_q
    )
    return params, int(x.shape[0])


# --- applying ----------------------------------------------------------------------------------


def posterior(hsd: np.ndarray, params: Params) -> np.ndarray:
    """Class membership of each pixel, from its HSD value only.

    Parameters
    ----------
    hsd : ndarray of float32, shape (n, 3)
    params : the fitted parameters

    Returns
    -------
    ndarray of float32, shape (n, 3)
        Rows sum to 1; absent classes get 0.
    """
    present = np.asarray(params["present"]) > 0.5
    mean = np.asarray(params["gauss_mean"], np.float32)
    prec = np.asarray(params["gauss_prec"], np.float32)
    logc = np.asarray(params["gauss_logc"], np.float32)
    logp = np.full((hsd.shape[0], 3), np.float32(-np.inf), dtype=np.float32)
    for k in np.flatnonzero(present):
        d0, d1, d2 = hsd[:, 0] - mean[k, 0], hsd[:, 1] - mean[k, 1], hsd[:, 2] - mean[k, 2]
        p = prec[k]
        maha = p[0, 0] * d0 * d0 + p[1, 1] * d1 * d1 + p[2, 2] * d2 * d2
        maha += np.float32(2.0) * (p[0, 1] * d0 * d1 + p[0, 2] * d0 * d2 + p[1, 2] * d1 * d2)
        logp[:, k] = np.maximum(logc[k] - np.float32(0.5) * maha, np.float32(-1e30))
    logp -= logp.max(axis=1, keepdims=True)
    prob = np.exp(logp)
    prob /= prob.sum(axis=1, keepdims=True)
    return prob


def classify(rgb: np.ndarray, stats_params: Params) -> np.ndarray:
    """Class membership ``(..., 3)`` float32 of ``(..., 3)`` uint8 pixels (H, E, background)."""
    hsd = rgb_to_hsd(rgb)
    return posterior(hsd.reshape(-1, 3), stats_params).reshape(hsd.shape)


def _sqrtm(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(s)
    return (vecs * np.sqrt(np.maximum(vals, 0.0))) @ vecs.T


def chroma_map(cov_src: np.ndarray, cov_ref: np.ndarray) -> np.ndarray:
    """The symmetric 2x2 matrix that takes a centered Gaussian of covariance ``cov_src`` to one of
    ``cov_ref`` with the least displacement: ``T S_s T = S_r``."""
    r = _sqrtm(cov_ref)
    mid = _sqrtm(r @ cov_src @ r)
    return r @ np.linalg.pinv(mid) @ r


def _density_knots(q_src: np.ndarray, q_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the monotone density curve: percentiles matched, 0 -> 0, linear past the top."""
    xs = np.maximum.accumulate(np.concatenate([[0.0], q_src, [D_MAX]]))
    xs = xs + np.arange(xs.size) * 1e-7  # strictly increasing for interp
    ys = np.maximum.accumulate(np.concatenate([[0.0], q_ref, [0.0]]))
    top_src = max(float(q_src[-1]), 1e-3)
    ys[-1] = q_ref[-1] + (D_MAX - q_src[-1]) * (q_ref[-1] / top_src)
    return xs.astype(np.float32), ys.astype(np.float32)


def transform_pixels(rgb: np.ndarray, src: Params, ref: Params) -> np.ndarray:
    """WSICS-standardize ``(n, 3)`` uint8 pixels; returns ``(n, 3)`` uint8."""
    hsd = rgb_to_hsd(rgb)
    prob = posterior(hsd, src)
    cx, cy, d = hsd[:, 0], hsd[:, 1], hsd[:, 2]
    out = np.zeros_like(hsd)
    both = (np.asarray(src["present"]) > 0.5) & (np.asarray(ref["present"]) > 0.5)
    for k in np.flatnonzero(np.asarray(src["present"]) > 0.5):
        p = prob[:, k]
        if both[k] and k != B:
            m = chroma_map(np.asarray(src["chroma_cov"][k], np.float64), np.asarray(ref["chroma_cov"][k], np.float64))
            m = m.astype(np.float32)
            mu_s = np.asarray(src["chroma_mean"][k], np.float32)
            mu_r = np.asarray(ref["chroma_mean"][k], np.float32)
            u, v = cx - mu_s[0], cy - mu_s[1]
            cx_k = m[0, 0] * u + m[0, 1] * v + mu_r[0]
            cy_k = m[1, 0] * u + m[1, 1] * v + mu_r[1]
            xs, ys = _density_knots(np.asarray(src["density_q"][k], np.float64), np.asarray(ref["density_q"][k], np.float64))
            d_k = np.interp(d, xs, ys).astype(np.float32)
        else:  # background (glass), or a class the template lacks: left as it is
            cx_k, cy_k, d_k = cx, cy, d
        out[:, 0] += p * cx_k
        out[:, 1] += p * cy_k
        out[:, 2] += p * d_k
    # chromatic coordinates outside the HSD range would mean negative densities: clamp them
    out[:, 0] = np.clip(out[:, 0], -1.0, 2.0)
    cy_max = (np.float32(2.0) - out[:, 0]) / np.float32(np.sqrt(3.0))  # keeps D_g, D_b >= 0
    out[:, 1] = np.clip(out[:, 1], -cy_max, cy_max)
    out[:, 2] = np.clip(out[:, 2], 0.0, D_MAX)
    return hsd_to_rgb(out)


METHOD = register_method(StainMethod(
    name="wsics",
    fit_tiles=fit_tiles,
    transform_pixels=transform_pixels,
    param_shapes={
        "present": (3,),
        "gauss_mean": (3, 3),
        "gauss_prec": (3, 3, 3),
        "gauss_logc": (3,),
        "chroma_mean": (3, 2),
        "chroma_cov": (3, 2, 2),
        "density_q": (3, PERCENTILES.size),
    },
))
fit = METHOD.fit
fit_image = METHOD.fit_image
fit_slide = METHOD.fit_slide
transform = METHOD.transform
