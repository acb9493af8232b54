"""Univariate tests agree with scipy, BH with a hand computation and scipy, importances find the signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tupac.predict.biomarkers import (
    benjamini_hochberg,
    oof_permutation_importance,
    significant_features,
    univariate_associations,
    used_feature_mask,
)
from tupac.predict.cv import _spearman, nested_cv
from tupac.predict.estimators import make_candidate


def test_bh_by_hand():
    # p sorted: 0.005 (rank 1), 0.01 (2), 0.03 (3), 0.04 (4); m = 4
    # m p / rank: 0.02, 0.02, 0.04, 0.04; running minimum from the top keeps them; back to input order.
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005]))
    assert q == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_bh_matches_scipy_and_skips_nan():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 0.01, 10), rng.uniform(size=90)])
    assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))
    with_nan = np.insert(p, 5, np.nan)
    q = benjamini_hochberg(with_nan)
    assert np.isnan(q[5])
    assert np.delete(q, 5) == pytest.approx(stats.false_discovery_control(p, method="bh"))


def test_univariate_tests_match_scipy():
    rng = np.random.default_rng(1)
    n = 45
    grade = np.repeat([1, 2, 3], 15)
    rna = grade + rng.normal(0, 0.7, n)
    X = pd.DataFrame({"a": rna + rng.normal(0, 1, n), "b": rng.normal(size=n), "const": np.ones(n)})
    X.loc[[3, 7], "b"] = np.nan
    t = univariate_associations(X, grade, rna).set_index("feature")
    lr = stats.linregress(X["a"], rna)
    assert t.loc["a", "p_rna"] == pytest.approx(lr.pvalue)
    assert t.loc["a", "rna_r"] == pytest.approx(lr.rvalue)
    ok = X["b"].notna().to_numpy()
    assert t.loc["b", "p_rna"] == pytest.approx(stats.linregress(X["b"][ok], rna[ok]).pvalue)
    assert t.loc["b", "n"] == n - 2
    kw = stats.kruskal(*(X["b"][ok][grade[ok] == g] for g in (1, 2, 3)))
    assert t.loc["b", "p_grade"] == pytest.approx(kw.pvalue)
    assert t.loc["b", "grade_H"] == pytest.approx(kw.statistic)
    assert np.isnan(t.loc["const", "p_rna"]) and np.isnan(t.loc["const", "p_grade"])
    assert list(t.index)[-1] == "const"  # untestable sorts last
    assert t.loc["a", "q_rna"] == pytest.approx(stats.false_discovery_control(t[["p_rna"]].dropna()["p_rna"])[0])
    sig = significant_features(t.reset_index())
    assert "a" in set(sig["feature"]) and "const" not in set(sig["feature"])


def test_used_feature_mask_maps_selection_back_to_columns():
    rng = np.random.default_rng(2)
    X = pd.DataFrame(rng.normal(size=(60, 6)), columns=list("abcdef"))
    X["c"] = 1.0  # dropped as constant before selection
    y = X["e"].to_numpy() * 3 + X["a"].to_numpy() + rng.normal(0, 0.1, 60)
    model = make_candidate("rna", "elastic_net", seed=0, k_features=2, n_features=6).estimator.fit(X, y)
    assert used_feature_mask(model, 6).tolist() == [True, False, False, False, True, False]


def test_permutation_importance_ranks_the_signal_first():
    rng = np.random.default_rng(4)
    n = 60
    X = pd.DataFrame(rng.normal(size=(n, 8)), columns=[f"f{i}" for i in range(8)])
    y = 2 * X["f3"].to_numpy() + 0.5 * X["f6"].to_numpy() + rng.normal(0, 0.3, n)
    cand = make_candidate("rna", "elastic_net", seed=0, k_features=3, n_features=8)
    res = nested_cv(cand, X, y, n_splits=5, inner_splits=3, seed=0)
    imp = oof_permutation_importance(res.folds, X, y, _spearman, n_repeats=3, seed=0)
    assert imp["feature"].iloc[0] == "f3"
    assert imp["feature"].iloc[1] == "f6"
    never = imp[imp["folds_selected"] == 0]
    assert len(never) and (never["importance_mean"] == 0).all()
    assert imp["rank"].tolist() == list(range(1, 9))
