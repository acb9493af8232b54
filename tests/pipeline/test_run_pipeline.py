"""`tupac run` end to end on a small phantom cohort: every artifact, and resumability."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tupac.cli import app

pytestmark = pytest.mark.slow

TINY = """
seed: 3
tumor:
  model_kwargs: {widths: [8, 8, 16, 16, 32], fc_width: 32}
  positives_per_slide: 60
  negatives_per_slide: 60
  train: {epochs: 3, batch_size: 32, lr: 0.003, monitor: loss, lr_schedule: cosine}
mitosis:
  train: {epochs: 3}
infer:
  local_cpus: 2
  object_store_mb: 200
  include_dashboard: false
features:
  n_patches: 3
  n_clusters: 4
  general_patches: 1
  general_epochs: 5
  n_splits: 2
fit:
  repeats: 1
  n_splits: 2
  inner_splits: 2
  k_features: 10
  n_boot: 100
  grade_models: [logreg_enet]
  rna_models: [elastic_net]
report:
  n_boot: 100
"""


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from tupac.synth import generate_cohort

    base = tmp_path_factory.mktemp("pipeline")
    data = base / "data"
    generate_cohort(data, n_slides=12, seed=11, size_um=(1000.0, 800.0), mitosis_images=6)
    cfg = base / "tiny.yaml"
    cfg.write_text(TINY)
    run = base / "run"
    args = ["run", "--data", str(data), "--out", str(run), "--config", str(cfg)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    return data, run, args


def test_every_artifact_exists_and_is_sane(pipeline_run):
    import zarr
    from mlflow import MlflowClient

    from tupac.heatmaps.commit import read_commit
    from tupac.report.geojson import validate_feature_collection

    data, run, _ = pipeline_run
    ids = sorted(p.stem for p in (data / "training_image_data").glob("*.svs"))
    for sid in ids:
        store = run / "slides" / f"{sid}.zarr"
        rec = read_commit(store)
        assert rec.slide_id == sid
        for image in ("tissue", "tumor", "mitosis"):
            ms = zarr.open_group(store / image, mode="r").attrs["ome"]["multiscales"][0]
            assert [a["name"] for a in ms["axes"]] == ["y", "x"]
            assert ms["datasets"][0]["coordinateTransformations"][0]["type"] == "scale"
        det = pd.read_csv(run / "slides" / f"{sid}.mitoses.csv")
        assert list(det.columns) == ["x", "y", "prob"]
        for kind in ("tumor", "mitoses"):
            fc = json.loads((run / "qupath" / f"{sid}.{kind}.geojson").read_text())
            assert fc["type"] == "FeatureCollection"
            assert validate_feature_collection(fc, (4000, 3200)) == []
    table = pd.read_parquet(run / "features.parquet")
    assert sorted(table["slide_id"]) == ids
    numeric = table.drop(columns="slide_id").to_numpy(dtype=float)
    assert np.isfinite(numeric).all()
    assert {"arch_n_mitoses", "tumor_area_mm2"} <= set(table.columns)
    metrics = json.loads((run / "predict" / "metrics.json").read_text())
    assert "grade" in json.dumps(metrics) and "rna" in json.dumps(metrics)
    html = (run / "report" / "index.html").read_text()
    assert all(sid in html for sid in ids)
    uri = f"sqlite:///{run / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    names = {m.name for m in client.search_registered_models()}
    assert {"tupac-grade-classifier", "tupac-rna-regressor"} <= names
    models_uri = f"sqlite:///{run / 'models' / 'mlflow.db'}"
    names = {m.name for m in MlflowClient(tracking_uri=models_uri, registry_uri=models_uri).search_registered_models()}
    assert {"tupac-tumor-locnet", "tupac-mitosis-mitosnet"} <= names


def test_second_run_does_no_work_and_a_deleted_slide_is_redone_alone(pipeline_run):
    data, run, args = pipeline_run
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    last = json.loads((run / "pipeline" / "last.json").read_text())
    assert last["ran"] == []

    victim = "TUPAC-TR-004"
    others = {p.name: os.stat(p / "commit.json").st_mtime_ns for p in (run / "slides").glob("*.zarr") if victim not in p.name}
    shutil.rmtree(run / "slides" / f"{victim}.zarr")
    (run / "slides" / f"{victim}.mitoses.csv").unlink()
    third = CliRunner().invoke(app, args)
    assert third.exit_code == 0, third.output
    assert (run / "slides" / f"{victim}.zarr" / "commit.json").is_file()
    after = {p.name: os.stat(p / "commit.json").st_mtime_ns for p in (run / "slides").glob("*.zarr") if victim not in p.name}
    assert after == others  # no other slide was recomputed
    last = json.loads((run / "pipeline" / "last.json").read_text())
    assert "train_tumor" not in last["ran"] and "train_mitosis" not in last["ran"] and "infer" in last["ran"]


def test_features_made_by_an_older_algorithm_are_recomputed(pipeline_run, monkeypatch):
    """A run whose feature table an older features algorithm made: the next `tupac run` recomputes the
    table (and what depends on it), not the networks or the heatmaps."""
    import tupac.pipeline

    data, run, args = pipeline_run
    monkeypatch.setattr(tupac.pipeline, "FEATURES_ALGORITHM_VERSION", tupac.pipeline.FEATURES_ALGORITHM_VERSION + 1)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    last = json.loads((run / "pipeline" / "last.json").read_text())
    assert last["ran"][0] == "features" and "train_tumor" not in last["ran"] and "infer" not in last["ran"]
