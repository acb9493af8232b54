"""The TUPAC16 layout: the happy path and every kind of broken file, reported with file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tupac.data import (
    Tupac16Dataset,
    parse_slide_id,
    read_ground_truth,
    read_mitosis_csv,
    read_roi_csv,
    slide_id_for,
)
from tupac.errors import DatasetLayoutError


def make_dataset(root: Path, n: int = 3) -> Path:
    """A TUPAC16-layout folder with ``n`` slides (empty files: the layout never opens them)."""
    (root / "training_image_data").mkdir(parents=True)
    for i in range(1, n + 1):
        (root / "training_image_data" / f"TUPAC-TR-{i:03d}.svs").write_bytes(b"")
    scores = [(1 + i % 3, round(-0.5 + 0.25 * i, 3)) for i in range(n)]
    (root / "training_ground_truth.csv").write_text("".join(f"{m},{p}\n" for m, p in scores))
    roi_dir = root / "ROIs" / "deep"
    roi_dir.mkdir(parents=True)
    (roi_dir / "TUPAC-TR-002-ROI.csv").write_text("100,200,3000,2500\n4000,5000,1000,1000\n")
    for nn, mm, text in (("01", "01", "12,34\n560,78\n"), ("01", "02", ""), ("02", "01", "5,6\n")):
        (root / "mitoses" / "mitoses_image_data" / nn).mkdir(parents=True, exist_ok=True)
        (root / "mitoses" / "mitoses_ground_truth" / nn).mkdir(parents=True, exist_ok=True)
        (root / "mitoses" / "mitoses_image_data" / nn / f"{mm}.tif").write_bytes(b"")
        (root / "mitoses" / "mitoses_ground_truth" / nn / f"{mm}.csv").write_text(text)
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return make_dataset(tmp_path / "tupac16")


def test_happy_path(root):
    ds = Tupac16Dataset(root)
    assert [s.slide_id for s in ds.slides] == ["TUPAC-TR-001", "TUPAC-TR-002", "TUPAC-TR-003"]
    assert [s.mitosis_score for s in ds.slides] == [1, 2, 3]
    np.testing.assert_allclose([s.proliferation_score for s in ds.slides], [-0.5, -0.25, 0.0])
    s2 = ds.slide("TUPAC-TR-002")
    assert s2.path == root / "training_image_data" / "TUPAC-TR-002.svs"
    np.testing.assert_array_equal(s2.rois, [[100, 200, 3000, 2500], [4000, 5000, 1000, 1000]])
    assert s2.rois.dtype == np.int64 and s2.roi_path.name == "TUPAC-TR-002-ROI.csv"
    assert ds.slide("TUPAC-TR-001").rois.shape == (0, 4)
    labels = ds.labels()
    assert list(labels.columns) == ["slide_id", "path", "mitosis_score", "proliferation_score", "n_rois"]
    assert labels["n_rois"].tolist() == [0, 2, 0]
    assert [m.key for m in ds.mitosis_images] == ["01/01", "01/02", "02/01"]
    assert ds.mitosis_counts() == {"01/01": 2, "01/02": 0, "02/01": 1}
    np.testing.assert_array_equal(ds.mitosis_images[0].points_rc, [[12, 34], [560, 78]])
    assert ds.mitosis_images[0].truth_path == root / "mitoses" / "mitoses_ground_truth" / "01" / "01.csv"
    with pytest.raises(KeyError, match="TUPAC-TR-009"):
        ds.slide("TUPAC-TR-009")


def test_only_the_mitosis_set(tmp_path):
    root = make_dataset(tmp_path / "d")
    shutil.rmtree(root / "training_image_data")
    (root / "training_ground_truth.csv").unlink()
    shutil.rmtree(root / "ROIs")
    ds = Tupac16Dataset(root)
    assert ds.slides == () and len(ds.mitosis_images) == 3


def test_ids():
    assert slide_id_for(6) == "TUPAC-TR-006" and slide_id_for(6, "TUPAC-TE") == "TUPAC-TE-006"
    assert parse_slide_id("TUPAC-TR-123") == ("TUPAC-TR", 123)
    for bad in ("TUPAC-TR-12", "TUPAC-TR-000", "tupac-tr-001", "TUPAC-XX-001"):
        with pytest.raises(ValueError):
            parse_slide_id(bad)


def expect(path: Path, line: int | None, match: str):
    """Context manager: a DatasetLayoutError naming ``path`` (and ``line``) whose message matches."""

    class _Ctx:
        def __enter__(self):
            self.raises = pytest.raises(DatasetLayoutError, match=match)
            self.info = self.raises.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.raises.__exit__(*exc)
            err = self.info.value
            assert err.path == path, f"error names {err.path}, expected {path}"
            assert err.line == line, f"error names line {err.line}, expected {line}"
            assert str(path) in str(err)
            assert isinstance(err, ValueError)  # catchable as the matching built-in
            return handled

    return _Ctx()


GT_CASES = [
    ("1,0.5\n2,0.1,7\n3,0.2\n", 2, "expected 2 columns.*found 3"),
    ("1,0.5\n4,0.1\n3,0.2\n", 2, "mitosis score must be 1, 2 or 3, got 4"),
    ("1,0.5\n0,0.1\n3,0.2\n", 2, "1, 2 or 3, got 0"),
    ("1,0.5\n2,abc\n3,0.2\n", 2, "proliferation score is not a number: 'abc'"),
    ("mitosis,prolif\n1,0.5\n", 1, "no header"),
    ("1,0.5\n2.5,0.1\n3,0.2\n", 2, "whole number"),
    ("1,0.5\n2,nan\n3,0.2\n", 2, "not finite"),
    ("1,0.5\n\n2\n", 2, "blank line inside the ground-truth file"),
]


@pytest.mark.parametrize(("text", "line", "match"), GT_CASES)
def test_ground_truth_errors(tmp_path, text, line, match):
    p = tmp_path / "training_ground_truth.csv"
    p.write_text(text)
    with expect(p, line, match):
        read_ground_truth(p)


def test_ground_truth_tolerates_bom_crlf_and_trailing_blank_lines(tmp_path):
    p = tmp_path / "gt.csv"
    p.write_bytes("\ufeff1,0.25\r\n3, -1.5\r\n\r\n".encode())
    df = read_ground_truth(p)
    assert df["slide_id"].tolist() == ["TUPAC-TR-001", "TUPAC-TR-002"]
    assert df["mitosis_score"].tolist() == [1, 3] and df["proliferation_score"].tolist() == [0.25, -1.5]
    assert df["mitosis_score"].dtype == np.int64


# A blank line must never shift a label: row i of training_ground_truth.csv *is* slide i.
@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"1,0.5\n\n2,0.1\n3,0.2\n", 2),            # blank line in the middle
        (b"1,0.5\n2,0.1\n   \t\n3,0.2\n", 3),       # a line of whitespace
        (b"\n1,0.5\n2,0.1\n", 1),                    # a blank first line
        (b"1,0.5\r\n2,0.1\r\n\r\n3,0.2\r\n", 3),  # Windows line endings
        (b"1,0.5\r2,0.1\r\r3,0.2\r", 3),            # old Mac line endings
        (b"1,0.5\n2,0.1\x0c\n\n3,0.2\n", 3),         # a form feed is not a line break in an editor
    ],
)
def test_ground_truth_blank_line_inside_is_an_error_at_the_editor_line(tmp_path, data, line):
    p = tmp_path / "training_ground_truth.csv"
    p.write_bytes(data)
    with expect(p, line, "blank line inside the ground-truth file"):
        read_ground_truth(p)


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_ground_truth_trailing_blank_lines_are_fine_and_labels_stay_on_their_slides(tmp_path, ending):
    p = tmp_path / "training_ground_truth.csv"
    p.write_text(ending.join(["1,0.5", "2,0.1", "3,0.2", "", "  ", ""]), newline="")
    df = read_ground_truth(p)
    assert df["slide_id"].tolist() == ["TUPAC-TR-001", "TUPAC-TR-002", "TUPAC-TR-003"]
    assert df["mitosis_score"].tolist() == [1, 2, 3]
    assert df["proliferation_score"].tolist() == [0.5, 0.1, 0.2]


def test_roi_and_mitosis_files_refuse_a_blank_line_inside_and_keep_trailing_ones(tmp_path):
    roi = tmp_path / "TUPAC-TR-001-ROI.csv"
    roi.write_bytes(b"1,2,3,4\r\n\r\n5,6,7,8\r\n")
    with expect(roi, 2, "blank line inside the ROI file"):
        read_roi_csv(roi)
    roi.write_bytes(b"1,2,3,4\r\n5,6,7,8\r\n\r\n")
    assert read_roi_csv(roi).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    mit = tmp_path / "01.csv"
    mit.write_bytes(b"10,20\n \n30,40\n")
    with expect(mit, 2, "blank line inside the mitosis ground-truth file"):
        read_mitosis_csv(mit)
    mit.write_bytes(b"10,20\n30,40\n\n\n")
    assert read_mitosis_csv(mit).tolist() == [[10.0, 20.0], [30.0, 40.0]]
    mit.write_bytes(b"\n\n")
    assert read_mitosis_csv(mit).shape == (0, 2)


def test_empty_and_missing_ground_truth(tmp_path):
    p = tmp_path / "gt.csv"
    p.write_text("\n")
    with expect(p, None, "no rows"):
        read_ground_truth(p)
    with expect(tmp_path / "nope.csv", None, "not found"):
        read_ground_truth(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("1,2,3\n", 1, "expected 4 columns"),
        ("1,2,3,4\n1,2,0,4\n", 2, "positive"),
        ("1,2,3,4\n-5,2,3,4\n", 2, "not be negative"),
        ("1,2,x,4\n", 1, "width is not a number"),
    ],
)
def test_roi_errors(tmp_path, text, line, match):
    p = tmp_path / "TUPAC-TR-001-ROI.csv"
    p.write_text(text)
    with expect(p, line, match):
        read_roi_csv(p)


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [("1,2,3\n", 1, "expected 2 columns"), ("1,2\n3,y\n", 2, "col is not a number"), ("-1,2\n", 1, "negative")],
)
def test_mitosis_truth_errors(tmp_path, text, line, match):
    p = tmp_path / "01.csv"
    p.write_text(text)
    with expect(p, line, match):
        read_mitosis_csv(p)


def test_empty_mitosis_file_means_no_mitoses(tmp_path):
    p = tmp_path / "01.csv"
    p.write_text("")
    assert read_mitosis_csv(p).shape == (0, 2)


# --- dataset-level errors --------------------------------------------------------------------


def test_slide_without_labels(root):
    extra = root / "training_image_data" / "TUPAC-TR-004.svs"
    extra.write_bytes(b"")
    with expect(extra, None, "slide has no labels"):
        Tupac16Dataset(root)


def test_labels_for_missing_slides(root):
    (root / "training_image_data" / "TUPAC-TR-003.svs").unlink()
    with expect(root / "training_ground_truth.csv", 3, "labels for 1 slides that are not in.*TUPAC-TR-003"):
        Tupac16Dataset(root)
    ds = Tupac16Dataset(root, allow_missing_slides=True)
    assert [s.slide_id for s in ds.slides] == ["TUPAC-TR-001", "TUPAC-TR-002"]


def test_duplicate_slide_ids(root):
    dup = root / "training_image_data" / "TUPAC-TR-002.tif"
    dup.write_bytes(b"")
    with expect(dup, None, "duplicate slide ID TUPAC-TR-002"):
        Tupac16Dataset(root)


def test_bad_slide_name(root):
    bad = root / "training_image_data" / "TUPAC-TR-4.svs"
    bad.write_bytes(b"")
    with expect(bad, None, "slide file name"):
        Tupac16Dataset(root)


def test_duplicate_and_orphan_roi_files(root):
    other = root / "more" / "TUPAC-TR-002-ROI.csv"
    other.parent.mkdir()
    other.write_text("1,2,3,4\n")
    with pytest.raises(DatasetLayoutError, match="duplicate ROI file for TUPAC-TR-002"):
        Tupac16Dataset(root)
    other.unlink()
    orphan = root / "more" / "TUPAC-TR-042-ROI.csv"
    orphan.write_text("1,2,3,4\n")
    with expect(orphan, None, "ROI file for a slide that does not exist"):
        Tupac16Dataset(root)


def test_broken_roi_file_inside_dataset(root):
    p = root / "ROIs" / "deep" / "TUPAC-TR-002-ROI.csv"
    p.write_text("100,200,3000,2500\n4000,5000,1000\n")
    with expect(p, 2, "expected 4 columns"):
        Tupac16Dataset(root)


def test_broken_ground_truth_inside_dataset(root):
    p = root / "training_ground_truth.csv"
    p.write_text("1,0.5\n2,0.1\n5,0.3\n")
    with expect(p, 3, "got 5"):
        Tupac16Dataset(root)


def test_missing_ground_truth_and_missing_folders(tmp_path, root):
    (root / "training_ground_truth.csv").unlink()
    with expect(root / "training_ground_truth.csv", None, "not found"):
        Tupac16Dataset(root)
    with expect(tmp_path / "nothing", None, "not a folder"):
        Tupac16Dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with expect(tmp_path / "empty", None, "no training_image_data"):
        Tupac16Dataset(tmp_path / "empty")


def test_mitosis_image_without_truth_and_truth_without_image(root):
    truth = root / "mitoses" / "mitoses_ground_truth" / "01" / "02.csv"
    truth.unlink()
    with expect(truth, None, "ground truth missing"):
        Tupac16Dataset(root)
    truth.write_text("")
    orphan = root / "mitoses" / "mitoses_ground_truth" / "03" / "01.csv"
    orphan.parent.mkdir()
    orphan.write_text("1,2\n")
    with expect(orphan, None, "image that does not exist"):
        Tupac16Dataset(root)


def test_broken_mitosis_truth_inside_dataset(root):
    p = root / "mitoses" / "mitoses_ground_truth" / "02" / "01.csv"
    p.write_text("5,6\n7\n")
    with expect(p, 2, "expected 2 columns"):
        Tupac16Dataset(root)


@pytest.mark.slow
def test_phantom_cohort_reads_as_a_tupac16_dataset(small_cohort):
    ds = Tupac16Dataset(small_cohort)
    assert [s.slide_id for s in ds.slides] == ["TUPAC-TR-001", "TUPAC-TR-002", "TUPAC-TR-003"]
    assert all(s.path.is_file() and s.mitosis_score in (1, 2, 3) for s in ds.slides)
    assert len(ds.mitosis_images) == 4
    assert all(m.path.is_file() and m.points_rc.ndim == 2 for m in ds.mitosis_images)
