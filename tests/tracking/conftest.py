"""Fixtures of the tracking tests: the helpers the feature and predict tests build their runs from
(phantom_runs.py, synthetic.py); the isolated MLflow env is in tests/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "features"))  # phantom_runs.py
sys.path.insert(0, str(TESTS / "predict"))  # synthetic.py


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
