"""Nested cross-validation: an outer five-fold split for the estimate, an inner grid search per
outer training part for the hyperparameters.

The outer split is stratified by grade for task 1 (plain shuffled K-fold for the RNA score) and
seeded explicitly; repeating with several seeds gives several out-of-fold predictions per slide.
Hyperparameters are chosen by the task's own metric: quadratic kappa (grade) and Spearman rho
(RNA), the TUPAC16 criteria.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV

from tupac.data.folds import outer_splitter
from tupac.errors import CohortError
from tupac.predict.cohort import GRADES
from tupac.predict.estimators import Candidate
from tupac.predict.metrics import quadratic_weighted_kappa

__all__ = ["FoldFit", "NestedCVResult", "outer_splitter", "task_scorer", "grid_search", "nested_cv", "check_class_sizes"]


def _spearman(y_true, y_pred) -> float:
    # rank correlation without scipy's p-value machinery: this runs thousands of times.
    rt = pd.Series(y_true).rank().to_numpy()
    rp = pd.Series(y_pred).rank().to_numpy()
    if np.ptp(rt) == 0 or np.ptp(rp) == 0:
        return 0.0
    return float(np.corrcoef(rt, rp)[0, 1])


def _kappa(y_true, y_pred) -> float:
    k = quadratic_weighted_kappa(y_true, y_pred, GRADES)
    return 0.0 if np.isnan(k) else k


def task_scorer(task: str):
    """The scorer the inner grid search maximizes: quadratic kappa or Spearman rho."""
    return make_scorer(_kappa) if task == "grade" else make_scorer(_spearman)


def check_class_sizes(grade: np.ndarray, n_splits: int, inner_splits: int, source: str = "labels") -> None:
    """Raise :class:`CohortError` unless every grade can appear in every inner training fold.

    Stratified K-fold needs ``n_splits`` slides per class; the inner split of an outer training
    part needs ``inner_splits`` of what is left.
    """
    need = n_splits + inner_splits
    for g in GRADES:
        n = int((grade == g).sum())
        if n < need:
            raise CohortError(
                f"{source}: grade {g} has {n} slide(s); nested {n_splits}x{inner_splits}-fold CV needs at least {need}"
            )


def grid_search(candidate: Candidate, X: pd.DataFrame, y: np.ndarray, *, inner_splits: int, seed: int) -> GridSearchCV:
    """Fit ``candidate`` with an inner, seeded grid search and refit the best on all of ``X``."""
    inner = outer_splitter(candidate.task, inner_splits, seed)
    gs = GridSearchCV(
        clone(candidate.estimator), candidate.grid, cv=inner, scoring=task_scorer(candidate.task),
        refit=True, n_jobs=1, error_score="raise",
    )
    with warnings.catch_warnings():
        # k > features left after dropping constants is handled by keeping all; say nothing.
        warnings.filterwarnings("ignore", message=r"k=\d+ is greater than n_features")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"sklearn\.feature_selection")
        gs.fit(X, y)
    return gs


@dataclass
class FoldFit:
    """One outer fold: the held-out positions and the pipeline fitted without them."""

    fold: int
    test_idx: np.ndarray
    model: object
    params: dict


@dataclass
class NestedCVResult:
    """Out-of-fold predictions of one candidate under one seed.

    Attributes
    ----------
    predictions : DataFrame
        One row per slide: ``slide_id, task, model, repeat, seed, fold, y_true, y_pred`` and, for
        the grade, ``p_1, p_2, p_3``.
    folds : list of FoldFit
    """

    predictions: pd.DataFrame
    folds: list[FoldFit] = field(default_factory=list)


def nested_cv(
    candidate: Candidate,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    n_splits: int,
    inner_splits: int,
    seed: int,
    repeat: int = 0,
) -> NestedCVResult:
    """Out-of-fold predictions of ``candidate`` with hyperparameters tuned inside each fold.

    Parameters
    ----------
    candidate : Candidate
        From :func:`tupac.predict.estimators.make_candidate`.
    X : DataFrame, shape (n_slides, n_features)
        Indexed by slide_id.
    y : ndarray, shape (n_slides,)
        Grade (int 1-3) or RNA score (float).
    n_splits, inner_splits : int
        Outer and inner folds.
    seed : int
        Seeds both splits (the inner one per outer fold as ``seed + fold + 1``).
    repeat : int
        Recorded in the predictions.
    """
    task = candidate.task
    y = np.asarray(y)
    n = len(X)
    fold_of = np.full(n, -1, np.int64)
    y_pred = np.empty(n, np.float64)
    proba = np.full((n, len(GRADES)), np.nan) if task == "grade" else None
    folds = []
    for fold, (tr, te) in enumerate(outer_splitter(task, n_splits, seed).split(X, y if task == "grade" else None)):
        gs = grid_search(candidate, X.iloc[tr], y[tr], inner_splits=inner_splits, seed=seed + fold + 1)
        model = gs.best_estimator_
        y_pred[te] = model.predict(X.iloc[te])
        if proba is not None:
            p = model.predict_proba(X.iloc[te])
            cols = np.searchsorted(GRADES, model.classes_)
            proba[np.ix_(te, cols)] = p
        fold_of[te] = fold
        folds.append(FoldFit(fold, te, model, dict(gs.best_params_)))
    df = pd.DataFrame(
        {
            "slide_id": X.index.to_numpy(dtype=object),
            "task": task,
            "model": candidate.name,
            "repeat": repeat,
            "seed": seed,
            "fold": fold_of,
            "y_true": y.astype(np.float64),
            "y_pred": y_pred,
        }
    )
    if proba is not None:
        df["y_true"] = y.astype(np.int64)
        df["y_pred"] = y_pred.astype(np.int64)
        for j, g in enumerate(GRADES):
            df[f"p_{g}"] = proba[:, j]
    return NestedCVResult(df, folds)
