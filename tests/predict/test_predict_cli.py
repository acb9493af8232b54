"""``tupac fit`` / ``tupac predict`` end to end on a local MLflow store (the safe-loading rules are in
tests/tracking/test_loading.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import LIGHT, make_run
from tupac.cli import app
from tupac.data import read_scores_submission

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_fit_writes_every_output(fitted_run):
    run, _, output = fitted_run
    out = run / "predict"
    m = json.loads((out / "metrics.json").read_text())
    assert m["cohort"]["n_slides"] == 60 and m["cohort"]["n_excluded"] == 0
    assert m["config"]["seeds"] == "0,1" and len(m["feature_table_sha256"]) == 64
    assert set(m["models"]["grade"]) == {"logreg_enet", "svm"} and set(m["models"]["rna"]) == {"elastic_net", "svr"}
    assert [r["seed"] for r in m["models"]["grade"]["svm"]["per_repeat"]] == [0, 1]
    best = m["summary"]["best"]
    assert best["grade"]["kappa_quadratic_mean"] >= 0.8 and best["rna"]["spearman_rho_mean"] >= 0.8
    preds = pd.read_csv(out / "predictions.csv")
    # every slide predicted once per model and repeat
    assert preds.groupby(["task", "model", "repeat"]).size().eq(60).all() and len(preds) == 60 * 4 * 2
    for name in ("roc_grade.png", "rna_scatter.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bio = pd.read_csv(out / "biomarkers.csv")
    assert set(bio.columns) >= {"feature", "p_rna", "q_rna", "p_grade", "q_grade"} and len(bio) == 34
    sig = pd.read_csv(out / "biomarkers_significant.csv")
    assert ((sig["p_rna"] < 0.005) | (sig["p_grade"] < 0.005)).all() and len(sig) >= 4
    assert pd.read_csv(out / "importance_grade.csv")["rank"].iloc[0] == 1
    info = json.loads((out / "mlflow.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{run.resolve() / 'mlflow.db'}"
    assert info["versions"] == {"grade": "1", "rna": "1"} and info["champion"] == {"grade": True, "rna": True}
    assert (run / "mlartifacts").is_dir()
    assert "grade: best" in output


def test_predict_writes_a_tupac16_submission(fitted_run, tmp_path):
    run, _, _ = fitted_run
    # score "test" slides: the training features under TUPAC-TE IDs
    feats = pd.read_parquet(run / "features.parquet")
    feats["slide_id"] = feats["slide_id"].str.replace("TUPAC-TR", "TUPAC-TE")
    feats = feats.sample(frac=1.0, random_state=0)  # order must not matter
    test_run = tmp_path / "test-run"
    test_run.mkdir()
    feats.to_parquet(tmp_path / "test-features.parquet", index=False)
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", "--run", str(run), "--features", str(tmp_path / "test-features.parquet"),
                              "--rna-model", "models:/tupac-rna-regressor@champion", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sub = read_scores_submission(out / "submission_tasks12.csv")
    assert list(sub["slide_id"]) == [f"TUPAC-TE-{i:03d}" for i in range(1, 61)]
    truth = pd.read_csv(run.parent / "training_ground_truth.csv", header=None)
    # in-sample predictions of a good model agree with the labels
    assert (sub["mitosis_score"].to_numpy() == truth[0].to_numpy()).mean() >= 0.85
    assert np.corrcoef(sub["proliferation_score"], truth[1])[0, 1] >= 0.85
    preds = pd.read_csv(out / "predictions.csv")
    assert np.allclose(preds[["p_1", "p_2", "p_3"]].sum(1), 1.0)


def test_predict_warns_about_a_slide_without_tissue(fitted_run, tmp_path):
    run, _, _ = fitted_run
    feats = pd.read_parquet(run / "features.parquet")
    feats["slide_id"] = feats["slide_id"].str.replace("TUPAC-TR", "TUPAC-TE")
    cols = [c for c in feats.columns if c != "slide_id"]
    feats.insert(1, "no_tissue", 0.0)
    feats.loc[feats["slide_id"] == "TUPAC-TE-005", cols] = np.nan
    feats.loc[feats["slide_id"] == "TUPAC-TE-005", "no_tissue"] = 1.0
    feats.to_parquet(tmp_path / "f.parquet", index=False)
    res = runner.invoke(app, ["predict", "--run", str(run), "--features", str(tmp_path / "f.parquet"),
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.output.splitlines() if "TUPAC-TE-005" in ln]
    assert warned == ["warning: TUPAC-TE-005: no tissue on the slide; its scores come from imputed features "
                      "(every feature is missing)"]


def test_predict_refuses_features_the_model_lacks(fitted_run, tmp_path):
    run, _, _ = fitted_run
    feats = pd.read_parquet(run / "features.parquet").drop(columns="mitotic_density")
    feats.to_parquet(tmp_path / "f.parquet", index=False)
    res = runner.invoke(app, ["predict", "--run", str(run), "--features", str(tmp_path / "f.parquet"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "lacks 1 feature" in res.output and "Traceback" not in res.output


def test_label_errors_fail_with_the_file_and_line(tmp_path):
    run, gt = make_run(tmp_path)
    lines = gt.read_text().splitlines()
    for bad, match in (("4,0.5", "mitosis score must be 1, 2 or 3, got 4"), ("2,nan", "not finite"),
                       ("2,", "not a number")):
        gt.write_text("\n".join(lines[:9] + [bad] + lines[10:]) + "\n")
        res = runner.invoke(app, ["fit", "--run", str(run), "--labels", str(gt), "--no-mlflow", *LIGHT])
        assert res.exit_code == 2, res.output
        assert f"training_ground_truth.csv:10: " in res.output and match in res.output
        assert not (run / "predict").exists()


def test_unmatched_slides_are_reported_and_recorded(tmp_path):
    run, gt = make_run(tmp_path, n=64)
    feats = pd.read_parquet(run / "features.parquet")
    # TR-064 has labels but no features; TR-099 has features but no labels
    extra = feats.iloc[[0]].assign(slide_id="TUPAC-TR-099")
    pd.concat([feats.iloc[:63], extra]).to_parquet(run / "features.parquet", index=False)
    args = ["fit", "--run", str(run), "--labels", str(gt), "--no-mlflow", "--repeats", "1",
            "--grade-models", "logreg_enet", "--rna-models", "elastic_net", "--k-features", "8"]
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 2 and "TUPAC-TR-064 labelled but has no row in the feature table (and 1 more)" in strict.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "excluded TUPAC-TR-064" in res.output and "excluded TUPAC-TR-099" in res.output
    m = json.loads((run / "predict" / "metrics.json").read_text())
    assert m["cohort"]["n_slides"] == 63 and m["cohort"]["n_excluded"] == 2
    assert {e["slide_id"] for e in m["cohort"]["excluded"]} == {"TUPAC-TR-064", "TUPAC-TR-099"}
    assert len(pd.read_csv(run / "predict" / "predictions.csv")) == 63 * 2


def test_a_slide_without_tissue_is_excluded_with_its_reason_and_the_rest_is_fitted(tmp_path):
    run, gt = make_run(tmp_path, n=64)
    feats = pd.read_parquet(run / "features.parquet")
    # What `tupac features` writes for a blank slide: NaN everywhere but the flag.
    feats.insert(1, "no_tissue", 0.0)
    cols = [c for c in feats.columns if c not in ("slide_id", "no_tissue")]
    feats.loc[feats["slide_id"] == "TUPAC-TR-007", cols] = np.nan
    feats.loc[feats["slide_id"] == "TUPAC-TR-007", "no_tissue"] = 1.0
    feats.to_parquet(run / "features.parquet", index=False)
    args = ["fit", "--run", str(run), "--labels", str(gt), "--no-mlflow", "--repeats", "1",
            "--grade-models", "logreg_enet", "--rna-models", "elastic_net", "--k-features", "8"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "TUPAC-TR-007" in ln]
    assert lines == ["excluded TUPAC-TR-007: no tissue on the slide: its features are missing (flag no_tissue)"]
    m = json.loads((run / "predict" / "metrics.json").read_text())
    assert m["cohort"]["n_slides"] == 63 and m["cohort"]["n_features"] == len(cols)  # the flag is not a feature
    assert "TUPAC-TR-007" not in set(pd.read_csv(run / "predict" / "predictions.csv")["slide_id"])


def test_mlflow_ui_without_a_store_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["mlflow-ui", "--run", str(tmp_path)])
    assert res.exit_code == 2 and "no MLflow store" in res.output


def test_mlflow_ui_serves_the_local_store(fitted_run):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    run, _, _ = fitted_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen([sys.executable, "-m", "tupac", "mlflow-ui", "--run", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        body = None
        while body is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/alias"
                    "?name=tupac-grade-classifier&alias=champion")
                with urllib.request.urlopen(req, timeout=2) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read1().decode() if proc.poll() is not None else "no answer"
        assert body["model_version"]["version"] == "1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the command forwards it to the server's own group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
