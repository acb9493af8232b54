"""Calibrated detection probabilities and a detection threshold that does not jump with the seed.

The mitosis detector's heatmap probability is not a probability that a detection is a mitosis:
how confident the network is depends on its draw (the 60-slide benchmark's best-F1 thresholds were
0.998, 0.646 and 0.740 for three training seeds). Platt scaling maps a detection's probability
``p`` to ``q = sigmoid(a * logit(p) + b)``, fitted on the validation detections with "is a true
positive" as the label, so that ``q`` estimates that chance. Two parameters are fitted on dozens to
hundreds of detections, so ``q`` is a smooth function of the whole validation set, unlike the
best-F1 threshold, which sits on one detection's probability and moves to another when a single
detection changes rank.

Because ``q`` is monotone in ``p``, a threshold chosen on the calibrated scale is stored on the raw
scale (``card.detection_threshold``): every path that turns a heatmap into detections (the
detector, ``tupac mitosis``, the Ray job's :func:`tupac.infer.slide_task.detect_windows`) compares
raw probabilities with it and applies the calibrated rule without knowing about calibration. The
card's ``extra["calibration"]`` (:meth:`PlattCalibration.to_dict`) lets a reader map a detection's
``prob`` to the calibrated scale (:func:`calibrated_prob`); cards without it behave as before.

Threshold rules (:data:`THRESHOLD_RULES`, ``MitosisTrainConfig.threshold_rule``):

``best_f1``
    Today's: the highest threshold with the best pooled validation F1, moved halfway to the first
    lower detection that does worse (``tupac.mitosis.training._widest_margin``).
``calibrated_half``
    Keep detections whose calibrated probability is at least 0.5 (more likely a mitosis than not).
``f1_plateau``
    The midpoint, on the calibrated scale, of the run of thresholds around the best one whose
    pooled F1 is within ``tol`` (0.01) of the best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tupac.mitosis.detect import ranked_detections
from tupac.mitosis.scoring import TUPAC_RADIUS_PX

__all__ = [
    "THRESHOLD_RULES",
    "PlattCalibration",
    "fit_platt",
    "calibrated_prob",
    "f1_curve",
    "plateau_threshold",
    "calibrated_half_threshold",
]

THRESHOLD_RULES = ("best_f1", "calibrated_half", "f1_plateau")

_EPS = 1e-7  # probabilities are float32: 1 - 1e-7 is the largest below 1 they resolve


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))  # no overflow for large |z|


@dataclass(frozen=True)
class PlattCalibration:
    """``q = sigmoid(a * logit(p) + b)``: a detection probability ``p`` mapped to the chance that
    the detection is a true mitosis.

    Attributes
    ----------
    a, b : float
        Slope (> 0 keeps the order of detections) and offset on the logit scale.
    n, n_pos : int
        Validation detections it was fitted on, and how many of them were true positives.
    """

    a: float
    b: float
    n: int = 0
    n_pos: int = 0

    def apply(self, p) -> np.ndarray:
        """Calibrated probabilities of raw probabilities ``p`` (any shape), float64."""
        return _sigmoid(self.a * _logit(p) + self.b)

    def invert(self, q: float) -> float:
        """The raw probability whose calibrated value is ``q`` (``0 < q < 1``)."""
        z = (float(_logit(np.float64(q))) - self.b) / self.a
        return float(_sigmoid(z))

    def to_dict(self) -> dict:
        """For the card's ``extra["calibration"]`` (JSON)."""
        return {"method": "platt", "a": float(self.a), "b": float(self.b), "n": int(self.n), "n_pos": int(self.n_pos)}

    @classmethod
    def from_dict(cls, d: dict) -> PlattCalibration:
        if d.get("method", "platt") != "platt":
            raise ValueError(f"unknown calibration method {d.get('method')!r}, expected 'platt'")
        a, b = float(d["a"]), float(d["b"])
        if not (math.isfinite(a) and a > 0 and math.isfinite(b)):
            raise ValueError(f"calibration needs a finite a > 0 and a finite b, got a={a!r} b={b!r}")
        return cls(a, b, int(d.get("n", 0)), int(d.get("n_pos", 0)))


IDENTITY = PlattCalibration(1.0, 0.0)


def fit_platt(probs, labels) -> PlattCalibration:
    """Platt scaling of detection probabilities against true/false-positive labels.

    Uses Platt's (1999) smoothed targets ``(n_pos + 1) / (n_pos + 2)`` and ``1 / (n_neg + 2)``
    instead of 1 and 0: with few validation detections that are perfectly separated, the plain
    maximum-likelihood slope is infinite, and the smoothed one stays finite.

    Parameters
    ----------
    probs : array-like of float, shape (n,)
        Raw detection probabilities in [0, 1].
    labels : array-like of bool, shape (n,)
        True for a true positive.

    Returns
    -------
    PlattCalibration
        The identity (a=1, b=0) when there are no detections; with a single class, a=1 and the
        offset that maps the mean logit to the smoothed target (e.g. 0.25 for two false positives).
    """
    from scipy.optimize import minimize

    x = _logit(np.asarray(probs, np.float64).ravel())
    y = np.asarray(labels, bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"probs and labels differ in length: {x.shape} vs {y.shape}")
    n, n_pos = int(x.size), int(y.sum())
    if n == 0:
        return IDENTITY
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n - n_pos + 2.0))
    if n_pos in (0, n):  # one class: no slope to learn, only the base rate
        return PlattCalibration(1.0, float(_logit(np.float64(t[0])) - np.mean(x)), n, n_pos)
    scale = max(float(np.std(x)), 1e-3)  # fit on standardized logits: conditioned for any spread

    def nll(w):
        z = w[0] * (x - x.mean()) / scale + w[1]
        # -[t log s(z) + (1-t) log s(-z)], written with logaddexp for stability
        loss = t * np.logaddexp(0.0, -z) + (1 - t) * np.logaddexp(0.0, z)
        s = _sigmoid(z)
        g = s - t
        return loss.sum(), np.array([(g * (x - x.mean()) / scale).sum(), g.sum()])

    w = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                 bounds=[(1e-6, None), (None, None)]).x
    a = w[0] / scale
    return PlattCalibration(float(a), float(w[1] - a * x.mean()), n, n_pos)


def calibrated_prob(probs, card_extra: dict | None) -> np.ndarray:
    """Detection probabilities on the calibrated scale of a model card (unchanged without one).

    Parameters
    ----------
    probs : array-like of float
        Raw ``prob`` values of detections.
    card_extra : dict or None
        ``card.extra`` of the mitosis model; its ``calibration`` entry is used when present.
    """
    cal = (card_extra or {}).get("calibration")
    p = np.asarray(probs, np.float64)
    return PlattCalibration.from_dict(cal).apply(p) if cal else p


def f1_curve(detections_per_image: Sequence, truths_per_image: Sequence,
             radius: float = TUPAC_RADIUS_PX) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pooled F1 at every reachable threshold, and the labelled detections behind it.

    Returns
    -------
    thresholds : ndarray of float64, shape (k,)
        Distinct detection probabilities, descending (keep ``prob >= threshold``).
    f1 : ndarray of float64, shape (k,)
    probs, flags : ndarray, shape (n,)
        Every detection's probability (descending) and whether it is a true positive, for
        :func:`fit_platt`.
    """
    p, f, n_truth = ranked_detections(detections_per_image, truths_per_image, radius)
    if p.size == 0:
        return np.zeros(0), np.zeros(0), p, f
    tp = np.cumsum(f)
    n_kept = np.arange(1, p.size + 1)
    last = np.r_[p[1:] != p[:-1], True]
    f1 = 2 * tp[last] / (n_kept[last] + n_truth)
    return p[last], f1, p, f


def plateau_threshold(thresholds: np.ndarray, f1: np.ndarray, cal: PlattCalibration, tol: float = 0.01) -> float:
    """Raw threshold at the calibrated midpoint of the near-best F1 plateau.

    The plateau is the contiguous run of thresholds, around the highest best-F1 one, whose F1 is
    at least ``max(f1) - tol``. Its lower end is halfway (calibrated) to the next lower detection,
    as in ``best_f1``, so a plateau of one threshold still gets a margin below it.

    Parameters
    ----------
    thresholds, f1 : ndarray, shape (k,)
        From :func:`f1_curve` (thresholds descending).
    cal : PlattCalibration
    tol : float
        F1 tolerance of the plateau.

    Returns
    -------
    float
        A raw-scale threshold in (0, 1); ``inf`` when there are no thresholds.
    """
    if thresholds.size == 0:
        return float("inf")
    best = int(np.argmax(f1))  # first = highest threshold among ties
    ok = f1 >= f1[best] - tol
    lo = hi = best
    while hi > 0 and ok[hi - 1]:
        hi -= 1
    while lo + 1 < ok.size and ok[lo + 1]:
        lo += 1
    q = cal.apply(thresholds)
    q_hi = float(q[hi])
    # Below the plateau's last threshold, the next detection makes F1 worse: stop halfway to it.
    q_lo = 0.5 * (float(q[lo]) + float(q[lo + 1])) if lo + 1 < q.size else 0.5 * float(q[lo])
    return cal.invert(min(max(0.5 * (q_hi + q_lo), _EPS), 1 - _EPS))


def calibrated_half_threshold(cal: PlattCalibration) -> float:
    """Raw threshold whose calibrated probability is 0.5."""
    return cal.invert(0.5)
