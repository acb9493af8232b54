"""Training samples for the mitosis detector: candidate nuclei, their labels, patches, hard negatives.

The paper trains on candidate nuclei: every nucleus the morphology finds is a candidate; those at
an annotated mitosis are positives, a random sample of the others are negatives. After stage 1 the
detector's confident mistakes on the training images (*hard negatives*) join the negatives.

Everything here is pure: arrays in, arrays out. Points are ``(x, y)`` in image pixels (40x,
0.25 um/px), pixel centres at integer coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tupac.mitosis.scoring import TUPAC_RADIUS_PX
from tupac.preprocess.nuclei import find_nuclei

__all__ = [
    "CandidateLabels",
    "candidate_nuclei",
    "extract_patches",
    "hard_negatives",
    "jittered",
    "label_candidates",
]


def candidate_nuclei(rgb: np.ndarray, mpp: float = 0.25, work_mpp: float = 0.5) -> np.ndarray:
    """Centroids of the candidate nuclei of an H&E image.

    Nuclei are found by :func:`tupac.preprocess.nuclei.find_nuclei` on the image area-averaged to
    ``work_mpp``: a candidate only needs its centroid (to ~2 px), and at 0.5 um/px the morphology
    runs ~15x faster than at 0.25 um/px on a 2000x2000 field while finding the same nuclei.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
        The image (stain-standardized or not); not modified.
    mpp : float
        Resolution of ``rgb`` in um/px.
    work_mpp : float
        Resolution the morphology runs at; an integer multiple of ``mpp`` is used (at least 1).

    Returns
    -------
    ndarray of float64, shape (n, 2)
        ``(x, y)`` centroids in ``rgb`` pixels.
    """
    rgb = np.asarray(rgb)
    f = max(1, int(round(work_mpp / mpp)))
    h, w = (rgb.shape[0] // f) * f, (rgb.shape[1] // f) * f
    if f > 1 and h and w:
        small = rgb[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    else:
        small, f = rgb, 1
    if small.shape[0] < 2 or small.shape[1] < 2:
        return np.zeros((0, 2), np.float64)
    nuclei = find_nuclei(small, mpp=mpp * f)
    # A coarse pixel k covers fine pixels f*k .. f*k + f - 1: its centre is f*k + (f - 1) / 2.
    return nuclei.centroids_xy * f + (f - 1) / 2.0


@dataclass(frozen=True)
class CandidateLabels:
    """Candidates of one image split by the ground truth.

    Attributes
    ----------
    positive_xy : ndarray of float64, shape (m, 2)
        One point per annotated mitosis: the nearest candidate's centroid within the radius, or the
        annotated point itself when no candidate is near.
    from_candidate : ndarray of bool, shape (m,)
        Whether each positive came from a candidate (False: the annotated point was used).
    negative_pool_xy : ndarray of float64, shape (k, 2)
        Candidates farther than the radius from every annotated mitosis.
    """

    positive_xy: np.ndarray
    from_candidate: np.ndarray
    negative_pool_xy: np.ndarray


def _xy(points) -> np.ndarray:
    if isinstance(points, pd.DataFrame):
        return points[["x", "y"]].to_numpy(np.float64)
    return np.asarray(points, np.float64).reshape(-1, 2)


def label_candidates(candidates_xy, truth_xy, radius: float = TUPAC_RADIUS_PX) -> CandidateLabels:
    """Label candidate nuclei with the annotated mitoses of their image.

    Parameters
    ----------
    candidates_xy : array-like, shape (n, 2)
        Candidate centroids ``(x, y)``.
    truth_xy : array-like, shape (m, 2) or DataFrame with ``x``, ``y``
        Annotated mitoses.
    radius : float
        A candidate within ``radius`` px of an annotation belongs to that mitosis (30 px = 7.5 um,
        the TUPAC16 match radius). Such candidates never become negatives, including the second
        half of an anaphase figure.

    Returns
    -------
    CandidateLabels
    """
    cand = _xy(candidates_xy)
    truth = _xy(truth_xy)
    if len(truth) == 0:
        return CandidateLabels(np.zeros((0, 2)), np.zeros(0, bool), cand.copy())
    if len(cand) == 0:
        return CandidateLabels(truth.copy(), np.zeros(len(truth), bool), cand.copy())
    d = np.hypot(cand[:, None, 0] - truth[None, :, 0], cand[:, None, 1] - truth[None, :, 1])  # (n, m)
    nearest = d.argmin(axis=0)
    found = d[nearest, np.arange(len(truth))] <= radius
    positive = np.where(found[:, None], cand[nearest], truth)
    near_any = (d <= radius).any(axis=1)
    return CandidateLabels(positive, found, cand[~near_any])


def jittered(points_xy: np.ndarray, copies: int, max_shift: float, rng: np.random.Generator) -> np.ndarray:
    """``copies`` copies of each point, each shifted uniformly within ``±max_shift`` px per axis.

    A fully convolutional detector answers at every heatmap cell, so a mitosis must be recognised
    by the cells a few pixels off its centre too (stride 16 px); the copies teach that, and they
    balance the rare positives against the many negatives. The first copy is unshifted.

    Returns
    -------
    ndarray of float64, shape (n * copies, 2)
    """
    p = np.asarray(points_xy, np.float64).reshape(-1, 2)
    if copies < 1 or len(p) == 0:
        return np.zeros((0, 2))
    shift = rng.uniform(-max_shift, max_shift, size=(len(p), copies, 2))
    shift[:, 0] = 0.0
    return (p[:, None, :] + shift).reshape(-1, 2)


def extract_patches(rgb: np.ndarray, centers_xy: np.ndarray, size: int) -> np.ndarray:
    """Square patches of ``rgb`` centred on points; outside the image is mirrored.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
    centers_xy : ndarray, shape (n, 2)
        ``(x, y)`` centres (rounded to whole pixels). For an odd ``size`` the centre pixel is the
        middle one; for an even size, the one right and below the middle.
    size : int
        Patch side in pixels.

    Returns
    -------
    ndarray of uint8, shape (n, size, size, 3)
    """
    c = np.rint(np.asarray(centers_xy, np.float64).reshape(-1, 2)).astype(np.int64)
    half = size // 2
    # Mirror padding keeps a patch at the border from seeing an artificial black frame.
    pad = half + 1
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    x0 = np.clip(c[:, 0] - half + pad, 0, padded.shape[1] - size)
    y0 = np.clip(c[:, 1] - half + pad, 0, padded.shape[0] - size)
    # Fancy indexing with broadcast offsets gathers all patches in one call.
    ar = np.arange(size)
    rows = (y0[:, None] + ar[None, :])[:, :, None]
    cols = (x0[:, None] + ar[None, :])[:, None, :]
    return padded[rows, cols]


def hard_negatives(
    detections: pd.DataFrame,
    truth_xy,
    min_prob: float = 0.8,
    min_distance: float = TUPAC_RADIUS_PX,
    max_count: int = 200,
) -> np.ndarray:
    """The paper's hard negatives: confident detections away from every annotated mitosis.

    Parameters
    ----------
    detections : DataFrame
        ``x``, ``y``, ``prob`` of a stage-1 detector on one training image.
    truth_xy : array-like (m, 2) or DataFrame
        Annotated mitoses of the image.
    min_prob : float
        Only detections with ``prob > min_prob`` (0.8 in the paper).
    min_distance : float
        Detections within this distance (``<=``) of an annotation are not negatives (30 px).
    max_count : int
        At most this many per image, the most confident first (200 in the paper).

    Returns
    -------
    ndarray of float64, shape (k, 2)
        ``(x, y)`` of the hard negatives, by descending probability.
    """
    det = detections[detections["prob"].to_numpy() > min_prob]
    det = det.iloc[np.argsort(-det["prob"].to_numpy(), kind="stable")]
    xy = det[["x", "y"]].to_numpy(np.float64)
    truth = _xy(truth_xy)
    if len(xy) and len(truth):
        d = np.hypot(xy[:, None, 0] - truth[None, :, 0], xy[:, None, 1] - truth[None, :, 1]).min(axis=1)
        xy = xy[d > min_distance]
    return xy[: max(0, int(max_count))]
