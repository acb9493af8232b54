"""Metrics agree with scikit-learn / scipy on fixed inputs; the kappa with a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score, f1_score, mean_squared_error, roc_auc_score

from tupac.predict.metrics import (
    bootstrap_accuracy_ci,
    classification_metrics,
    one_vs_rest_auroc,
    quadratic_weighted_kappa,
    regression_metrics,
)

Y_TRUE = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
Y_PRED = np.array([1, 1, 2, 2, 2, 3, 3, 3, 2, 1])


def test_kappa_by_hand():
    # Confusion matrix O (rows: truth 1-3, columns: prediction 1-3)
    #   [[2, 1, 0],
    #    [0, 2, 1],
    #    [1, 1, 2]]       row totals (3, 3, 4), column totals (3, 4, 3), n = 10
    # Expected counts E = outer(rows, cols) / n
    #   [[0.9, 1.2, 0.9],
    #    [0.9, 1.2, 0.9],
    #    [1.2, 1.6, 1.2]]
    # Quadratic weights W_ij = (i - j)^2 / (K - 1)^2, K = 3
    #   [[0,    0.25, 1   ],
    #    [0.25, 0,    0.25],
    #    [1,    0.25, 0   ]]
    # sum(W*O) = 0.25*1 + 0.25*1 + 1*1 + 0.25*1 = 1.75
    # sum(W*E) = 0.25*1.2 + 0.9 + 0.25*0.9 + 0.25*0.9 + 1.2 + 0.25*1.6 = 3.25
    # kappa = 1 - 1.75 / 3.25 = 6 / 13
    assert quadratic_weighted_kappa(Y_TRUE, Y_PRED) == pytest.approx(6 / 13, abs=1e-12)


def test_kappa_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = rng.integers(1, 4, 40)
        p = np.clip(t + rng.integers(-1, 2, 40), 1, 3)
        assert quadratic_weighted_kappa(t, p) == pytest.approx(cohen_kappa_score(t, p, weights="quadratic"), abs=1e-12)


def test_kappa_extremes_and_bad_labels():
    assert quadratic_weighted_kappa(Y_TRUE, Y_TRUE) == 1.0
    assert quadratic_weighted_kappa(Y_TRUE, 4 - Y_TRUE) < 0  # reversed grades disagree systematically
    assert np.isnan(quadratic_weighted_kappa([2, 2], [2, 2]))
    with pytest.raises(ValueError, match="outside the classes"):
        quadratic_weighted_kappa([1, 2, 4], [1, 2, 3])


def test_bootstrap_ci_is_the_seeded_percentile_bootstrap():
    low, high = bootstrap_accuracy_ci(Y_TRUE, Y_PRED, n_boot=500, seed=11)
    # the same resampling written out slowly
    rng = np.random.default_rng(11)
    idx = rng.integers(0, 10, size=(500, 10))
    accs = [(Y_TRUE[i] == Y_PRED[i]).mean() for i in idx]
    assert (low, high) == pytest.approx(tuple(np.quantile(accs, [0.025, 0.975])))
    assert low <= 0.6 <= high
    assert bootstrap_accuracy_ci(Y_TRUE, Y_PRED, n_boot=500, seed=11) == (low, high)
    # on a larger cohort the interval moves with the seed (it is random) but only a little
    t, p = np.tile(Y_TRUE, 13), np.tile(Y_PRED, 13)
    a, b = bootstrap_accuracy_ci(t, p, n_boot=300, seed=1), bootstrap_accuracy_ci(t, p, n_boot=300, seed=2)
    assert a != b and a == pytest.approx(b, abs=0.03)


def _proba(seed=0, n=30):
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 2, 3], n // 3)
    logits = rng.normal(size=(n, 3)) + 1.5 * (y[:, None] == np.array([1, 2, 3]))
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_auroc_matches_sklearn():
    y, p = _proba()
    onehot = (y[:, None] == np.array([1, 2, 3])).astype(int)
    got = one_vs_rest_auroc(y, p)
    assert got["auroc_micro"] == pytest.approx(roc_auc_score(onehot, p, average="micro"))
    per_class = roc_auc_score(onehot, p, average=None)
    for j, c in enumerate((1, 2, 3)):
        assert got[f"auroc_class_{c}"] == pytest.approx(per_class[j])
    assert np.isnan(one_vs_rest_auroc(np.array([1, 1, 2, 2]), p[:4])["auroc_class_3"])


def test_classification_metrics_match_sklearn():
    y, p = _proba(1)
    pred = np.array([1, 2, 3])[p.argmax(1)]
    m = classification_metrics(y, pred, p, n_boot=200, seed=0)
    assert m["accuracy"] == pytest.approx((y == pred).mean())
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]


def test_regression_metrics_match_scipy():
    rng = np.random.default_rng(5)
    t = rng.normal(size=50)
    p = t + rng.normal(0, 0.5, 50)
    m = regression_metrics(t, p)
    assert m["mse"] == pytest.approx(mean_squared_error(t, p))
    r, pr = stats.pearsonr(t, p)
    rho, prho = stats.spearmanr(t, p)
    assert (m["pearson_r"], m["pearson_p"]) == pytest.approx((r, pr))
    assert (m["spearman_rho"], m["spearman_p"]) == pytest.approx((rho, prho))
    assert np.isnan(regression_metrics(t, np.zeros(50))["spearman_rho"])
