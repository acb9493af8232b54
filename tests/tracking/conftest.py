"""Fixtures of the tracking tests: an isolated MLflow env (as in tests/predict), and the helpers the
feature and predict tests build their runs from (phantom_runs.py, synthetic.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "features"))  # phantom_runs.py
sys.path.insert(0, str(TESTS / "predict"))  # synthetic.py


@pytest.fixture(scope="session", autouse=True)
def _mlflow_env():
    """No telemetry, and no tracking URI leaking in from the developer's shell."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mp.undo()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
