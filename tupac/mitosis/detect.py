"""Mitosis detections from a probability heatmap, and the choice of the detection threshold.

Coordinate mapping
------------------
A network that reads an image (the *input frame*: pixels of the image fed to the network, e.g. a
40x tile) and writes a heatmap with output stride ``stride_px`` places heatmap cell ``(i, j)``
(row ``i``, column ``j``) at the input-frame pixel centre::

    x_in = offset_px + j * stride_px
    y_in = offset_px + i * stride_px

where ``offset_px`` is the input-frame coordinate of cell ``(0, 0)`` (for a valid-convolution net
with a ``P``-pixel receptive field, ``offset_px = (P - 1) / 2``). The input frame maps to level-0
pixels by::

    x_l0 = origin_xy_l0[0] + scale_l0 * x_in
    y_l0 = origin_xy_l0[1] + scale_l0 * y_in

with ``origin_xy_l0`` the level-0 position of the input image's pixel ``(0, 0)`` and ``scale_l0``
the level-0 pixels per input pixel (``input_mpp / slide_mpp``; 1 when the net runs at level 0).
Pixel centres are at integer coordinates throughout, as in ``geometry.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from tupac.mitosis.scoring import TUPAC_RADIUS_PX, _as_xy

__all__ = ["DETECTION_COLUMNS", "choose_threshold", "detect_from_heatmap", "nms", "ranked_detections"]

DETECTION_COLUMNS = ("x", "y", "prob")


def _empty_detections() -> pd.DataFrame:
    return pd.DataFrame(
        {"x": np.zeros(0, np.float64), "y": np.zeros(0, np.float64), "prob": np.zeros(0, np.float32)}
    )


def nms(xy: np.ndarray, score: np.ndarray, radius: float) -> np.ndarray:
    """Greedy non-maximum suppression of points.

    Points are visited by descending score (ties by index); a point is kept unless a kept point
    lies within ``radius`` (``<=``) of it.

    Parameters
    ----------
    xy : ndarray, shape (n, 2)
        Point coordinates.
    score : ndarray, shape (n,)
        Higher is better.
    radius : float
        Suppression radius, same units as ``xy``; ``<= 0`` keeps every point.

    Returns
    -------
    ndarray of int64, shape (k,)
        Indices of the kept points, by descending score.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    score = np.asarray(score).reshape(-1)
    if len(xy) != len(score):
        raise ValueError(f"xy has {len(xy)} points but score has {len(score)}")
    order = np.argsort(-score, kind="stable")
    if radius <= 0 or len(xy) < 2:
        return order.astype(np.int64)
    from scipy.spatial import cKDTree

    neighbours = cKDTree(xy).query_ball_point(xy, r=radius)
    suppressed = np.zeros(len(xy), dtype=bool)
    kept = []
    # Greedy NMS is sequential by nature; the loop is over candidates (local maxima), not pixels.
    for i in order:
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed[neighbours[i]] = True
    return np.asarray(kept, dtype=np.int64)


def detect_from_heatmap(
    prob: np.ndarray,
    stride_px: float,
    offset_px: float,
    threshold: float,
    sigma_px: float,
    nms_radius_px: float,
    origin_xy_l0: tuple[float, float] = (0.0, 0.0),
    scale_l0: float = 1.0,
) -> pd.DataFrame:
    """Mitosis detections from a heatmap: smooth, local maxima above a threshold, NMS.

    Parameters
    ----------
    prob : ndarray of float, shape (h, w)
        Mitosis probability per heatmap cell; not modified.
    stride_px : float
        Input-frame pixels between neighbouring heatmap cells (the network's output stride).
    offset_px : float
        Input-frame coordinate of the centre of cell ``(0, 0)`` (see the module docstring).
    threshold : float
        Keep maxima whose smoothed probability is ``>= threshold``.
    sigma_px : float
        Gaussian smoothing sigma in input-frame pixels (0 disables); converted to cells by
        dividing by ``stride_px``.
    nms_radius_px : float
        Suppression radius in input-frame pixels.
    origin_xy_l0 : (float, float)
        Level-0 position of input pixel ``(0, 0)``.
    scale_l0 : float
        Level-0 pixels per input-frame pixel.

    Returns
    -------
    DataFrame
        Columns ``x`` (float64), ``y`` (float64) in level-0 pixels and ``prob`` (float32, the
        smoothed probability at the maximum), sorted by descending ``prob``.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"prob must be a 2-D heatmap, got shape {prob.shape}")
    if stride_px <= 0 or scale_l0 <= 0:
        raise ValueError(f"stride_px and scale_l0 must be positive, got {stride_px}, {scale_l0}")
    if prob.size == 0:
        return _empty_detections()
    p = prob.astype(np.float32, copy=True)
    if sigma_px > 0:
        p = ndi.gaussian_filter(p, sigma=sigma_px / stride_px, mode="nearest")
    # A cell is a local maximum when no 8-neighbour is higher; plateaus give several, which NMS merges.
    peak = (p == ndi.maximum_filter(p, size=3, mode="nearest")) & (p >= threshold)
    ii, jj = np.nonzero(peak)
    if ii.size == 0:
        return _empty_detections()
    score = p[ii, jj]
    x_in = offset_px + jj * float(stride_px)
    y_in = offset_px + ii * float(stride_px)
    keep = nms(np.stack([x_in, y_in], axis=1), score, nms_radius_px)
    return pd.DataFrame(
        {
            "x": origin_xy_l0[0] + scale_l0 * x_in[keep],
            "y": origin_xy_l0[1] + scale_l0 * y_in[keep],
            "prob": score[keep].astype(np.float32),
        }
    )


def _augmenting_flags(pred_xy: np.ndarray, truth_xy: np.ndarray, radius: float) -> np.ndarray:
    """For detections added one at a time (in the given order), whether each one grows the
    maximum one-to-one matching.

    The maximum matching of a prefix grows by at most one per added detection, and it grows exactly
    when an augmenting path starts at the new detection (Berge), so Kuhn's algorithm run in order
    gives the true-positive count of every prefix: ``cumsum(flags)``.
    """
    n, m = len(pred_xy), len(truth_xy)
    flags = np.zeros(n, dtype=bool)
    if n == 0 or m == 0:
        return flags
    from scipy.spatial import cKDTree

    adj = cKDTree(pred_xy).query_ball_tree(cKDTree(truth_xy), r=radius)
    truth_match = np.full(m, -1, dtype=np.int64)
    for d in range(n):
        if adj[d]:
            flags[d] = _augment(d, adj, truth_match)
    return flags


def _augment(d: int, adj: list[list[int]], truth_match: np.ndarray) -> bool:
    """Look for an augmenting path from free detection ``d`` (iterative DFS); apply it if found.

    ``stack[k]`` holds a detection on the path and ``via[k]`` the truth leading from it to
    ``stack[k + 1]`` (that truth's current owner), so ``len(via) == len(stack) - 1`` between steps.
    """
    visited = np.zeros(len(truth_match), dtype=bool)
    stack = [(d, iter(adj[d]))]
    via: list[int] = []
    while stack:
        u, candidates = stack[-1]
        for t in candidates:
            if visited[t]:
                continue
            visited[t] = True
            via.append(t)
            owner = int(truth_match[t])
            if owner < 0:
                # Free truth reached: each detection on the path takes the next truth.
                for (u_k, _), t_k in zip(stack, via):
                    truth_match[t_k] = u_k
                return True
            stack.append((owner, iter(adj[owner])))
            break
        else:
            stack.pop()
            if via:
                via.pop()
    return False


def ranked_detections(
    detections_per_image: Sequence[pd.DataFrame],
    truths_per_image: Sequence,
    radius: float = TUPAC_RADIUS_PX,
) -> tuple[np.ndarray, np.ndarray, int]:
    """All validation detections pooled and sorted by decreasing ``prob``, each flagged when it
    adds a true positive (the pooled TP of ``prob >= p[k]`` is ``cumsum(flags)[k]`` at the last
    index of each run of equal probabilities).

    Parameters
    ----------
    detections_per_image, truths_per_image, radius
        As in :func:`choose_threshold`.

    Returns
    -------
    probs : ndarray of float64, shape (n,)
        Detection probabilities, descending.
    flags : ndarray of bool, shape (n,)
        Whether each detection grows the one-to-one matching (a true positive).
    n_truth : int
        Ground-truth mitoses over all images.
    """
    if len(detections_per_image) != len(truths_per_image):
        raise ValueError(
            f"got {len(detections_per_image)} detection frames but {len(truths_per_image)} truth sets"
        )
    probs, flags = [], []
    n_truth = 0
    for det, truth in zip(detections_per_image, truths_per_image):
        truth_xy = _as_xy(truth, "truth")
        n_truth += len(truth_xy)
        p = det["prob"].to_numpy(dtype=np.float64)
        order = np.argsort(-p, kind="stable")
        xy = _as_xy(det, "detections")[order]
        probs.append(p[order])
        flags.append(_augmenting_flags(xy, truth_xy, radius))
    p = np.concatenate(probs) if probs else np.zeros(0)
    f = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    # Stable global sort keeps each image's within-image order, so the flags stay valid.
    order = np.argsort(-p, kind="stable")
    return p[order], f[order], n_truth


def choose_threshold(
    detections_per_image: Sequence[pd.DataFrame],
    truths_per_image: Sequence,
    radius: float = TUPAC_RADIUS_PX,
) -> tuple[float, float]:
    """Threshold on ``prob`` that maximises the pooled F1 over validation images.

    Every distinct detection probability is a candidate threshold (keep ``prob >= t``); the pooled
    TP at all of them comes from one ordered pass of incremental maximum matching per image
    (exactly the one-to-one TP of :func:`tupac.mitosis.scoring.score_image`), then FP, FN and F1
    for all thresholds at once.

    Parameters
    ----------
    detections_per_image : sequence of DataFrame
        Columns ``x``, ``y``, ``prob``, one frame per image, detected with a low threshold.
    truths_per_image : sequence of array-like (m, 2) or DataFrame with ``x``, ``y``
        Ground truth of the same images, same order and frame.
    radius : float
        Match radius in pixels.

    Returns
    -------
    threshold : float
        The best threshold; the highest one on ties (fewer detections for the same F1).
        ``inf`` when there are no detections.
    f1 : float
        Pooled F1 at that threshold (NaN when there is neither a detection nor a truth).
    """
    p, f, n_truth = ranked_detections(detections_per_image, truths_per_image, radius)
    if p.size == 0:
        return float("inf"), (0.0 if n_truth else float("nan"))
    tp = np.cumsum(f)
    n_kept = np.arange(1, p.size + 1)
    # Only the last index of each run of equal probabilities is a reachable threshold.
    last = np.r_[p[1:] != p[:-1], True]
    tp, n_kept, thr = tp[last], n_kept[last], p[last]
    f1 = 2 * tp / (n_kept + n_truth)
    best = int(np.flatnonzero(f1 == f1.max())[0])  # thresholds descend, so first = highest
    return float(thr[best]), float(f1[best])
