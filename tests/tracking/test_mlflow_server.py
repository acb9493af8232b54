"""Against a real ``mlflow server`` over HTTP: fit, read the run back, render the UI in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthetic import make_run
from tupac.cli import app

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
RUN_NAME = "server-fit-7f3a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and a local artifact destination."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log = open(root / "server.log", "wb")
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, root
    finally:
        # the server runs gunicorn/uvicorn workers in its own session: stop the whole group we started
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, 9)
        log.close()


@pytest.fixture(scope="module")
def server_fit(server, tmp_path_factory):
    url, _ = server
    run, gt = make_run(tmp_path_factory.mktemp("server-run"))
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", url)
    try:
        res = CliRunner().invoke(app, ["fit", "--run", str(run), "--labels", str(gt), "--repeats", "1",
                                       "--grade-models", "logreg_enet", "--rna-models", "elastic_net",
                                       "--k-features", "8", "--run-name", RUN_NAME])
    finally:
        mp.undo()
    assert res.exit_code == 0, res.output
    return run, json.loads((run / "predict" / "mlflow.json").read_text())


def test_fit_over_http_is_read_back(server, server_fit):
    from mlflow import MlflowClient

    url, root = server
    run, info = server_fit
    assert info["tracking_uri"] == url
    assert not (run / "mlflow.db").exists()  # nothing went to the local store
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    r = client.get_run(info["run_id"])
    assert r.info.run_name == RUN_NAME
    local = json.loads((run / "predict" / "metrics.json").read_text())
    assert r.data.metrics["best.grade.kappa_quadratic_mean"] == pytest.approx(
        local["summary"]["best"]["grade"]["kappa_quadratic_mean"])
    assert r.data.metrics["best.rna.spearman_rho_mean"] >= 0.8
    assert "grade.logreg_enet.auroc_class_2" in r.data.metrics
    assert r.data.params["feature_table_sha256"] == local["feature_table_sha256"]
    assert r.data.tags["tupac.feature_table_sha256"] == local["feature_table_sha256"]
    assert r.data.params["config.seeds"] == "0"
    arts = {f.path for f in client.list_artifacts(info["run_id"], "predict")}
    assert {"predict/metrics.json", "predict/predictions.csv", "predict/roc_grade.png", "predict/rna_scatter.png",
            "predict/biomarkers.csv", "predict/importance_rna.csv"} <= arts
    # artifacts were uploaded through the server into its artifact destination
    assert list((root / "artifacts").rglob("roc_grade.png"))
    for task, name in (("grade", "tupac-grade-classifier"), ("rna", "tupac-rna-regressor")):
        mv = client.get_model_version_by_alias(name, "champion")
        assert str(mv.version) == info["versions"][task] and mv.run_id == info["run_id"]
        assert mv.tags["tupac.task"] == task and len(mv.tags["tupac.model_sha256"]) == 64
        assert mv.source.startswith("models:/m-")
        logged = client.get_logged_model(mv.source.removeprefix("models:/"))
        assert logged.artifact_location.startswith("mlflow-artifacts:")


def test_model_loads_safely_over_http(server, server_fit, monkeypatch):
    from tupac.tracking.loading import load_registered_model

    url, _ = server
    run, _ = server_fit
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    lm = load_registered_model("models:/tupac-rna-regressor@champion", run)
    import pandas as pd

    X = pd.read_parquet(run / "features.parquet").set_index("slide_id")
    assert lm.model.predict(X[lm.model.feature_names_in_]).shape == (60,)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_ui_lists_the_run_in_headless_chromium(server, server_fit, tmp_path, artifacts_dir):
    url, _ = server
    _, info = server_fit
    # MLflow 3 opens an experiment on its GenAI "Overview" tab; the runs table is the /runs route
    page = f"{url}/#/experiments/{info['experiment_id']}/runs"
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1400,900", "--virtual-time-budget=15000"]

    def chromium(extra: list[str], profile: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, f"--user-data-dir={tmp_path / profile}", *extra, page],
                              capture_output=True, timeout=180)

    dom = chromium(["--dump-dom"], "p1")
    html = dom.stdout.decode("utf-8", "replace")
    assert RUN_NAME in html, f"run name not in the rendered page (rc {dom.returncode}):\n{html[-2000:]}\n{dom.stderr[-2000:]!r}"
    shot = tmp_path / "ui.png"
    chromium([f"--screenshot={shot}"], "p2")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copy(shot, artifacts_dir / "predict_mlflow_ui.png")
