"""TUPAC16 submission files: exact text of the published formats, and round trips."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.data import (
    read_detection_csv,
    read_scores_submission,
    write_detection_csv,
    write_detection_submission,
    write_scores_submission,
)
from tupac.preprocess.mask_png import read_mask_png, write_mask_png
from tupac.errors import DatasetLayoutError
from tupac.preprocess.tissue import TissueMask


def test_scores_submission_text_and_round_trip(tmp_path):
    mit = {"TUPAC-TE-002": 3, "TUPAC-TE-001": 1, "TUPAC-TE-003": 2}
    pro = {"TUPAC-TE-001": -0.25, "TUPAC-TE-002": 1.5, "TUPAC-TE-003": 0.123456789}
    p = write_scores_submission(tmp_path / "sub" / "tasks12.csv", mit, pro)
    # Row i is case TUPAC-TE-i, regardless of the mapping's order; no header.
    assert p.read_text() == "1,-0.25\n3,1.5\n2,0.123456789\n"
    df = read_scores_submission(p)
    assert df["slide_id"].tolist() == ["TUPAC-TE-001", "TUPAC-TE-002", "TUPAC-TE-003"]
    assert df["mitosis_score"].tolist() == [1, 3, 2]
    np.testing.assert_allclose(df["proliferation_score"], [-0.25, 1.5, 0.123456789])


def test_a_task_not_submitted_is_filled_with_minus_one(tmp_path):
    p = write_scores_submission(tmp_path / "t2.csv", proliferation_scores={"TUPAC-TE-001": 0.5, "TUPAC-TE-002": 0.7})
    assert p.read_text() == "-1,0.5\n-1,0.7\n"
    p = write_scores_submission(tmp_path / "t1.csv", mitosis_scores={"TUPAC-TE-001": 2}, n_cases=1)
    assert p.read_text() == "2,-1\n"


def test_scores_submission_rejects_incomplete_or_invalid(tmp_path):
    with pytest.raises(ValueError, match="lacks 1 of 3 cases, first TUPAC-TE-002"):
        write_scores_submission(tmp_path / "a.csv", {"TUPAC-TE-001": 1, "TUPAC-TE-003": 2})
    with pytest.raises(ValueError, match="1, 2 or 3"):
        write_scores_submission(tmp_path / "a.csv", {"TUPAC-TE-001": 4})
    with pytest.raises(ValueError, match="not a TUPAC-TE"):
        write_scores_submission(tmp_path / "a.csv", {"TUPAC-TR-001": 1})
    with pytest.raises(ValueError, match="beyond n_cases"):
        write_scores_submission(tmp_path / "a.csv", {"TUPAC-TE-001": 1, "TUPAC-TE-002": 1}, n_cases=1)
    with pytest.raises(ValueError, match="not finite"):
        write_scores_submission(tmp_path / "a.csv", proliferation_scores={"TUPAC-TE-001": float("nan")})
    with pytest.raises(ValueError, match="nothing to submit"):
        write_scores_submission(tmp_path / "a.csv")
    assert not (tmp_path / "a.csv").exists()


def test_reading_a_bad_scores_submission_names_the_line(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("1,0.5\n7,0.5\n")
    with pytest.raises(DatasetLayoutError, match=r"s\.csv:2: mitosis score must be 1, 2, 3 or -1"):
        read_scores_submission(p)


def test_detection_files_per_image(tmp_path):
    dets = {
        "01/01": np.array([[12.0, 34.0, 0.9], [560.5, 78.0, 0.25]]),
        "02/05": np.zeros((0, 3)),
        "03/02": np.array([[1, 2], [3, 4]]),
    }
    paths = write_detection_submission(tmp_path, dets)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["01/01.csv", "02/05.csv", "03/02.csv"]
    assert (tmp_path / "01" / "01.csv").read_text() == "12,34,0.9\n560.5,78,0.25\n"
    assert (tmp_path / "02" / "05.csv").read_text() == ""
    assert (tmp_path / "03" / "02.csv").read_text() == "1,2\n3,4\n"
    np.testing.assert_array_equal(read_detection_csv(tmp_path / "01" / "01.csv"), dets["01/01"])
    np.testing.assert_array_equal(read_detection_csv(tmp_path / "03" / "02.csv"), [[1, 2, 1], [3, 4, 1]])
    assert read_detection_csv(tmp_path / "02" / "05.csv").shape == (0, 3)


def test_detection_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="NN/MM"):
        write_detection_submission(tmp_path, {"01-01": np.zeros((0, 2))})
    with pytest.raises(ValueError, match=r"\(n, 2\) or \(n, 3\)"):
        write_detection_submission(tmp_path, {"01/01": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="probabilities"):
        write_detection_csv(tmp_path / "x.csv", np.zeros((2, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        write_detection_csv(tmp_path / "x.csv", np.array([[1.0, np.nan]]))


def test_mask_png_round_trip_keeps_mpp(tmp_path):
    rng = np.random.default_rng(0)
    tm = TissueMask(rng.random((30, 40)) > 0.5, 8.0)
    p = write_mask_png(tmp_path / "m.png", tm)
    back = read_mask_png(p)
    np.testing.assert_array_equal(back.mask, tm.mask)
    assert back.mpp == 8.0
    from PIL import Image

    with Image.open(p) as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im))) <= {0, 255} and im.text["mpp"] == "8.0"
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "plain.png")
    with pytest.raises(DatasetLayoutError, match="no valid 'mpp'"):
        read_mask_png(tmp_path / "plain.png")
    assert read_mask_png(tmp_path / "plain.png", mpp=4.0).mpp == 4.0
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DatasetLayoutError, match="not a readable PNG"):
        read_mask_png(tmp_path / "junk.png")
