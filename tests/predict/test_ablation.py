"""The feature-group ablation: each catalog group alone and all but it, in ablation.json, ablation.csv,
the HTML report and the ``tupac fit`` options."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tupac.cli import app
from tupac.errors import ConfigError
from tupac.features.catalog import GROUPS, feature_list
from tupac.predict.ablation import OTHER, column_groups, run_ablation
from tupac.predict.cohort import Cohort, validate_feature_table
from tupac.predict.fit import ABLATION_FILES, FitConfig, fit_cohort, n_steps, write_outputs

SIGNAL = "mitosis_bio"
ABSENT = "fringe"
PRESENT = [g for g in GROUPS if g != ABSENT]


def group_signal_table(n: int = 60, per_group: int = 4, seed: int = 0) -> Cohort:
    """A cohort whose catalog-named columns are noise except those of :data:`SIGNAL`.

    A latent ``z ~ N(0, 1)`` sets the grade (tertiles) and the RNA score (``0.8 z + N(0, 0.25)``);
    the first ``per_group`` columns of every group but :data:`ABSENT` are in the table, the
    :data:`SIGNAL` ones noisy multiples of ``z``, the others independent N(0, 1).
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    grade = np.digitize(z, np.quantile(z, [1 / 3, 2 / 3])) + 1
    rna = 0.8 * z + rng.normal(0.0, 0.25, n)
    cols = {}
    for g in PRESENT:
        for j, f in enumerate(feature_list([g])[:per_group]):
            cols[f.name] = z * (1 + j) + rng.normal(0.0, 0.3, n) if g == SIGNAL else rng.normal(size=n)
    X = pd.DataFrame(cols, index=pd.Index([f"TUPAC-TR-{i:03d}" for i in range(1, n + 1)], name="slide_id"))
    return Cohort(validate_feature_table(X), grade.astype(np.int64), rna)


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    """One light fit with the ablation (one model per task, one repeat: ~20 s), its outputs and its ticks."""
    cfg = FitConfig(repeats=1, k_features=10, grade_models=("logreg_enet",), rna_models=("elastic_net",),
                    n_boot=200, importance_repeats=1)
    ticks = []
    result = fit_cohort(group_signal_table(), cfg, progress=ticks.append)
    run = tmp_path_factory.mktemp("ablation") / "run"
    paths = write_outputs(result, run / "predict")
    return result, paths, run, ticks, cfg


def _by_group(doc: dict) -> dict[str, dict]:
    return {g["group"]: g for g in doc["groups"]}


def test_column_groups_follow_the_catalog_flags_included() -> None:
    cols = ["tumor_area_mm2", "tumor_missing", "deep_hist_000", "deep_hist_0999", "deep_hist_missing", "noise",
            "general_0000"]
    groups = column_groups(cols)
    assert list(groups)[: len(GROUPS)] == list(GROUPS)
    assert groups["tumor"] == ["tumor_area_mm2", "tumor_missing"]
    # any k-means size: 3-digit and 4-digit bins, and the group's flag
    assert groups["deep_hist"] == ["deep_hist_000", "deep_hist_0999", "deep_hist_missing"]
    assert groups["general"] == ["general_0000"] and groups["fringe"] == [] and groups[OTHER] == ["noise"]
    assert OTHER not in column_groups(["tumor_area_mm2"])


def test_ablation_shows_the_group_that_carries_the_signal(ablated) -> None:
    result, paths, _, _, _ = ablated
    doc = json.loads(paths["ablation"].read_text())
    ref = doc["reference"]
    assert ref["grade"]["kappa_quadratic"] > 0.8 and ref["rna"]["spearman_rho"] > 0.8
    # the reference is the fit's own figure (first repeat of the best model, the same folds)
    assert ref["grade"]["kappa_quadratic"] == pytest.approx(
        result.metrics["models"]["grade"]["logreg_enet"]["per_repeat"][0]["kappa_quadratic"])
    assert ref["rna"]["spearman_rho"] == pytest.approx(
        result.metrics["models"]["rna"]["elastic_net"]["per_repeat"][0]["spearman_rho"])
    rows = _by_group(doc)
    alone, removed = rows[SIGNAL]["alone"], rows[SIGNAL]["removed"]
    assert alone["grade"]["kappa_quadratic"] >= ref["grade"]["kappa_quadratic"] - 0.1
    assert alone["rna"]["spearman_rho"] >= ref["rna"]["spearman_rho"] - 0.1
    assert alone["grade"]["accuracy"] >= ref["grade"]["accuracy"] - 0.1
    # chance: kappa and rho 0, accuracy 1/3
    assert removed["grade"]["kappa_quadratic"] < 0.4 and removed["rna"]["spearman_rho"] < 0.3
    assert removed["grade"]["accuracy"] < 0.5
    for g in PRESENT:
        if g == SIGNAL:
            continue
        a = rows[g]["alone"]
        assert a["grade"]["kappa_quadratic"] < 0.3 and a["rna"]["spearman_rho"] < 0.4, g
        r = rows[g]["removed"]  # the signal is still there without a noise group
        assert r["grade"]["kappa_quadratic"] > 0.7 and r["rna"]["spearman_rho"] > 0.8, g


def test_ablation_json_has_every_group_and_the_absent_one(ablated) -> None:
    _, paths, _, _, cfg = ablated
    doc = json.loads(paths["ablation"].read_text())
    assert [g["group"] for g in doc["groups"]] == list(GROUPS)  # catalog order, no uncatalogued column
    assert doc["models"] == {"grade": "logreg_enet", "rna": "elastic_net"}
    assert doc["settings"] == {"seed": cfg.seed, "n_splits": cfg.n_splits, "inner_splits": cfg.inner_splits,
                               "k_features": cfg.k_features, "n_boot": cfg.ablation_n_boot, "repeats": 1}
    rows = _by_group(doc)
    assert rows[ABSENT]["status"] == "absent" and rows[ABSENT]["n_features"] == 0
    assert rows[ABSENT]["alone"] == {"status": "absent", "n_features": 0}
    assert rows[ABSENT]["removed"]["status"] == "absent" and "grade" not in rows[ABSENT]["removed"]
    for g in PRESENT:
        assert rows[g]["status"] == "ok" and rows[g]["alone"]["n_features"] == 4
        assert rows[g]["removed"]["n_features"] == 4 * (len(PRESENT) - 1)
    table = pd.read_csv(paths["ablation_table"])
    assert len(table) == 1 + 2 * len(GROUPS) and table["variant"].iloc[0] == "all"
    assert set(table.loc[table["group"] == ABSENT, "status"]) == {"absent"}
    sig = table[(table["group"] == SIGNAL) & (table["variant"] == "removed")].iloc[0]
    assert sig["delta_rna_spearman_rho"] == pytest.approx(sig["rna_spearman_rho"] - table["rna_spearman_rho"].iloc[0])
    assert sig["delta_grade_kappa_quadratic"] < -0.4


def test_progress_counts_the_ablation(ablated) -> None:
    *_, ticks, cfg = ablated
    assert len(ticks) == n_steps(cfg) and sum("ablation" in t for t in ticks) == 2


def test_report_shows_what_carries_the_signal(ablated) -> None:
    from tupac.report.html import SECTIONS, build_report

    _, _, run, _, _ = ablated
    assert "ablation" in SECTIONS
    res = build_report(run, max_side=64)
    page = res.index.read_text()
    sec = page.split('<section id="ablation">', 1)[1].split("</section>", 1)[0]
    assert "What carries the signal" in sec and "<table" in sec and "Not computed" not in sec
    assert "Biological (mitosis): alone" in sec and "Biological (mitosis): removed" in sec
    assert sec.count("<tr>") == 1 + 1 + 2 * len(GROUPS)  # header, all features, two per group
    assert "absent from the table" in sec
    assert "ablation" not in res.missing


def test_report_without_ablation_says_it_was_not_run(ablated, tmp_path) -> None:
    from tupac.report.html import build_report

    _, _, run, _, _ = ablated
    other = tmp_path / "run"
    shutil.copytree(run / "predict", other / "predict")
    (other / "predict" / "ablation.json").unlink()
    res = build_report(other, max_side=64)
    sec = res.index.read_text().split('<section id="ablation">', 1)[1].split("</section>", 1)[0]
    assert "No feature-group ablation" in sec and "tupac fit --ablation" in sec and "ablation" not in res.missing


def test_a_group_holding_every_column_reuses_the_fit_and_has_nothing_left_when_removed() -> None:
    # No CV runs here: "alone" is the full set (the fit's own predictions) and "removed" is empty.
    names = [f.name for f in feature_list([SIGNAL])[:3]]
    X = pd.DataFrame(np.zeros((4, 3)), columns=names)
    ref = {"grade": pd.DataFrame({"y_true": [1, 2, 3, 3], "y_pred": [1, 2, 3, 2]}),
           "rna": pd.DataFrame({"y_true": [0.1, 0.2, 0.3, 0.4], "y_pred": [0.1, 0.3, 0.2, 0.4]})}
    ab = run_ablation(X, {"grade": None, "rna": None}, {"grade": "logreg_enet", "rna": "elastic_net"}, ref,
                      seed=0, n_splits=2, inner_splits=2, k_features=5, n_boot=10)
    rows = {g["group"]: g for g in ab.groups}
    assert rows[SIGNAL]["alone"]["grade"] == ab.reference["grade"]
    assert rows[SIGNAL]["alone"]["rna"] == ab.reference["rna"]
    assert rows[SIGNAL]["removed"] == {"status": "empty", "n_features": 0}
    assert ab.reference["rna"]["spearman_rho"] == pytest.approx(0.8)
    assert all(rows[g]["status"] == "absent" for g in GROUPS if g != SIGNAL)


def test_ablation_config_is_checked() -> None:
    from tupac.pipeline import DEMO_CONFIG, PipelineConfig

    # on where it costs about half the fit (the defaults), off for the demo's light fit (3-5x)
    assert FitConfig().ablation is True and PipelineConfig().fit_config().ablation is True
    assert DEMO_CONFIG.fit_config().ablation is False
    with pytest.raises(ConfigError, match="ablation_n_boot"):
        FitConfig(ablation_n_boot=0)


@pytest.mark.slow
def test_fit_cli_ablation_default_and_no_ablation_removes_a_stale_one(fitted_run, tmp_path) -> None:
    run, gt, _ = fitted_run
    # the session's fit ran with the default: its uncatalogued synthetic columns are one pseudo-group
    doc = json.loads((run / "predict" / "ablation.json").read_text())
    assert [g["group"] for g in doc["groups"] if g["status"] == "ok"] == [OTHER]
    assert (run / "predict" / "ablation.csv").is_file()
    other = tmp_path / "run"
    shutil.copytree(run, other)
    res = CliRunner().invoke(app, ["fit", "--run", str(other), "--labels", str(gt), "--no-mlflow", "--no-ablation",
                                   "--repeats", "1", "--grade-models", "logreg_enet", "--rna-models", "elastic_net",
                                   "--k-features", "10"])
    assert res.exit_code == 0, res.output
    for name in ABLATION_FILES.values():
        assert not (other / "predict" / name).exists(), name
    assert json.loads((other / "predict" / "metrics.json").read_text())["config"]["ablation"] is False


def test_nan_figures_are_null_in_the_json(ablated, tmp_path) -> None:
    # A constant prediction has no Spearman rho: ablation.json must stay strict JSON (null, not NaN).
    result, _, _, _, _ = ablated
    changed = dataclasses.replace(result, ablation=copy.deepcopy(result.ablation))
    changed.ablation.groups[0]["alone"]["rna"] = {"spearman_rho": math.nan}
    paths = write_outputs(changed, tmp_path / "predict")
    doc = json.loads(paths["ablation"].read_text())
    assert doc["groups"][0]["alone"]["rna"]["spearman_rho"] is None
    assert math.isnan(pd.read_csv(paths["ablation_table"])["rna_spearman_rho"].iloc[1])


def test_mlflow_metrics_of_the_ablation(ablated) -> None:
    from tupac.tracking.fits import _ablation_metrics, _metrics_to_log

    result, *_ = ablated
    logged = {k: v for k, v, _ in _metrics_to_log(result) if k.startswith("ablation.")}
    assert logged == {k: v for k, v, _ in _ablation_metrics(result)}
    doc = _by_group({"groups": result.ablation.groups})
    assert logged[f"ablation.{SIGNAL}.alone.rna.spearman_rho"] == doc[SIGNAL]["alone"]["rna"]["spearman_rho"]
    assert f"ablation.{SIGNAL}.removed.grade.kappa_quadratic" in logged
    assert not any(k.startswith(f"ablation.{ABSENT}.") or ".accuracy_ci" in k for k in logged)
    # three figures (accuracy, kappa, rho) per row, two rows per present group: a small addition to the run
    assert len(logged) == len(PRESENT) * 2 * 3


def test_a_group_of_constant_columns_is_reported_constant_not_a_crash() -> None:
    # A group of zeros (no fringe found on any slide) leaves nothing to fit once the pipelines drop
    # constant columns: that row says so, and the others are still computed.
    cohort = group_signal_table(n=30)
    X = cohort.X.copy()
    X[column_groups(X.columns)["tumor"]] = 0.0
    cfg = FitConfig(repeats=1, n_splits=2, inner_splits=2, k_features=10, grade_models=("logreg_enet",),
                    rna_models=("elastic_net",), n_boot=50, importance_repeats=1)
    result = fit_cohort(Cohort(X, cohort.grade, cohort.rna), cfg)
    rows = _by_group({"groups": result.ablation.groups})
    assert rows["tumor"]["alone"] == {"status": "constant", "n_features": 4}
    assert rows["tumor"]["removed"]["status"] == "ok"
    assert rows[SIGNAL]["alone"]["status"] == "ok" and rows[SIGNAL]["alone"]["rna"]["spearman_rho"] > 0.8
