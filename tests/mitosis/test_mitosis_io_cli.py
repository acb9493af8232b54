"""TUPAC16 task-3 files and the ``tupac score-mitoses`` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tupac.cli import app
from tupac.errors import DatasetLayoutError
from tupac.mitosis.io import pair_csv_trees, read_detections_csv, read_truth_csv, write_detections_csv

runner = CliRunner()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def dirs(tmp_path):
    """Truth for 3 images (one empty), predictions for 2 of them."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _write(truth / "01" / "01.csv", "100,200\n400,400\n")
    _write(truth / "01" / "02.csv", "")
    _write(truth / "02" / "01.csv", "50,60\n")
    # 01/01: one TP (row 102, col 205), one double detection (FP), one FN (400,400 missed)
    _write(pred / "01" / "01.csv", "102,205,0.9\n98,195,0.8\n")
    # 01/02: one FP on an image without mitoses
    _write(pred / "01" / "02.csv", "10,10,0.5\n")
    # 02/01 has no prediction file: one FN
    return pred, truth


def test_truth_and_detection_readers_use_x_col_y_row(tmp_path):
    t = read_truth_csv(_write(tmp_path / "t.csv", "10,20\n30,40\n\n"))  # trailing blank lines are fine
    assert t[["x", "y"]].to_numpy().tolist() == [[20, 10], [40, 30]]
    with pytest.raises(DatasetLayoutError, match=r"t2.csv:2: blank line inside"):  # a blank line inside is not
        read_truth_csv(_write(tmp_path / "t2.csv", "10,20\n\n30,40\n"))
    assert read_truth_csv(_write(tmp_path / "e.csv", "")).shape == (0, 2)
    d = read_detections_csv(_write(tmp_path / "d.csv", "10,20,0.25\n30,40\n"))
    assert d.to_numpy().tolist() == [[20, 10, 0.25], [40, 30, 1.0]]


def test_malformed_lines_name_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.csv", "10,20\n10,abc\n")
    with pytest.raises(DatasetLayoutError, match=r"bad.csv:2"):
        read_truth_csv(bad)
    with pytest.raises(DatasetLayoutError, match=r"bad3.csv:1"):
        read_truth_csv(_write(tmp_path / "bad3.csv", "1,2,3\n"))


def test_write_then_read_round_trip(tmp_path):
    det = pd.DataFrame({"x": [10.4, 300.6], "y": [20.0, 5.5], "prob": np.array([0.91, 0.5], np.float32)})
    path = write_detections_csv(det, tmp_path / "out" / "01" / "03.csv")
    assert path.read_text().splitlines() == ["20,10,0.91", "6,301,0.5"]  # row,col,prob; whole pixels
    back = read_detections_csv(path)
    assert back.x.tolist() == [10, 301] and back.y.tolist() == [20, 6]
    empty = write_detections_csv(det.iloc[:0], tmp_path / "e.csv")
    assert empty.read_text() == "" and read_detections_csv(empty).empty


def test_pair_trees(dirs):
    pred, truth = dirs
    ids, missing = pair_csv_trees(pred, truth)
    assert ids == ["01/01.csv", "01/02.csv", "02/01.csv"] and missing == ["02/01.csv"]


def test_cli_text_output(dirs):
    pred, truth = dirs
    res = runner.invoke(app, ["score-mitoses", str(pred), str(truth)])
    assert res.exit_code == 0, res.output
    # pooled: TP 1, FP 2, FN 2 -> P 1/3, R 1/3, F1 1/3
    assert "TP: 1  FP: 2  FN: 2" in res.stdout
    assert "precision: 0.3333  recall: 0.3333  F1: 0.3333" in res.stdout
    assert "02/01.csv" in res.stderr  # the image without predictions is reported


def test_cli_json_and_verbose(dirs):
    pred, truth = dirs
    res = runner.invoke(app, ["score-mitoses", str(pred), str(truth), "--json", "--verbose"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["tp"], out["fp"], out["fn"]) == (1, 2, 2)
    assert out["f1"] == pytest.approx(1 / 3) and out["radius"] == 30.0
    assert out["missing_predictions"] == ["02/01.csv"] and out["n_images"] == 3
    by_image = {r["image"]: r for r in out["images"]}
    assert by_image["01/02.csv"]["recall"] is None  # no truth: recall undefined -> null
    assert (by_image["02/01.csv"]["n_pred"], by_image["02/01.csv"]["fn"]) == (0, 1)


def test_cli_radius_option(dirs):
    pred, truth = dirs
    res = runner.invoke(app, ["score-mitoses", str(pred), str(truth), "--json", "--radius", "3"])
    assert json.loads(res.stdout)["tp"] == 0  # the TP is 5.4 px away


def test_cli_verbose_table(dirs):
    pred, truth = dirs
    res = runner.invoke(app, ["score-mitoses", str(pred), str(truth), "-v"])
    assert res.exit_code == 0 and "01/02.csv" in res.stdout and "n/a" in res.stdout


def test_cli_prediction_without_truth_is_an_error(dirs):
    pred, truth = dirs
    _write(pred / "03" / "01.csv", "1,1,0.5\n")
    res = runner.invoke(app, ["score-mitoses", str(pred), str(truth)])
    assert res.exit_code != 0
    assert "03/01.csv" in res.stderr and "no ground-truth" in res.stderr
    assert "Traceback" not in res.output


def test_cli_bad_inputs_give_one_line(dirs, tmp_path):
    pred, truth = dirs
    res = runner.invoke(app, ["score-mitoses", str(tmp_path / "nope"), str(truth)])
    assert res.exit_code != 0 and "does not exist" in res.stderr
    _write(pred / "01" / "01.csv", "row,col,prob\n1,2,0.5\n")
    res = runner.invoke(app, ["score-mitoses", str(pred), str(truth)])
    assert res.exit_code != 0 and "01.csv:1" in res.stderr and "Traceback" not in res.output
    empty_truth = tmp_path / "empty"
    empty_truth.mkdir()
    res = runner.invoke(app, ["score-mitoses", str(pred), str(empty_truth)])
    assert res.exit_code != 0 and "no ground-truth CSV" in res.stderr
