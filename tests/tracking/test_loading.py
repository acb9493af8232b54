"""Safe loading of registered cohort models: the loading rules on a fitted run, and pickled, unchecksummed
and tampered models refused."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tupac.errors import ModelFileError, UntrustedModelError

pytestmark = pytest.mark.slow


def test_safe_loading_rules(fitted_run, tmp_path, monkeypatch):
    from tupac.tracking.loading import load_registered_model

    run, _, _ = fitted_run
    lm = load_registered_model("models:/tupac-grade-classifier@champion", run)
    assert lm.task == "grade" and lm.version == "1" and hasattr(lm.model, "predict_proba")
    for uri in ("runs:/abc/grade_model", str(run / "mlartifacts"), "file:///tmp/model", "models:/x/../y"):
        with pytest.raises(UntrustedModelError, match="only models:/"):
            load_registered_model(uri, run)
    with pytest.raises(ModelFileError, match="not found in the tracking store"):
        load_registered_model("models:/tupac-grade-classifier@nobody", run)
    with pytest.raises(ModelFileError, match="no MLflow store"):
        load_registered_model("models:/tupac-grade-classifier@champion", tmp_path)

    # a tampered model file is refused by its checksum
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    skops_files = list((copy / "mlartifacts").rglob("model.skops"))
    assert skops_files
    # the copied store still points at the original artifacts: it is outside this run -> refused
    with pytest.raises(UntrustedModelError, match="outside the run's store"):
        load_registered_model("models:/tupac-grade-classifier@champion", copy)


def test_tampered_and_pickled_models_are_refused(tmp_path):
    """A fresh store so the original fixture stays intact."""
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    from tupac.tracking.loading import load_registered_model
    from tupac.tracking.store import local_artifact_root, local_tracking_uri, open_store

    run = tmp_path / "run"
    run.mkdir()
    uri = local_tracking_uri(run)
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    with open_store(uri) as client:
        exp = client.create_experiment("t", artifact_location=local_artifact_root(run).as_uri())
        with mlflow.start_run(experiment_id=exp):
            mlflow.sklearn.log_model(LogisticRegression().fit(X, [0, 0, 1, 1]), name="m",
                                     serialization_format="pickle", registered_model_name="pickled")
            mlflow.sklearn.log_model(LogisticRegression().fit(X, [0, 0, 1, 1]), name="s",
                                     serialization_format="skops", registered_model_name="untagged")
    with pytest.raises(UntrustedModelError, match="only 'skops' models"):
        load_registered_model("models:/pickled/1", run)
    with pytest.raises(UntrustedModelError, match="no recorded checksum"):
        load_registered_model("models:/untagged/1", run)
    with open_store(uri) as client:
        client.set_model_version_tag("untagged", "1", "tupac.model_sha256", "0" * 64)
    with pytest.raises(UntrustedModelError, match="does not match its recorded SHA-256"):
        load_registered_model("models:/untagged/1", run)
