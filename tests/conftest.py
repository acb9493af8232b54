"""Fixtures shared by every test module.

- ``real_dir``: the small real slides and images (see tests/fixtures/real/PROVENANCE.md).
- ``artifacts_dir``: a folder kept after the run (``test-artifacts/``) for PNGs a person should look at.
- ``small_cohort``: one phantom TUPAC16-layout cohort per session (3 slides, 4 mitosis images).
- ``fitted_run``: one ``tupac fit`` run directory per session (tests/predict and tests/tracking read it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT / "tests" / "fixtures" / "real"
ARTIFACTS_DIR = Path(os.environ.get("TUPAC_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="session", autouse=True)
def _mlflow_env():
    """No telemetry, and no tracking URI leaking in from the developer's shell (every test that tracks,
    the session's ``fitted_run`` included, writes to a store it made itself)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return REAL_DIR


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A phantom TUPAC16-layout dataset root: 3 slides of 1.5 x 1.2 mm, 4 mitosis images."""
    from tupac.synth import generate_cohort

    root = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(root, n_slides=3, seed=7, size_um=(1500.0, 1200.0), mitosis_images=4)
    return root


@pytest.fixture(scope="session")
def fitted_run(tmp_path_factory):
    """``tupac fit`` on 60 synthetic slides, two light models per task, 2 repeats, local MLflow store."""
    import sys

    from typer.testing import CliRunner

    from tupac.cli import app

    sys.path.insert(0, str(ROOT / "tests" / "predict"))
    from synthetic import LIGHT, make_run

    run, gt = make_run(tmp_path_factory.mktemp("fitted"))
    res = CliRunner().invoke(app, ["fit", "--run", str(run), "--labels", str(gt), "--repeats", "2", *LIGHT])
    assert res.exit_code == 0, res.output
    return run, gt, res.output
