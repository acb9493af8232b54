"""Mitosis detection scoring, as TUPAC16 task 3 scores it.

A detection is a true positive when it lies within ``radius`` pixels (30 px = 7.5 µm at 0.25 µm/px)
of a ground-truth mitosis, with one-to-one matching: each ground truth is matched to at most one
detection and each detection to at most one ground truth. The matching is a maximum-cardinality
assignment (``scipy.optimize.linear_sum_assignment`` on the distance matrix, pairs beyond the radius
priced out), so a detection lying between two mitoses never counts twice and a greedy nearest-first
choice never costs a true positive. F1 is pooled: TP, FP and FN are summed over all images first.

Points are ``(x, y)`` = ``(col, row)`` in pixels of the image; only distances matter, so any frame
works as long as detections and truths share it.

Undefined ratios (precision with no detections, recall with no truths, F1 with neither) are NaN.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["TUPAC_RADIUS_PX", "Counts", "match_points", "score_image", "score_images"]

TUPAC_RADIUS_PX = 30.0
"""TUPAC16 match radius in 40x pixels (7.5 µm at 0.25 µm/px)."""


def _as_xy(points, name: str) -> np.ndarray:
    """``(n, 2)`` float64 ``(x, y)`` from an array-like or a DataFrame with ``x``, ``y`` columns."""
    if isinstance(points, pd.DataFrame):
        arr = points[["x", "y"]].to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(points, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) as (x, y), got {arr.shape}")
    return arr


def match_points(pred_xy, truth_xy, radius: float = TUPAC_RADIUS_PX) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of detections to ground truths within ``radius``.

    Among all matchings with the most pairs, the one with the smallest total distance is returned.

    Parameters
    ----------
    pred_xy : array-like (n, 2) or DataFrame with ``x``, ``y``
        Detections.
    truth_xy : array-like (m, 2) or DataFrame with ``x``, ``y``
        Ground-truth mitoses.
    radius : float
        A pair matches when its Euclidean distance is ``<= radius`` (pixels).

    Returns
    -------
    pred_idx, truth_idx : ndarray of int64, shape (k,)
        Indices of the matched pairs; ``k`` is the number of true positives.
    """
    pred = _as_xy(pred_xy, "pred_xy")
    truth = _as_xy(truth_xy, "truth_xy")
    empty = np.zeros(0, dtype=np.int64)
    if len(pred) == 0 or len(truth) == 0:
        return empty, empty
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    dist = cdist(pred, truth)
    ok = dist <= radius
    # Only detections and truths with some partner inside the radius can be matched; dropping the
    # rest keeps the assignment small on images with thousands of low-probability detections.
    rows = np.flatnonzero(ok.any(axis=1))
    cols = np.flatnonzero(ok.any(axis=0))
    if rows.size == 0:
        return empty, empty
    sub = dist[np.ix_(rows, cols)]
    sub_ok = ok[np.ix_(rows, cols)]
    # A forbidden pair costs more than any full set of allowed pairs, so minimising the total cost
    # first maximises the number of allowed pairs, then minimises their total distance.
    forbidden = radius * (min(sub.shape) + 1) + 1.0
    cost = np.where(sub_ok, sub, forbidden)
    r, c = linear_sum_assignment(cost)
    keep = sub_ok[r, c]
    return rows[r[keep]].astype(np.int64), cols[c[keep]].astype(np.int64)


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives, with the ratios they give."""

    tp: int
    fp: int
    fn: int

    def __post_init__(self) -> None:
        if min(self.tp, self.fp, self.fn) < 0:
            raise ValueError(f"counts must be non-negative, got tp={self.tp} fp={self.fp} fn={self.fn}")

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); NaN when there are no detections."""
        d = self.tp + self.fp
        return self.tp / d if d else float("nan")

    @property
    def recall(self) -> float:
        """TP / (TP + FN); NaN when there are no ground truths."""
        d = self.tp + self.fn
        return self.tp / d if d else float("nan")

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall; NaN when all are 0."""
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else float("nan")

    def to_dict(self) -> dict[str, float | int | None]:
        """Counts and ratios, NaN written as ``None`` (JSON ``null``)."""
        out: dict[str, float | int | None] = {"tp": self.tp, "fp": self.fp, "fn": self.fn}
        for k in ("precision", "recall", "f1"):
            v = getattr(self, k)
            out[k] = None if np.isnan(v) else float(v)
        return out


def score_image(pred_xy, truth_xy, radius: float = TUPAC_RADIUS_PX) -> Counts:
    """TP/FP/FN of one image's detections against its ground truth (see :func:`match_points`)."""
    pred = _as_xy(pred_xy, "pred_xy")
    truth = _as_xy(truth_xy, "truth_xy")
    tp = len(match_points(pred, truth, radius)[0])
    return Counts(tp=tp, fp=len(pred) - tp, fn=len(truth) - tp)


def score_images(
    pairs: Iterable[tuple[str, object, object]], radius: float = TUPAC_RADIUS_PX
) -> tuple[Counts, pd.DataFrame]:
    """Score many images and pool the counts.

    Parameters
    ----------
    pairs : iterable of (image_id, pred_xy, truth_xy)
        One entry per image; points as in :func:`match_points`.
    radius : float
        Match radius in pixels.

    Returns
    -------
    pooled : Counts
        TP, FP, FN summed over images (the TUPAC16 F1 is ``pooled.f1``).
    per_image : DataFrame
        Columns ``image, n_pred, n_truth, tp, fp, fn, precision, recall, f1``, one row per image.
    """
    rows = []
    pooled = Counts(0, 0, 0)
    for image_id, pred, truth in pairs:
        c = score_image(pred, truth, radius)
        pooled = pooled + c
        rows.append(
            {
                "image": str(image_id),
                "n_pred": c.tp + c.fp,
                "n_truth": c.tp + c.fn,
                "tp": c.tp,
                "fp": c.fp,
                "fn": c.fn,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
            }
        )
    cols = ["image", "n_pred", "n_truth", "tp", "fp", "fn", "precision", "recall", "f1"]
    return pooled, pd.DataFrame(rows, columns=cols)
