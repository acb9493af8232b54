"""A cohort fit logged to MLflow: registered versions and the champion alias."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_champion_alias_moves_only_to_a_better_version(tmp_path):
    from mlflow import MlflowClient

    from synthetic import synthetic_cohort
    from tupac.predict.cohort import build_cohort, validate_feature_table
    from tupac.predict.fit import FitConfig, fit_cohort, write_outputs
    from tupac.tracking.fits import log_fit
    from tupac.tracking.store import local_tracking_uri

    X, labels = synthetic_cohort(n=60, n_noise=4, seed=3)
    cfg = FitConfig(repeats=1, k_features=4, grade_models=("logreg_enet",), rna_models=("elastic_net",),
                    n_boot=100, importance_repeats=1)
    result = fit_cohort(build_cohort(validate_feature_table(X), labels), cfg)
    run = tmp_path / "run"
    write_outputs(result, run / "predict")
    best = result.metrics["summary"]["best"]
    kappa = best["grade"]["kappa_quadratic_mean"]
    first = log_fit(result, run / "predict", run)
    best["grade"]["kappa_quadratic_mean"] = kappa - 0.1  # a worse fit: registered, not crowned
    second = log_fit(result, run / "predict", run)
    best["grade"]["kappa_quadratic_mean"] = kappa + 0.01  # a better one takes the alias
    third = log_fit(result, run / "predict", run)
    assert [t.versions["grade"] for t in (first, second, third)] == ["1", "2", "3"]
    assert [t.champion["grade"] for t in (first, second, third)] == [True, False, True]
    client = MlflowClient(local_tracking_uri(run), registry_uri=local_tracking_uri(run))
    assert str(client.get_model_version_by_alias("tupac-grade-classifier", "champion").version) == "3"
    assert client.get_run(second.run_id).data.tags["tupac.champion.grade"] == "false"
