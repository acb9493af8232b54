"""Synthetic tumor-edge patches: half of a tumor patch and half of a non-tumor patch, labelled by the center.

Ground truth labels a location by the tissue *at* it, and a heatmap cell by the patch centered on
it. A patch classifier learns that rule only from patches that straddle a tumor boundary, and
tumor training has none it can trust: ROI positives lie deep inside tumor, and negatives keep a
margin from every known or suspected tumor (:mod:`tupac.tumor.sampling`), because the unannotated
rim would otherwise be taught as non-tumor. Left to extrapolate across that gap, a model places
the boundary wherever its features happen to switch: the stage-1 map falls inside the true outline
(mixed patches look like the stroma negatives), and the stage-2 map's boundary moves steeply with
the margin.

Compositing fills the gap with labels that are right by construction. Two patches of the same
slide, one tumor and one not, already stain-standardized, are cut along a straight line at a
random angle and a random signed distance from the center; the output takes the tumor patch on
one side and the non-tumor patch on the other, and its label is the side the center falls on. A
tumor edge seen at patch scale (100 um for LocNet) is close to such a cut, and the model learns to
call tumor exactly where the center is tumor, whatever the margin.

Everything is pure numpy: patches and a seeded generator in, patches and labels out.
"""

from __future__ import annotations

import numpy as np


def edge_composites(
    tumor: np.ndarray,
    non_tumor: np.ndarray,
    n: int,
    rng: np.random.Generator,
    max_offset_frac: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut random tumor / non-tumor pairs along straight lines and label each by its center.

    Parameters
    ----------
    tumor, non_tumor : ndarray of uint8, shape (n_t, P, P, C) and (n_n, P, P, C)
        Patches of one slide (already standardized), tumor and non-tumor.
    n : int
        Number of composites wanted (0 when either input is empty).
    rng : numpy Generator
        Chooses the pairs, the cut angles and the offsets.
    max_offset_frac : float
        The cut passes at a signed distance from the center drawn uniformly in
        ``[-f, f] * P / 2`` pixels; the default leaves each side at least 10 % of the patch area,
        roughly, so every composite shows both tissues.

    Returns
    -------
    images : ndarray of uint8, shape (m, P, P, C)
        ``m = n``, or 0 when either input is empty.
    labels : ndarray of int64, shape (m,)
        1 where the patch center lies on the tumor side of the cut.
    """
    tumor, non_tumor = np.asarray(tumor), np.asarray(non_tumor)
    if n <= 0 or len(tumor) == 0 or len(non_tumor) == 0:
        shape = (0,) + (tumor.shape[1:] if tumor.ndim == 4 else non_tumor.shape[1:])
        return np.zeros(shape, np.uint8), np.zeros((0,), np.int64)
    if not 0.0 < max_offset_frac <= 1.0:
        raise ValueError(f"max_offset_frac={max_offset_frac}, expected in (0, 1]")
    p = tumor.shape[1]
    ia = rng.integers(0, len(tumor), n)
    ib = rng.integers(0, len(non_tumor), n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    offset = rng.uniform(-max_offset_frac, max_offset_frac, n) * p / 2
    # Pixel centers relative to the patch center, which lies between pixels for even P (and on
    # the middle pixel for odd P), so the label is exactly the side of (0, 0).
    c = np.arange(p, dtype=np.float32) - (p - 1) / 2.0
    along = np.cos(angle)[:, None, None] * c[None, None, :] + np.sin(angle)[:, None, None] * c[None, :, None]
    tumor_side = along < offset[:, None, None]  # (n, P, P); the center (0) is tumor iff offset > 0
    images = np.where(tumor_side[..., None], tumor[ia], non_tumor[ib])
    return images.astype(np.uint8, copy=False), (offset > 0).astype(np.int64)
