"""Tumor regions from a tumor heatmap: resampling onto mask grids, thresholding, quality against truth.

A tumor heatmap (see :mod:`tupac.heatmaps.windows`) has cell ``(i, j)`` centered at
``(offset + j * stride, offset + i * stride)`` pixels at the model's mpp. Masks (tissue, truth) are
rasters at their own um/px with pixel ``(r, c)`` centered at ``((c + 0.5) * mpp, (r + 0.5) * mpp)``
um. :func:`heatmap_on_grid` maps one onto the other by nearest cell, which is all a 16 um heatmap
needs against 4-8 um masks.
"""

from __future__ import annotations

import numpy as np

from tupac.geometry import Frame, nearest_cells


def heatmap_on_grid(
    heatmap: np.ndarray,
    cell_um: float,
    offset_um: float,
    shape: tuple[int, int],
    grid_mpp: float,
) -> np.ndarray:
    """Sample a heatmap at the pixel centers of a raster at ``grid_mpp`` (nearest cell).

    Parameters
    ----------
    heatmap : ndarray, shape (rows, cols)
        Probabilities.
    cell_um : float
        Distance between heatmap cells in micrometers (``stride * mpp``).
    offset_um : float
        Position of cell 0's center in micrometers from the slide origin (``offset * mpp``).
    shape : (h, w)
        Target raster shape.
    grid_mpp : float
        Target raster um/px.

    Returns
    -------
    ndarray, shape ``shape``, dtype of ``heatmap``
        Points outside the heatmap take the nearest edge cell.
    """
    rows, cols = nearest_cells(Frame(cell_um, (offset_um, offset_um)), Frame(grid_mpp, shape=shape), heatmap.shape)
    return heatmap[np.ix_(rows, cols)]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, truth).sum() / denom)


def pixel_auroc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of per-pixel scores against a boolean truth (rank formula, ties averaged)."""
    from scipy.stats import rankdata

    y = np.asarray(truth, bool).ravel()
    s = np.asarray(score, np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def map_quality(prob_on_grid: np.ndarray, truth: np.ndarray, tissue: np.ndarray, threshold: float, grid_mpp: float) -> dict:
    """Quality of a tumor probability map against a true tumor mask, inside tissue.

    Parameters
    ----------
    prob_on_grid : ndarray, shape (h, w)
        Tumor probability resampled onto the truth grid.
    truth, tissue : ndarray of bool, shape (h, w)
        True tumor and tissue masks.
    threshold : float
        Probability above which a pixel is called tumor.
    grid_mpp : float
        um/px of the grid (for areas).

    Returns
    -------
    dict
        ``auroc`` (pixels inside tissue), ``dice``, ``fp_area_mm2`` (called tumor, truly not),
        ``fn_area_mm2``, ``tumor_area_mm2`` (truth), ``pred_area_mm2``.
    """
    inside = np.asarray(tissue, bool) | np.asarray(truth, bool)
    pred = (prob_on_grid > threshold) & inside
    px_mm2 = (grid_mpp / 1000.0) ** 2
    return {
        "auroc": pixel_auroc(prob_on_grid[inside], truth[inside]),
        "dice": dice(pred, truth),
        "fp_area_mm2": float((pred & ~truth).sum() * px_mm2),
        "fn_area_mm2": float((~pred & truth).sum() * px_mm2),
        "tumor_area_mm2": float(truth.sum() * px_mm2),
        "pred_area_mm2": float(pred.sum() * px_mm2),
    }


def best_threshold(prob: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold maximizing the F1 of the positive class on validation patches.

    Parameters
    ----------
    prob : ndarray, shape (n,)
        Predicted tumor probability per patch.
    labels : ndarray of int, shape (n,)
        1 = tumor.

    Returns
    -------
    (threshold, f1)
        Predictions ``prob > threshold`` are tumor. Every threshold between the chosen score and
        the next lower one gives the same F1; the threshold is 0.5 when it lies there (the
        natural cutoff of a model trained on balanced classes), else their midpoint, so it does
        not sit on a sample. Without that rule, validation patches that separate perfectly
        leave the threshold anywhere in a wide gap (0.04 to 0.82 were seen across trainings).
    """
    prob = np.asarray(prob, np.float64)
    y = np.asarray(labels).astype(bool)
    if y.sum() == 0 or prob.size == 0:
        return 0.5, float("nan")
    order = np.argsort(-prob, kind="stable")
    p, t = prob[order], y[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    f1 = 2 * tp / (tp + fp + y.sum())
    # Only cut between distinct scores.
    last_of_run = np.r_[p[1:] != p[:-1], True]
    f1 = np.where(last_of_run, f1, -1.0)
    k = int(np.argmax(f1))
    nxt = p[k + 1] if k + 1 < p.size else p[k] - 1e-6
    thr = 0.5 if nxt <= 0.5 < p[k] else (p[k] + nxt) / 2
    return float(thr), float(f1[k])
