"""MLflow tracking of the general-feature grade network: runs, params, per-epoch curves, safetensors
weights, the registered model, and features that do not depend on tracking."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from phantom_runs import make_cohort, random_models, truth_run
from typer.testing import CliRunner

from tupac.errors import FeatureTrackingError
from tupac.features.general import GeneralConfig, cross_fit, folds_hash, ids_hash, load_grade_net
from tupac.tracking.general import REGISTERED_NAME, GeneralFitRecord

N_SLIDES, N_TRAIN, EPOCHS, FOLDS = 5, 4, 5, 2


def test_cross_fit_reports_every_fit_and_tracking_changes_no_number(rng):
    cfg = GeneralConfig(width=8, dim=16, epochs=7, lr=2e-2, seed=0)
    grades = np.array([1, 2, 3, 3, 2, 1, 1, 2, 3])
    vols = [rng.normal(0, 1, (2, 5, 3, 3)).astype(np.float32) + g for g in grades]
    new = [rng.normal(0, 1, (2, 5, 3, 3)).astype(np.float32)]
    plain = cross_fit(vols, grades, new, n_splits=3, config=cfg)
    record = GeneralFitRecord()
    tracked = cross_fit(vols, grades, new, n_splits=3, config=cfg, tracker_for=record)
    np.testing.assert_array_equal(tracked.train, plain.train)
    np.testing.assert_array_equal(tracked.new, plain.new)
    assert list(record.fits) == ["fold0", "fold1", "fold2", "all"] and len(tracked.fold_nets) == 3
    for name, fit in record.fits.items():
        assert [step for step, _ in fit.metrics] == list(range(1, cfg.epochs + 1))
        keys = {"train_loss", "heldout_loss", "heldout_accuracy"} if name != "all" else {"train_loss"}
        assert all(set(m) == keys for _, m in fit.metrics)
        held = int((tracked.folds == int(name[-1])).sum()) if name != "all" else 0
        assert fit.params == {"fold": int(name[-1]) if name != "all" else "all", "n_train": len(grades) - held,
                              "n_heldout": held}
    # The full-batch loss falls as the network fits its training slides.
    losses = [m["train_loss"] for _, m in record.fits["all"].metrics]
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One phantom cohort; its features computed untracked, tracked (through the CLI, into RUN/mlflow.db),
    and tracked into a store that cannot be opened."""
    from tupac.feature_run import FeatureRunConfig, run_features

    root = tmp_path_factory.mktemp("gtrack")
    make_cohort(root / "data", n=N_SLIDES)
    lines = (root / "data" / "training_ground_truth.csv").read_text().splitlines()
    labels = root / "labels.csv"
    labels.write_text("\n".join(lines[:N_TRAIN]) + "\n")
    models = random_models(root / "models")
    cfg = FeatureRunConfig(n_patches=3, n_clusters=8, n_splits=FOLDS, min_prob=0.5, general_epochs=EPOCHS,
                           min_region_mm2=0.002)
    kw = dict(labels=labels, models=models, config=cfg)
    paths = {k: root / k for k in ("plain", "tracked", "broken")}
    for p in paths.values():
        truth_run(root / "data", p)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        app = __import__("tupac.cli", fromlist=["app"]).app

        def cli(run, *extra):
            return CliRunner().invoke(app, [
                "features", "--run", str(run), "--labels", str(labels), "--models", str(models),
                "--patches", "3", "--clusters", "8", "--folds", str(FOLDS), "--min-prob", "0.5",
                "--general-epochs", str(EPOCHS), "--min-region-mm2", "0.002", *extra])

        plain = cli(paths["plain"], "--no-mlflow")  # untracked: the reference numbers
        assert plain.exit_code == 0, plain.output
        res = cli(paths["tracked"])
        assert res.exit_code == 0, res.output
        (root / "not_a_dir").write_text("a file where the store's folder should be")
        with pytest.raises(FeatureTrackingError, match="features are written") as err:
            run_features(paths["broken"], tracking_uri=f"sqlite:///{root / 'not_a_dir' / 'mlflow.db'}", **kw)
    return paths, res.output, err.value


def _table(run):
    return pd.read_parquet(run / "features.parquet")


def _client(run):
    from mlflow import MlflowClient

    uri = f"sqlite:///{run / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _fit_runs(client):
    exp = client.get_experiment_by_name("tupac-training")
    found = client.search_runs([exp.experiment_id], "tags.`tupac.component` = 'general'")
    by_name = {r.info.run_name: r for r in found}
    assert len(by_name) == len(found) == FOLDS + 2, sorted(by_name)
    return by_name


@pytest.mark.slow
def test_features_are_the_same_with_tracking_and_when_the_store_fails(runs):
    paths, output, err = runs
    plain = _table(paths["plain"])
    assert any(c.startswith("general_") for c in plain.columns)
    pd.testing.assert_frame_equal(_table(paths["tracked"]), plain, check_exact=True)
    # The store could not be opened: the features are written all the same, and the error says so.
    pd.testing.assert_frame_equal(_table(paths["broken"]), plain, check_exact=True)
    assert str(paths["broken"] / "features.parquet") in str(err) and "not_a_dir" in str(err)
    assert len(str(err).splitlines()) == 1
    assert (paths["broken"] / "features" / "summary.json").is_file()
    assert not (paths["broken"] / "features" / "mlflow.json").exists()
    assert not (paths["plain"] / "mlflow.db").exists() and not (paths["plain"] / "features" / "mlflow.json").exists()
    assert "registered tupac-general-grade version 1" in " ".join(output.split())


@pytest.mark.slow
def test_each_fit_is_a_run_with_params_and_per_epoch_curves(runs):
    paths = runs[0]
    run = paths["tracked"]
    client = _client(run)
    by_name = _fit_runs(client)
    parent = by_name["general-grade"]
    folds = [by_name[f"general-grade fold {k}"] for k in range(FOLDS)]
    final = by_name["general-grade all training slides"]
    for child in folds + [final]:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert all(r.info.status == "FINISHED" for r in by_name.values())

    meta = json.loads((run / "features" / "general" / "general.json").read_text())
    train_ids = meta["train_ids"]
    card = json.loads((run.parent / "models" / "mitosis" / "card.json").read_text())
    weights = hashlib.sha256((run.parent / "models" / "mitosis" / "model.safetensors").read_bytes()).hexdigest()
    for r in by_name.values():
        p = r.data.params
        assert p["frozen_model"] == "mitosis" and p["frozen_model_arch"] == card["architecture"]
        assert p["frozen_model_sha256"] == weights
        assert p["patches_per_slide"] == "8" and p["epochs"] == str(EPOCHS) and p["seed"] == "0"
        assert float(p["lr"]) == GeneralConfig().lr and p["dim"] == "1024" and p["n_splits"] == str(FOLDS)
        assert p["train_ids_sha256"] == ids_hash(train_ids)
        assert p["folds_sha256"] == folds_hash(train_ids, meta["folds"])
        assert len(p["volumes_sha256"]) == 64 and "GradeNet" in p["architecture"]
    assert 0.0 <= parent.data.metrics["oof_accuracy"] <= 1.0 and parent.data.metrics["oof_log_loss"] > 0

    for k, r in enumerate(folds):
        held = [s for s, f in zip(train_ids, meta["folds"]) if f == k]
        assert r.data.params["heldout_ids"] == ",".join(held) and r.data.params["n_heldout"] == str(len(held))
        for key in ("train_loss", "heldout_loss", "heldout_accuracy"):
            hist = client.get_metric_history(r.info.run_id, key)
            assert sorted(m.step for m in hist) == list(range(1, EPOCHS + 1)), key
        assert all(0.0 <= m.value <= 1.0 for m in client.get_metric_history(r.info.run_id, "heldout_accuracy"))
        # Stamped when each epoch ran, not when it was logged.
        stamps = [m.timestamp for m in sorted(client.get_metric_history(r.info.run_id, "train_loss"), key=lambda m: m.step)]
        assert stamps == sorted(stamps) and stamps[-1] <= r.info.start_time
    assert final.data.params["n_train"] == str(N_TRAIN) and final.data.params["n_heldout"] == "0"
    assert sorted(m.step for m in client.get_metric_history(final.info.run_id, "train_loss")) == list(range(1, EPOCHS + 1))
    assert "heldout_loss" not in final.data.metrics

    recorded = json.loads((run / "features" / "mlflow.json").read_text())
    assert recorded["parent_run_id"] == parent.info.run_id and recorded["run_ids"]["all"] == final.info.run_id


@pytest.mark.slow
def test_weights_round_trip_through_safetensors_and_the_final_network_is_registered(runs, tmp_path):
    import mlflow
    from safetensors.torch import load_file

    run = runs[0]["tracked"]
    client = _client(run)
    by_name = _fit_runs(client)
    final = by_name["general-grade all training slides"]
    uri = f"sqlite:///{run / 'mlflow.db'}"

    saved = run / "features" / "general"
    local = mlflow.artifacts.download_artifacts(run_id=final.info.run_id, artifact_path="model",
                                                dst_path=str(tmp_path / "final"), tracking_uri=uri)
    names = sorted(p.name for p in (tmp_path / "final" / "model").iterdir())
    assert names == ["general.json", "general.safetensors"], names
    logged, ours = load_file(f"{local}/general.safetensors"), load_file(str(saved / "general.safetensors"))
    assert logged.keys() == ours.keys()
    for k in ours:
        assert logged[k].dtype == ours[k].dtype and (logged[k] == ours[k]).all(), k
    net, card = load_grade_net(local)
    assert card["train_ids"] == json.loads((saved / "general.json").read_text())["train_ids"]
    for k, v in net.state_dict().items():
        assert (v == ours[k]).all(), k

    fold = by_name["general-grade fold 1"]
    local = mlflow.artifacts.download_artifacts(run_id=fold.info.run_id, artifact_path="model",
                                                dst_path=str(tmp_path / "fold1"), tracking_uri=uri)
    _, fcard = load_grade_net(local)
    assert fcard["fold"] == 1 and fcard["heldout_ids"] == fold.data.params["heldout_ids"].split(",")
    # A fold network is not the final one (it saw fewer slides).
    assert not (load_file(f"{local}/general.safetensors")["fc.weight"] == ours["fc.weight"]).all()

    versions = client.search_model_versions(f"name = '{REGISTERED_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    v = versions[0]
    assert v.run_id == final.info.run_id and v.source.endswith("/model")
    assert v.tags["tupac.weights_sha256"] == hashlib.sha256((saved / "general.safetensors").read_bytes()).hexdigest()
    assert by_name["general-grade"].data.tags["tupac.registered_version"] == "1"
    # (models:/ URIs resolve through the default registry, not tracking_uri: ask this store for the location)
    registered = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(REGISTERED_NAME, "1"),
        dst_path=str(tmp_path / "registered"), tracking_uri=uri)
    assert (load_file(f"{registered}/general.safetensors")["head.weight"] == ours["head.weight"]).all()
