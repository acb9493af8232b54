"""Labels by slide ID (``slide_id,grade,rna`` with a header) beside TUPAC16's row-numbered file."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tupac.data import read_labels
from tupac.data.labels import is_by_id, read_labels_by_id
from tupac.data.readers import read_ground_truth
from tupac.errors import DatasetLayoutError

COHORT = {"case-17", "case-18", "case-19"}


def _write(tmp_path, text, name="labels.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _error(path, **kw) -> DatasetLayoutError:
    with pytest.raises(DatasetLayoutError) as e:
        read_labels(path, **kw)
    return e.value


def test_by_id_with_metadata_and_both_labels(tmp_path):
    p = _write(tmp_path, "slide_id,grade,rna,site,note\ncase-17,2,-0.41,scanner2,\ncase-18,3,1.5,scanner1,re-cut\n")
    df = read_labels(p, cohort=COHORT, cohort_name="manifest m.csv")
    assert list(df.columns) == ["slide_id", "mitosis_score", "proliferation_score", "site", "note"]
    assert df["slide_id"].tolist() == ["case-17", "case-18"]
    assert df["mitosis_score"].dtype == np.int64 and df["mitosis_score"].tolist() == [2, 3]
    assert df["proliferation_score"].tolist() == [-0.41, 1.5]
    assert df["site"].tolist() == ["scanner2", "scanner1"] and df["note"].tolist() == ["", "re-cut"]
    assert df.attrs == {"format": "by-id", "labels": ["grade", "rna"], "metadata": ["site", "note"]}


@pytest.mark.parametrize("header, labels", [
    ("slide_id,grade", ["grade"]),
    ("slide_id,rna", ["rna"]),
    ("Slide_ID,RNA,Grade", ["grade", "rna"]),
    ("slide_id,Mitosis_Score,proliferation_score", ["grade", "rna"]),
])
def test_any_subset_of_label_columns_and_aliases_in_any_case(tmp_path, header, labels):
    cells = {"grade": "3", "rna": "0.25", "mitosis_score": "3", "proliferation_score": "0.25"}
    row = ",".join(["case-19"] + [cells[c.lower()] for c in header.split(",")[1:]])
    df = read_labels(_write(tmp_path, f"{header}\n{row}\n"))
    assert df.attrs["labels"] == labels
    grade, rna = df["mitosis_score"][0], df["proliferation_score"][0]
    assert grade == 3 if "grade" in labels else np.isnan(grade)
    assert rna == 0.25 if "rna" in labels else np.isnan(rna)


def test_an_empty_cell_leaves_the_slide_unlabelled_for_that_target_only(tmp_path):
    df = read_labels(_write(tmp_path, "slide_id,grade,rna\ncase-17,2,\ncase-18,,0.5\n"))
    # the grade column turns float64 with NaN: consumers that need a grade drop those slides
    assert df["mitosis_score"].dtype == np.float64
    assert df["mitosis_score"].iloc[0] == 2 and np.isnan(df["mitosis_score"].iloc[1])
    assert np.isnan(df["proliferation_score"].iloc[0]) and df["proliferation_score"].iloc[1] == 0.5


def test_blank_lines_are_skipped_and_line_numbers_stay_the_editors(tmp_path):
    p = _write(tmp_path, "\ufeffslide_id,grade\r\ncase-17,1\r\n\r\n   \r\ncase-18,9\r\n")
    e = _error(p)
    assert e.line == 5 and "case-18" in str(e) and str(p) in str(e)


def test_tupac16_file_reads_as_before(tmp_path):
    p = _write(tmp_path, "1,0.5\n3,-1.25\n", name="training_ground_truth.csv")
    assert not is_by_id(p)
    df = read_labels(p, cohort={"unrelated"})  # the row-numbered file is never checked against a cohort
    pd.testing.assert_frame_equal(df, read_ground_truth(p))
    assert df["slide_id"].tolist() == ["TUPAC-TR-001", "TUPAC-TR-002"] and df.attrs["format"] == "tupac16"
    # its own errors are unchanged (a blank line inside is still refused)
    bad = _write(tmp_path, "1,0.5\n\n3,-1.25\n", name="gt.csv")
    assert _error(bad).line == 2


@pytest.mark.parametrize("text, line, pattern", [
    ("slide_id,grade,rna\ncase-17,2,0.1\ncase-99,1,0.2\n", 3,
     r"slide 'case-99' is not in manifest m\.csv"),
    ("slide_id,grade,rna\ncase-17,2,0.1\ncase-18,1,0.2\ncase-17,3,0.3\n", 4,
     r"slide 'case-17' is labelled twice \(first on line 2\)"),
    ("slide_id,grade,rna\ncase-17,,\n", 2, r"slide 'case-17' has no label"),
    ("slide_id,grade\ncase-17,\n", 2, r"slide 'case-17' has no label"),
    ("slide_id,grade,rna\ncase-17,4,0.1\n", 2, r"slide 'case-17': grade \(mitosis score\) must be 1, 2 or 3, got 4"),
    ("slide_id,grade,rna\ncase-17,2.5,0.1\n", 2, r"slide 'case-17': grade .* must be a whole number, got '2.5'"),
    ("slide_id,grade,rna\ncase-17,high,0.1\n", 2, r"slide 'case-17': grade .* is not a number: 'high'"),
    ("slide_id,grade,rna\ncase-17,2,abc\n", 2, r"slide 'case-17': rna \(proliferation score\) is not a number: 'abc'"),
    ("slide_id,grade,rna\ncase-17,2,inf\n", 2, r"slide 'case-17': rna .* is not finite"),
    ("slide_id,site\ncase-17,x\n", 1, r"no label column: expected 'grade' and/or 'rna'"),
    ("slide_id,grade,rna\ncase-17,2\n", 2, r"expected 3 fields as in the header, got 2"),
    ("slide_id,grade\n,2\n", 2, r"empty slide ID"),
    ("slide_id,grade\n../x,2\n", 2, r"not a plain name"),
    ("grade,slide_id\n2,case-17\n", 1, r"the first column must be 'slide_id'"),
    ("slide_id,grade,mitosis_score\ncase-17,2,2\n", 1, r"'grade' and 'mitosis_score' are the same label"),
    ("slide_id,grade,site,SITE\ncase-17,2,a,b\n", 1, r"column 'site' appears twice"),
    ("slide_id,grade\n\n", None, r"has a header and no rows"),
])
def test_errors_name_the_file_the_line_and_the_slide(tmp_path, text, line, pattern):
    p = _write(tmp_path, text)
    e = _error(p, cohort=COHORT, cohort_name="manifest m.csv")
    assert e.line == line and e.path == p
    msg = str(e)
    assert "\n" not in msg and msg.startswith(f"{p}:{line}: " if line else f"{p}: ")
    assert re.search(pattern, msg), msg


def test_a_step_that_needs_a_label_refuses_a_file_without_it(tmp_path):
    p = _write(tmp_path, "slide_id,grade\ncase-17,2\n")
    e = _error(p, need=("grade", "rna"))
    assert e.line == 1 and "no 'rna' column" in str(e) and "needs grade and rna" in str(e)
    assert read_labels(p, need=("grade",))["mitosis_score"].tolist() == [2]


def test_missing_file_and_no_cohort_check_without_a_cohort(tmp_path):
    assert "labels file not found" in str(_error(tmp_path / "nope.csv"))
    df = read_labels_by_id(_write(tmp_path, "slide_id,rna\nanything-1,0.5\n"))
    assert df["slide_id"].tolist() == ["anything-1"]
