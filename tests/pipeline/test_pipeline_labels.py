"""``tupac run --labels``: a labels file of either format, read before any stage starts."""

from __future__ import annotations

import pytest

from tupac.errors import DatasetLayoutError
from tupac.pipeline import Pipeline, PipelineConfig, run_pipeline


def test_a_broken_labels_file_fails_before_any_stage(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,grade,rna\ncase-1,5,0.1\n")
    with pytest.raises(DatasetLayoutError, match=r"labels\.csv:2: slide 'case-1': grade .* must be 1, 2 or 3"):
        run_pipeline(data, out, PipelineConfig(), labels=labels)
    assert not (out / "config.yaml").exists()
    labels.write_text("slide_id,grade\ncase-1,2\n")  # the fit stage needs both targets
    with pytest.raises(DatasetLayoutError, match="no 'rna' column"):
        run_pipeline(data, out, PipelineConfig(), labels=labels)


def test_labels_default_to_the_datasets_ground_truth(tmp_path):
    p = Pipeline(tmp_path / "data", tmp_path / "out", PipelineConfig())
    assert p.labels == tmp_path / "data" / "training_ground_truth.csv" and not p.given_labels
    q = Pipeline(tmp_path / "data", tmp_path / "out", PipelineConfig(), labels=tmp_path / "l.csv")
    assert q.labels == tmp_path / "l.csv" and q.given_labels
