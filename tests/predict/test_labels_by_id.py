"""Labels by slide ID in the consumers: ``tupac fit`` on a cohort with non-TUPAC IDs, and the features
stage's choice of training slides (no slides are generated: a synthetic feature table and a manifest)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import LIGHT
from synthetic import synthetic_cohort
from tupac.cli import app
from tupac.errors import DatasetLayoutError
from tupac.feature_run import _cohort_ids, _labels
from tupac.predict.cohort import read_feature_table, read_fit_labels

runner = CliRunner()


def _case_run(tmp_path, n=45):
    """A run whose slides are ``case-1``...: features.parquet, and labels by ID (shuffled, with metadata)."""
    feats, labels = synthetic_cohort(n=n)
    ids = {f"TUPAC-TR-{i:03d}": f"case-{i}" for i in range(1, n + 1)}
    feats["slide_id"] = feats["slide_id"].map(ids)
    run = tmp_path / "run"
    run.mkdir()
    feats.to_parquet(run / "features.parquet", index=False)
    rows = [f"{ids[s]},{g},{r:.6f},site{i % 3}" for i, (s, g, r) in
            enumerate(zip(labels["slide_id"], labels["mitosis_score"], labels["proliferation_score"]))]
    order = np.random.default_rng(0).permutation(n)  # order must not matter: rows are keyed by ID
    path = tmp_path / "labels.csv"
    path.write_text("Slide_ID,Grade,RNA,site\n" + "\n".join(rows[i] for i in order) + "\n")
    return run, path


@pytest.mark.slow
def test_fit_takes_labels_by_id_for_a_cohort_with_non_tupac_ids(tmp_path):
    run, labels = _case_run(tmp_path)
    res = runner.invoke(app, ["fit", "--run", str(run), "--labels", str(labels), "--no-mlflow", "--repeats", "1",
                              *LIGHT])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "predict" / "metrics.json").read_text())
    assert m["cohort"]["n_slides"] == 45 and m["cohort"]["n_excluded"] == 0
    assert m["summary"]["best"]["grade"]["kappa_quadratic_mean"] >= 0.6


def test_fit_labels_must_name_slides_of_the_cohort_and_have_both_targets(tmp_path):
    run, labels = _case_run(tmp_path, n=6)
    table = read_feature_table(run / "features.parquet")
    (run / "slides" / "case-99.zarr").mkdir(parents=True)  # a slide that failed inference is in the cohort
    labels.write_text(labels.read_text() + "case-99,1,0.5,x\ncase-100,1,0.5,x\n")
    with pytest.raises(DatasetLayoutError, match=r"labels\.csv:9: slide 'case-100' is not in .*features\.parquet "
                                                 r"or .*slides"):
        read_fit_labels(labels, table, run, source=str(run / "features.parquet"))
    grade_only = tmp_path / "grade.csv"
    grade_only.write_text("slide_id,grade\ncase-1,2\n")
    res = runner.invoke(app, ["fit", "--run", str(run), "--labels", str(grade_only), "--no-mlflow"])
    assert res.exit_code != 0 and "no 'rna' column" in res.output and "grade.csv:1" in res.output


def test_features_training_slides_are_the_labelled_ones_with_a_grade(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path\ncase-1,a.svs\ncase-2,b.svs\ncase-3,c.svs\ncase-4,d.svs\n")
    run = tmp_path / "run"
    cohort, name = _cohort_ids(run, manifest, ["case-1", "case-2", "case-3"])
    assert cohort == {"case-1", "case-2", "case-3", "case-4"}
    labels = tmp_path / "labels.csv"
    # case-2 has no grade (RNA only): not a training slide; case-4 is in the manifest, not in the run
    labels.write_text("slide_id,grade,rna\ncase-3,3,0.1\ncase-2,,0.2\ncase-1,1,\ncase-4,2,0.3\n")
    training, grades, absent = _labels(labels, ["case-1", "case-2", "case-3"], cohort, name)
    assert training == ["case-3", "case-1"] and grades.tolist() == [3, 1] and grades.dtype == np.int64
    assert absent == ["case-4"]
    labels.write_text("slide_id,grade\ncase-1,1\ncase-5,2\n")
    with pytest.raises(DatasetLayoutError, match=r"labels\.csv:3: slide 'case-5' is not in the run .* or the "
                                                 r"slide source .*m\.csv"):
        _labels(labels, ["case-1"], cohort, name)
