"""Safe loading of registered cohort models: pickled, unchecksummed and tampered models are refused."""

from __future__ import annotations

import pandas as pd
import pytest

from tupac.errors import UntrustedModelError

pytestmark = pytest.mark.slow


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
