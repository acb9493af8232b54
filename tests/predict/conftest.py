"""Fixtures of the predict tests: a synthetic cohort (the isolated MLflow env and the fitted run directory,
``fitted_run``, is in tests/conftest.py: the tracking tests load from it too)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # synthetic.py

from synthetic import LIGHT, make_run  # noqa: E402,F401  (re-exported for the tests: from conftest import ...)

