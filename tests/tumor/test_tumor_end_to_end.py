"""Train the tumor localizer through the CLI, map a held-out slide, and check quality against truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tupac.cli import app

pytestmark = pytest.mark.slow

NARROW = """
tumor:
  model_kwargs: {widths: [8, 16, 24, 32, 64], fc_width: 64}
  train: {lr: 0.003, batch_size: 32, monitor: loss, lr_schedule: cosine}
"""


@pytest.fixture(scope="module")
def held_out_cohort(tmp_path_factory):
    from tupac.synth import generate_cohort

    root = tmp_path_factory.mktemp("heldout") / "cohort"
    generate_cohort(root, n_slides=2, seed=8, size_um=(1500.0, 1200.0), mitosis_images=0)
    return root


@pytest.fixture(scope="module")
def trained_models(small_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    cfg = out / "narrow.yaml"
    cfg.write_text(NARROW)
    result = CliRunner().invoke(
        app,
        ["train", "tumor", "--data", str(small_cohort), "--out", str(out), "--epochs", "8",
         "--patches-per-slide", "150", "--config", str(cfg), "--seed", "1"],
    )
    assert result.exit_code == 0, result.output
    return out


def test_training_writes_a_loadable_model_with_its_template(trained_models):
    from tupac.models.trained import load_trained

    tumor = trained_models / "tumor"
    for name in ("model.safetensors", "card.json", "stain_reference.json", "training.json"):
        assert (tumor / name).is_file(), name
    card = json.loads((tumor / "card.json").read_text())
    assert card["stain_method"] == "wsics" and card["stain_reference"] == "stain_reference.json"
    assert card["mpp"] == 1.0 and card["task"] == "tumor"
    record = json.loads((tumor / "training.json").read_text())
    assert [s["stage"] for s in record["stages"]] == [1, 2]
    assert record["val_slides"] and not set(record["val_slides"]) & set(record["train_slides"])
    trained = load_trained(tumor)
    assert 0.0 < trained.threshold < 1.0 and trained.reference.method == "wsics"


def test_training_is_tracked_and_registered_in_mlflow(trained_models):
    from mlflow import MlflowClient

    uri = f"sqlite:///{trained_models / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='tupac-tumor-locnet'")
    assert len(versions) == 1
    run = client.get_run(versions[0].run_id)
    assert run.info.status == "FINISHED"
    assert "stage1_val_auroc" in run.data.metrics and run.data.params["tumor.arch"] == "locnet"
    for stage in (1, 2):
        history = client.get_metric_history(run.info.run_id, f"stage{stage}.train_loss")
        assert [m.step for m in history] == list(range(1, 9))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/card.json", "model/stain_reference.json"} <= artifacts


def test_tumor_map_cli_writes_ngff_zarr(trained_models, held_out_cohort, tmp_path):
    from tupac.heatmaps.store import HeatmapStore

    slide = held_out_cohort / "training_image_data" / "TUPAC-TR-001.svs"
    out = tmp_path / "map.zarr"
    result = CliRunner().invoke(app, ["tumor-map", str(slide), "--models", str(trained_models), "--out", str(out)])
    assert result.exit_code == 0, result.output
    store = HeatmapStore.open(out, mode="r")
    assert store.committed
    tumor = store.read("tumor")
    assert tumor.dtype == np.float32 and 0.0 <= tumor.min() and tumor.max() <= 1.0
    assert store.mpp("tumor") == pytest.approx(16.0)
    import zarr

    ms = zarr.open_group(out / "tumor", mode="r").attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"] and ms["axes"][0]["unit"] == "micrometer"
    # a second run refuses to overwrite the committed map
    again = CliRunner().invoke(app, ["tumor-map", str(slide), "--models", str(trained_models), "--out", str(out)])
    assert again.exit_code != 0 and "Traceback" not in again.output


def test_held_out_quality(trained_models, held_out_cohort):
    from tupac.models.trained import load_trained
    from tupac.synth.tumor_quality import evaluate_cohort

    table, pooled = evaluate_cohort(load_trained(trained_models / "tumor"), held_out_cohort)
    print(table.to_string(), pooled)
    assert pooled["auroc"] >= 0.95
    assert pooled["dice"] >= 0.85
    # The tumor area the features report (this map at their 0.5 threshold) on every held-out slide,
    # within the 10 %. Before the stage-2 change the rims of the regions were taught as
    # non-tumor (-35 %); with stage 2 alone this two-annotated-slide model erred outward by +3 % to
    # +20 % across runs, depending on where it put the boundary in the margin's unlabelled band.
    # Edge patches teach it the center rule: -0.3 % and +2.3 % (seeded; earlier unseeded runs -3 to +1 %).
    assert pooled["area_rel_error_max_abs"] <= 0.10, table[["slide_id", "area_rel_error"]]
