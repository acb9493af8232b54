"""Fixtures of the predict tests: a synthetic cohort, a fitted run directory, an isolated MLflow env."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # synthetic.py

from synthetic import make_run  # noqa: E402

LIGHT = ["--grade-models", "logreg_enet,svm", "--rna-models", "elastic_net,svr", "--k-features", "10"]


@pytest.fixture(scope="session", autouse=True)
def _mlflow_env():
    """No telemetry, and no tracking URI leaking in from the developer's shell."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def fitted_run(tmp_path_factory):
    """``tupac fit`` on 60 synthetic slides, two light models per task, 2 repeats, local MLflow store."""
    from typer.testing import CliRunner

    from tupac.cli import app

    run, gt = make_run(tmp_path_factory.mktemp("fitted"))
    res = CliRunner().invoke(app, ["fit", "--run", str(run), "--labels", str(gt), "--repeats", "2", *LIGHT])
    assert res.exit_code == 0, res.output
    return run, gt, res.output
