"""Which features carry the signal: univariate tests, FDR, and model importances.

- RNA score: per feature, the slope p-value of the simple linear regression ``rna ~ feature``
  (two-sided t-test, n - 2 degrees of freedom; identical to the Pearson correlation test).
- Grade: per feature, the Kruskal-Wallis H test across the three grades (rank-based, so it needs
  no linearity or normality of the feature, and a monotone transform of a feature gives the same
  p-value), plus Spearman rho with the grade for the direction.
- Benjamini-Hochberg q-values over all features, per test.
- Importances of the best model: permutation importance on held-out data (each outer fold's
  pipeline scores its own test slides with one feature shuffled; predictions pooled over folds
  and scored with the task metric), so they measure generalization, not fit.

Every test uses the slides where the feature is not NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from tupac.predict.cohort import GRADES

__all__ = ["benjamini_hochberg", "univariate_associations", "significant_features", "used_feature_mask",
           "oof_permutation_importance"]

P_THRESHOLD = 0.005


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values).

    ``q_(i) = min_{j >= i} min(1, m * p_(j) / j)`` over the ascending p-values; NaN entries are
    left out of the family (``m`` counts the finite ones) and stay NaN.

    Parameters
    ----------
    p : array of float, shape (m,)

    Returns
    -------
    ndarray of float64, shape (m,)
    """
    p = np.asarray(p, np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    pv = p[ok]
    m = pv.size
    if m == 0:
        return q
    order = np.argsort(pv, kind="mergesort")
    scaled = pv[order] * m / np.arange(1, m + 1)
    # running minimum from the largest p down keeps q monotone in p.
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = q_sorted
    q[ok] = out
    return q


def _rna_test(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    ok = np.isfinite(x)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return np.nan, np.nan, np.nan
    res = stats.linregress(x, y)
    return float(res.slope), float(res.rvalue), float(res.pvalue)


def _grade_test(x: np.ndarray, g: np.ndarray) -> tuple[float, float, float]:
    ok = np.isfinite(x)
    x, g = x[ok], g[ok]
    groups = [x[g == c] for c in GRADES if np.any(g == c)]
    if len(groups) < 2 or np.ptp(x) == 0:
        return np.nan, np.nan, np.nan
    h, p = stats.kruskal(*groups)
    rho = stats.spearmanr(x, g).statistic
    return float(h), float(rho), float(p)


def univariate_associations(X: pd.DataFrame, grade: np.ndarray, rna: np.ndarray) -> pd.DataFrame:
    """Per-feature association with the RNA score and with the grade.

    Parameters
    ----------
    X : DataFrame, shape (n_slides, n_features)
    grade : array of int, shape (n_slides,)
    rna : array of float, shape (n_slides,)

    Returns
    -------
    DataFrame, one row per feature, sorted by ``min(p_rna, p_grade)``
        ``feature, n, rna_slope, rna_r, p_rna, q_rna, grade_H, grade_rho, p_grade, q_grade,
        significant_rna, significant_grade`` (significant: raw p < 0.005). A constant feature has
        NaN statistics and sorts last.
    """
    grade = np.asarray(grade)
    rna = np.asarray(rna, np.float64)
    rows = []
    values = X.to_numpy(np.float64)
    for j, name in enumerate(X.columns):
        x = values[:, j]
        slope, r, p_rna = _rna_test(x, rna)
        h, rho, p_grade = _grade_test(x, grade)
        rows.append((name, int(np.isfinite(x).sum()), slope, r, p_rna, h, rho, p_grade))
    df = pd.DataFrame(rows, columns=["feature", "n", "rna_slope", "rna_r", "p_rna", "grade_H", "grade_rho", "p_grade"])
    df["q_rna"] = benjamini_hochberg(df["p_rna"].to_numpy())
    df["q_grade"] = benjamini_hochberg(df["p_grade"].to_numpy())
    df["significant_rna"] = df["p_rna"] < P_THRESHOLD
    df["significant_grade"] = df["p_grade"] < P_THRESHOLD
    key = np.fmin(df["p_rna"].to_numpy(), df["p_grade"].to_numpy())
    df = df.iloc[np.argsort(np.where(np.isnan(key), np.inf, key), kind="mergesort")].reset_index(drop=True)
    cols = ["feature", "n", "rna_slope", "rna_r", "p_rna", "q_rna", "grade_H", "grade_rho", "p_grade", "q_grade",
            "significant_rna", "significant_grade"]
    return df[cols]


def significant_features(table: pd.DataFrame, threshold: float = P_THRESHOLD) -> pd.DataFrame:
    """Rows of :func:`univariate_associations` with ``p_rna`` or ``p_grade`` below ``threshold``."""
    keep = (table["p_rna"] < threshold) | (table["p_grade"] < threshold)
    return table[keep].reset_index(drop=True)


def used_feature_mask(model, n_features: int) -> np.ndarray:
    """Which input columns a fitted tupac pipeline can depend on (survive constant-dropping and
    univariate selection).

    Returns
    -------
    ndarray of bool, shape (n_features,)
    """
    pipe = getattr(model, "regressor_", model)  # TransformedTargetRegressor wraps the pipeline
    mask = np.ones(n_features, bool)
    for step in ("drop_constant", "select"):
        if step in pipe.named_steps:
            support = pipe.named_steps[step].get_support()
            idx = np.flatnonzero(mask)
            mask[:] = False
            mask[idx[support]] = True
    return mask


def oof_permutation_importance(
    folds: Sequence,
    X: pd.DataFrame,
    y: np.ndarray,
    score: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_repeats: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Permutation importance on held-out slides, pooled over the outer folds.

    Parameters
    ----------
    folds : sequence of FoldFit
        ``test_idx`` and the ``model`` fitted without those slides (one CV repeat).
    X : DataFrame, shape (n_slides, n_features)
    y : ndarray, shape (n_slides,)
    score : callable (y_true, y_pred) -> float
        Larger is better (quadratic kappa, Spearman rho).
    n_repeats : int
        Shuffles per feature.
    seed : int
        Seeds the shuffles.

    Returns
    -------
    DataFrame sorted by importance (descending)
        ``rank, feature, importance_mean, importance_std, folds_selected``: the drop in the pooled
        score when the feature is shuffled within each test fold. Features no fold's pipeline
        selected cannot change a prediction and get exactly 0 without being shuffled.
    """
    y = np.asarray(y)
    values = X.to_numpy(np.float64)
    masks = np.stack([used_feature_mask(f.model, X.shape[1]) for f in folds])

    def pooled(col: int | None, rng: np.random.Generator | None) -> float:
        pred = np.empty(len(y), np.float64)
        for f, mask in zip(folds, masks):
            xt = values[f.test_idx].copy()
            if col is not None and mask[col]:
                xt[:, col] = rng.permutation(xt[:, col])
            pred[f.test_idx] = f.model.predict(pd.DataFrame(xt, columns=X.columns, index=X.index[f.test_idx]))
        return score(y, pred)

    base = pooled(None, None)
    rng = np.random.default_rng(seed)
    imp = np.zeros((X.shape[1], n_repeats))
    for col in np.flatnonzero(masks.any(axis=0)):
        imp[col] = [base - pooled(col, rng) for _ in range(n_repeats)]
    df = pd.DataFrame(
        {
            "feature": X.columns,
            "importance_mean": imp.mean(axis=1),
            "importance_std": imp.std(axis=1),
            "folds_selected": masks.sum(axis=0),
        }
    )
    df = df.sort_values(["importance_mean", "folds_selected"], ascending=False, kind="mergesort").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df
