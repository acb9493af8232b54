"""Fixtures of the predict tests: a synthetic cohort, an isolated MLflow env (the fitted run directory,
``fitted_run``, is in tests/conftest.py: the tracking tests load from it too)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # synthetic.py

from synthetic import LIGHT, make_run  # noqa: E402,F401  (re-exported for the tests: from conftest import ...)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_env():
    """No telemetry, and no tracking URI leaking in from the developer's shell."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mp.undo()

