"""`tupac features` input errors: one line naming the file, non-zero exit, no traceback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray
from feature_stores import write_run_slide
from typer.testing import CliRunner

from tupac.cli import app


def _invoke(*args):
    return CliRunner().invoke(app, ["features", *map(str, args)])


def _slide(tmp_path, run, sid, det, commit=True):
    f = tmp_path / f"{sid}.svs"
    f.write_bytes(b"not really a slide")
    tumor = np.zeros((20, 20), np.float32)
    tumor[5:15, 5:15] = 0.9
    write_run_slide(run, sid, f, {"tumor": (tumor, 16.0, None, 8)}, det, commit=commit)


def test_bad_inputs_give_one_line(tmp_path):
    r = _invoke("--run", tmp_path / "nope")
    assert r.exit_code != 0 and "nope/slides" in r.output and "Traceback" not in r.output
    run = tmp_path / "run"
    _slide(tmp_path, run, "a", None, commit=False)
    r = _invoke("--run", run)
    assert r.exit_code != 0 and "no committed slide" in r.output and "a: not committed" in r.output
    _slide(tmp_path, run, "b", pd.DataFrame({"x": [1.0], "y": [2.0], "prob": [0.9]}))
    (run / "slides" / "b.mitoses.csv").write_text("x,y\n1,2\n")
    r = _invoke("--run", run, "--no-pixels", "--slides", tmp_path / "manifest.csv")
    assert r.exit_code != 0 and "manifest.csv" in r.output
    r = _invoke("--run", run, "--scheduler", "dask")
    assert r.exit_code != 0 and "--scheduler" in r.output


def test_heatmap_only_features_from_a_manifest(tmp_path):
    run = tmp_path / "run"
    det = pd.DataFrame({"x": [700.0, 800.0, 5.0], "y": [700.0, 900.0, 5.0], "prob": [0.9, 0.8, 0.2]})
    _slide(tmp_path, run, "b", det)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path,mpp\nb,{tmp_path / 'b.svs'},0.25\n")
    r = _invoke("--run", run, "--no-pixels", "--slides", manifest, "--min-prob", "0.5")
    assert r.exit_code == 0, r.output
    t = pd.read_parquet(run / "features.parquet")
    assert t["slide_id"].tolist() == ["b"] and t.loc[0, "arch_n_mitoses"] == 2 and t.loc[0, "arch_n_in_tumor"] == 2
    assert t.loc[0, "tumor_area_mm2"] == np.float64(100 * 0.016**2)
    assert not any(c.startswith(("bio_", "deep_hist", "general")) for c in t.columns)


def test_grades_too_few_for_the_folds_are_a_clear_error_before_any_slide_is_read(tmp_path):
    """Before: scikit-learn's traceback ("n_splits=5 cannot be greater than the number of members
    in each class") after every slide's features were computed."""
    run = tmp_path / "run"
    for i in range(1, 5):
        _slide(tmp_path, run, f"TUPAC-TR-00{i}", pd.DataFrame({"x": [1.0], "y": [2.0], "prob": [0.9]}))
    labels = tmp_path / "training_ground_truth.csv"
    labels.write_text("1,0.1\n1,0.2\n2,0.3\n3,0.4\n")
    r = _invoke("--run", run, "--labels", labels, "--models", tmp_path / "models", "--folds", "5")
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(labels) in lines[0]
    assert "cross-fitting in 5 folds needs at least 5 slides of one grade, and has grade 1: 2, grade 2: 1, " \
           "grade 3: 1 (use --folds 2 or fewer, or label more slides)" in lines[0]
    assert not (run / "features.parquet").exists()


def test_ray_scheduler_gives_the_local_table(tmp_path):
    # `--scheduler ray` runs the heatmap graphs as Ray tasks (Dask-on-Ray, infer/dask_on_ray.py):
    # same features as Dask's local scheduler.
    det = pd.DataFrame({"x": [700.0, 800.0, 5.0], "y": [700.0, 900.0, 5.0], "prob": [0.9, 0.8, 0.2]})
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path,mpp\nb,{tmp_path / 'b.svs'},0.25\n")
    tables = {}
    try:
        for scheduler in ("local", "ray"):
            run = tmp_path / scheduler
            _slide(tmp_path, run, "b", det)
            r = _invoke("--run", run, "--no-pixels", "--slides", manifest, "--scheduler", scheduler)
            assert r.exit_code == 0, r.output
            tables[scheduler] = pd.read_parquet(run / "features.parquet")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(tables["local"], tables["ray"])
