"""Metrics as the paper and TUPAC16 report them.

Task 1 (grade, 3 classes): accuracy with a seeded 95% percentile-bootstrap interval, micro-average
and per-class one-vs-rest AUROC, macro F-measure and quadratic-weighted Cohen's kappa (the TUPAC16
task 1 metric). Task 2 (RNA proliferation score): MSE, Pearson r and Spearman rho (the TUPAC16
task 2 metric) with their two-sided p-values.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

__all__ = [
    "quadratic_weighted_kappa",
    "bootstrap_accuracy_ci",
    "one_vs_rest_auroc",
    "classification_metrics",
    "regression_metrics",
]


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, classes=(1, 2, 3)) -> float:
    """Cohen's kappa with quadratic weights ``w_ij = (i - j)^2 / (K - 1)^2``.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` where ``O`` is the K x K confusion matrix of counts
    (rows: truth) and ``E = outer(row totals, column totals) / n`` the counts expected by chance.

    Parameters
    ----------
    y_true, y_pred : array of int, shape (n,)
        Labels drawn from ``classes``.
    classes : sequence of int
        The ordered classes (their order, not their values, sets the weights).

    Returns
    -------
    float
        1 for perfect agreement, 0 for chance; NaN when ``sum(W * E)`` is 0 (a single class).
    """
    classes = np.asarray(classes)
    k = len(classes)
    ti = np.searchsorted(classes, np.asarray(y_true))
    pi = np.searchsorted(classes, np.asarray(y_pred))
    for name, v, i in (("y_true", y_true, ti), ("y_pred", y_pred, pi)):
        if np.any(i >= k) or np.any(classes[np.minimum(i, k - 1)] != np.asarray(v)):
            raise ValueError(f"{name} holds values outside the classes {classes.tolist()}")
    observed = np.zeros((k, k), np.float64)
    np.add.at(observed, (ti, pi), 1.0)
    n = observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0)) / n
    idx = np.arange(k)
    weights = (idx[:, None] - idx[None, :]) ** 2 / (k - 1) ** 2
    denom = (weights * expected).sum()
    return float("nan") if denom == 0 else float(1.0 - (weights * observed).sum() / denom)


def bootstrap_accuracy_ci(
    y_true: np.ndarray, y_pred: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap ``(1 - alpha)`` confidence interval of the accuracy.

    Slides are resampled with replacement ``n_boot`` times with ``numpy.random.default_rng(seed)``.

    Returns
    -------
    (low, high) : tuple of float
    """
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)
    rng = np.random.default_rng(seed)
    # (n_boot, n) indices: n is a few hundred slides, so this stays small.
    accs = correct[rng.integers(0, correct.size, size=(n_boot, correct.size))].mean(axis=1)
    low, high = np.quantile(accs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def one_vs_rest_auroc(y_true: np.ndarray, proba: np.ndarray, classes=(1, 2, 3)) -> dict[str, float]:
    """Micro-average and per-class one-vs-rest AUROC.

    Parameters
    ----------
    y_true : array of int, shape (n,)
    proba : array of float, shape (n, K)
        Column ``j`` is the probability of ``classes[j]``.

    Returns
    -------
    dict
        ``auroc_micro`` and ``auroc_class_<c>`` for each class; NaN for a class absent from (or the
        only class in) ``y_true``.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, np.float64)
    onehot = (y_true[:, None] == np.asarray(classes)[None, :]).astype(np.int64)
    out = {"auroc_micro": float(roc_auc_score(onehot.ravel(), proba.ravel()))}
    for j, c in enumerate(classes):
        pos = onehot[:, j]
        ok = 0 < pos.sum() < pos.size
        out[f"auroc_class_{c}"] = float(roc_auc_score(pos, proba[:, j])) if ok else float("nan")
    return out


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    *,
    classes=(1, 2, 3),
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Every task-1 metric of one set of predictions.

    Returns
    -------
    dict of str -> float
        ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high``, ``auroc_micro``,
        ``auroc_class_<c>``, ``f1_macro``, ``kappa_quadratic``.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    low, high = bootstrap_accuracy_ci(y_true, y_pred, n_boot=n_boot, seed=seed)
    out = {"accuracy": float((y_true == y_pred).mean()), "accuracy_ci_low": low, "accuracy_ci_high": high}
    out.update(one_vs_rest_auroc(y_true, proba, classes))
    out["f1_macro"] = float(f1_score(y_true, y_pred, labels=list(classes), average="macro", zero_division=0))
    out["kappa_quadratic"] = quadratic_weighted_kappa(y_true, y_pred, classes)
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Every task-2 metric: ``mse``, ``pearson_r``, ``pearson_p``, ``spearman_rho``, ``spearman_p``.

    Correlations are NaN when either side is constant.
    """
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    out = {"mse": float(np.mean((y_true - y_pred) ** 2))}
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return out | {k: float("nan") for k in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p")}
    r, p = stats.pearsonr(y_true, y_pred)
    rho, p_rho = stats.spearmanr(y_true, y_pred)
    return out | {"pearson_r": float(r), "pearson_p": float(p), "spearman_rho": float(rho), "spearman_p": float(p_rho)}
