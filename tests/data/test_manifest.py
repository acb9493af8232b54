"""Cohort manifests and ``--data`` datasets: paths, IDs that become file names, line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tupac.errors import DatasetLayoutError
from tupac.data.manifest import ManifestEntry, from_dataset, load_cohort, read_manifest, slide_id_problem


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "cohort"
    _write(folder / "slides" / "a.svs", "not a real slide; existence is what matters here")
    manifest = _write(
        folder / "manifest.csv",
        "slide_id,path,mpp\nA-1,slides/a.svs,\nB_2,/abs/elsewhere/b.tiff,0.2462\n\nC.3,slides/missing.svs,0.5\n",
    )
    monkeypatch.chdir(tmp_path)  # resolution must not depend on the working directory
    entries = read_manifest(Path("cohort/manifest.csv"))
    assert [e.slide_id for e in entries] == ["A-1", "B_2", "C.3"]
    assert entries[0].path == (folder / "slides" / "a.svs").resolve()
    assert entries[1].path == Path("/abs/elsewhere/b.tiff")
    assert [e.mpp for e in entries] == [None, 0.2462, 0.5]
    assert [e.line for e in entries] == [2, 3, 5]
    assert [e.exists for e in entries] == [True, False, False]  # missing files are not manifest errors
    assert manifest.is_file()


def test_header_without_mpp_and_bom_and_column_order(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_bytes("\ufeffpath,slide_id\nx.svs,X\n".encode("utf-8"))
    (e,) = read_manifest(m)
    assert e == ManifestEntry("X", tmp_path.resolve() / "x.svs", None, 2)


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "a/b", "a\\b", "..", ".", ".hidden", "", "a b", "é", "x" * 201],
)
def test_ids_that_are_not_plain_names_are_rejected_with_the_line(tmp_path: Path, bad_id: str) -> None:
    m = _write(tmp_path / "m.csv", f"slide_id,path\nok,ok.svs\n\"{bad_id}\",x.svs\n")
    with pytest.raises(DatasetLayoutError) as err:
        read_manifest(m)
    assert err.value.line == 3 and err.value.path == m
    assert str(err.value).startswith(f"{m}:3: ")
    assert slide_id_problem(bad_id) is not None


def test_plain_ids_are_accepted() -> None:
    for ok in ("TUPAC-TR-001", "a.b_c-9", "A" * 200):
        assert slide_id_problem(ok) is None


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("slide_id,path\nA,a.svs\nB,b.svs\nA,c.svs\n", 4, "duplicate slide ID 'A' (first on line 2)"),
        ("slide_id\nA\n", 1, "header lacks path"),
        ("slide_id,path,mmp\nA,a.svs,0.25\n", 1, "unknown column(s) 'mmp'"),
        ("slide_id,path,path\nA,a.svs,b.svs\n", 1, "appear twice"),
        ("slide_id,path\nA,a.svs,extra\n", 2, "expected 2 fields"),
        ("slide_id,path\nA,\n", 2, "empty path for slide 'A'"),
        ("slide_id,path,mpp\nA,a.svs,fast\n", 2, "mpp must be a number"),
        ("slide_id,path,mpp\nA,a.svs,-0.25\n", 2, "positive"),
        ("slide_id,path,mpp\nA,a.svs,nan\n", 2, "positive"),
        ("", 1, "manifest is empty"),
    ],
)
def test_malformed_manifests_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    m = _write(tmp_path / "m.csv", text)
    with pytest.raises(DatasetLayoutError) as err:
        read_manifest(m)
    assert err.value.line == line
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unreadable_manifest(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="cannot read manifest"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"slide_id,path\n\xe9,x.svs\n")
    with pytest.raises(DatasetLayoutError, match="not UTF-8"):
        read_manifest(bad)


def test_data_root_uses_the_tupac16_layout(tmp_path: Path) -> None:
    # The layout as distributed: labels row i belong to TUPAC-TR-00i; a partial download is fine
    # (labels for 3 slides, 2 present). Slide contents do not matter to the cohort listing.
    _write(tmp_path / "training_ground_truth.csv", "1,0.1\n3,0.9\n2,-0.4\n")
    for sid in ("TUPAC-TR-003", "TUPAC-TR-001"):
        _write(tmp_path / "training_image_data" / f"{sid}.svs", "x")
    entries = load_cohort(data=tmp_path)
    assert [e.slide_id for e in entries] == ["TUPAC-TR-001", "TUPAC-TR-003"]
    assert all(e.exists and e.mpp is None and e.path.is_absolute() for e in entries)
    assert entries[1].path == (tmp_path / "training_image_data" / "TUPAC-TR-003.svs").resolve()
    _write(tmp_path / "training_image_data" / "TUPAC-TR-004.svs", "x")  # no labels: a broken layout
    with pytest.raises(DatasetLayoutError, match="slide has no labels"):
        from_dataset(tmp_path)


def test_data_root_without_labels_lists_the_slide_folder(tmp_path: Path) -> None:
    folder = tmp_path / "training_image_data"
    for name in ("TUPAC-TE-002.svs", "TUPAC-TE-001.tiff", "readme.txt"):
        _write(folder / name, "x")
    entries = from_dataset(tmp_path)
    assert [(e.slide_id, e.path.name) for e in entries] == [("TUPAC-TE-001", "TUPAC-TE-001.tiff"), ("TUPAC-TE-002", "TUPAC-TE-002.svs")]
    _write(folder / "TUPAC-TE-001.svs", "x")
    with pytest.raises(DatasetLayoutError, match="several files for slide ID TUPAC-TE-001"):
        from_dataset(tmp_path)


def test_data_root_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        from_dataset(tmp_path / "missing")
    with pytest.raises(DatasetLayoutError, match="slide folder missing"):
        from_dataset(tmp_path)
    (tmp_path / "training_image_data").mkdir()
    with pytest.raises(DatasetLayoutError, match="no slides"):
        from_dataset(tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        load_cohort()
