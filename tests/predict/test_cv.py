"""Nested CV: every slide predicted once per repeat, by a pipeline that never saw it; seeds matter."""

from __future__ import annotations

import numpy as np
import pytest

from synthetic import synthetic_cohort
from tupac.errors import CohortError, ConfigError
from tupac.predict.cohort import build_cohort, validate_feature_table
from tupac.predict.cv import check_class_sizes, nested_cv
from tupac.predict.estimators import GRADE_MODELS, RNA_MODELS, make_candidate


@pytest.fixture(scope="module")
def cohort():
    X, labels = synthetic_cohort(n=60, n_noise=6, seed=1)
    return build_cohort(validate_feature_table(X), labels)


def test_grade_oof_predictions_are_stratified_and_leak_free(cohort):
    cand = make_candidate("grade", "logreg_enet", seed=0, k_features=5, n_features=cohort.X.shape[1])
    res = nested_cv(cand, cohort.X, cohort.grade, n_splits=5, inner_splits=3, seed=0)
    p = res.predictions
    assert len(p) == 60 and (p["slide_id"].to_numpy() == cohort.slide_ids).all()
    assert sorted(p["fold"].unique()) == [0, 1, 2, 3, 4]
    # stratified: each test fold holds 4 slides of each grade (20 per grade / 5 folds)
    assert (p.groupby(["fold", "y_true"]).size() == 4).all()
    probs = p[["p_1", "p_2", "p_3"]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0) and set(p["y_pred"]) <= {1, 2, 3}
    assert (p["y_pred"].to_numpy() == np.array([1, 2, 3])[probs.argmax(1)]).all()
    # the imputer inside each fold's pipeline learned its medians from the training slides only
    col = list(cohort.X.columns).index("noise_00")
    for f in res.folds:
        train = np.setdiff1d(np.arange(60), f.test_idx)
        median = np.nanmedian(cohort.X.iloc[train, col])
        assert f.model.named_steps["impute"].statistics_[col] == pytest.approx(median)
        assert f.model.named_steps["impute"].statistics_[col] != pytest.approx(np.nanmedian(cohort.X.iloc[:, col]))
        assert set(f.params) == {"model__C", "model__l1_ratio"}


def test_seeds_change_the_split_and_repeat_identically(cohort):
    def run(seed):
        cand = make_candidate("rna", "elastic_net", seed=seed, k_features=5, n_features=cohort.X.shape[1])
        return nested_cv(cand, cohort.X, cohort.rna, n_splits=5, inner_splits=3, seed=seed).predictions

    a, b, c = run(0), run(0), run(1)
    assert (a["fold"] == b["fold"]).all() and np.array_equal(a["y_pred"], b["y_pred"])
    assert not (a["fold"] == c["fold"]).all()


@pytest.mark.parametrize("task,name", [("grade", n) for n in GRADE_MODELS] + [("rna", n) for n in RNA_MODELS])
def test_every_candidate_fits_and_predicts(cohort, task, name):
    cand = make_candidate(task, name, seed=0, k_features=5, n_features=cohort.X.shape[1])
    y = cohort.grade if task == "grade" else cohort.rna
    est = cand.estimator.fit(cohort.X.iloc[:40], y[:40])
    pred = est.predict(cohort.X.iloc[40:])
    assert pred.shape == (20,) and np.isfinite(pred).all()
    if task == "grade":
        assert est.predict_proba(cohort.X.iloc[40:]).shape == (20, 3)


def test_unknown_models_and_small_classes_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown grade model 'xgb'"):
        make_candidate("grade", "xgb", seed=0, k_features=5, n_features=5)
    with pytest.raises(CohortError, match="grade 3 has 7 slide"):
        check_class_sizes(np.array([1] * 20 + [2] * 20 + [3] * 7), 5, 3)
