"""Slide labels for any cohort: a CSV keyed by slide ID, or TUPAC16's row-numbered file.

The by-ID format has a header whose first key column is ``slide_id``, then ``grade`` and/or
``rna`` (any subset; names are case-insensitive) and any other columns, which are kept as
metadata (carried along, never used for fitting)::

    slide_id,grade,rna,site
    case-17,2,-0.41,scanner2
    case-18,3,,scanner2

Header aliases: ``mitosis_score`` for ``grade`` and ``proliferation_score`` for ``rna`` (the
names of TUPAC16's columns). ``grade`` is the mitosis score, an integer 1-3; ``rna`` the RNA
proliferation score, a finite number. An empty cell leaves that slide unlabelled for that target
only (``case-18`` above has a grade and no RNA score); a row with no label at all is an error.
Rows are found by their key, not their position, so blank lines are skipped, as in a manifest
(TUPAC16's row-numbered file, where position is the key, refuses them: see
:func:`tupac.data.readers.read_rows`).

A file whose first line is not such a header is read as TUPAC16's ``training_ground_truth.csv``
with :func:`tupac.data.readers.read_ground_truth`, exactly as before.
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from tupac.data.manifest import claim_slide_id
from tupac.data.readers import editor_lines, parse_integer, parse_number, read_ground_truth
from tupac.errors import DatasetLayoutError

__all__ = ["LABEL_ALIASES", "is_by_id", "read_labels", "read_labels_by_id"]

KEY = "slide_id"
# Accepted header names (lower case) of each label, and the in-memory column each one fills.
LABEL_ALIASES = {
    "grade": ("grade", "mitosis_score"),
    "rna": ("rna", "proliferation_score"),
}
_COLUMN = {"grade": "mitosis_score", "rna": "proliferation_score"}
_WHAT = {"grade": "grade (mitosis score)", "rna": "rna (proliferation score)"}


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetLayoutError(path, "labels file not found")
    try:
        # utf-8-sig drops a byte-order mark written by spreadsheet programs.
        return editor_lines(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(path, f"cannot read labels file: {e}") from e


def _fields(line: str) -> list[str]:
    return [f.strip() for f in next(csv.reader([line]))] if line.strip() else []


def is_by_id(path: str | Path) -> bool:
    """Whether the labels file's first line is a header naming ``slide_id`` (the by-ID format).

    A TUPAC16 ground-truth file starts with two numbers, so it can never match.
    """
    lines = _read_lines(Path(path))
    return bool(lines) and KEY in (f.lower() for f in _fields(lines[0]))


def read_labels(
    path: str | Path,
    *,
    cohort: Collection[str] | None = None,
    cohort_name: str = "the cohort",
    need: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read a labels file in either format (see the module docstring).

    Parameters
    ----------
    path : path-like
    cohort : collection of str, optional
        The slide IDs being labelled. In the by-ID format a label for any other ID is an error
        (the file is probably meant for another cohort). TUPAC16's row-numbered file is not
        checked: it always labels the whole TUPAC16 set, of which a run may hold a part.
    cohort_name : str
        What ``cohort`` is (the manifest, the run folder), for the message.
    need : tuple of str
        Label columns (``"grade"``, ``"rna"``) the caller cannot work without; a by-ID file
        lacking one is an error naming the caller's need.

    Returns
    -------
    DataFrame
        ``slide_id`` (str), ``mitosis_score`` (int64; float64 with NaN where some slides have
        no grade), ``proliferation_score`` (float64, NaN where no RNA score), then the metadata
        columns (str) in file order. ``attrs["format"]`` is ``"by-id"`` or ``"tupac16"``,
        ``attrs["labels"]`` the label columns the file has, ``attrs["metadata"]`` the others.

    Raises
    ------
    DatasetLayoutError
        Naming the file and line (and the slide ID): see :func:`read_labels_by_id` and
        :func:`tupac.data.readers.read_ground_truth`.
    """
    path = Path(path)
    if is_by_id(path):
        return read_labels_by_id(path, cohort=cohort, cohort_name=cohort_name, need=need)
    df = read_ground_truth(path)
    df.attrs.update(format="tupac16", labels=["grade", "rna"], metadata=[])
    return df


def _header(path: Path, line: str, need: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Positions of the label columns (by label) and of the metadata columns (name, position)."""
    names = _fields(line)
    lower = [n.lower() for n in names]
    if lower[0] != KEY:
        raise DatasetLayoutError(path, f"the first column must be {KEY!r}, got {names[0]!r}", 1)
    if "" in lower:
        raise DatasetLayoutError(path, f"column {lower.index('') + 1} of the header has no name", 1)
    dup = sorted({n for n in lower if lower.count(n) > 1})
    if dup:
        raise DatasetLayoutError(path, f"column {dup[0]!r} appears twice in the header", 1)
    found: dict[str, int] = {}
    for label, aliases in LABEL_ALIASES.items():
        hits = [i for i, n in enumerate(lower) if n in aliases]
        if len(hits) > 1:
            both = " and ".join(repr(names[i]) for i in hits)
            raise DatasetLayoutError(path, f"{both} are the same label ({label}); keep one", 1)
        if hits:
            found[label] = hits[0]
    if not found:
        raise DatasetLayoutError(path, f"no label column: expected 'grade' and/or 'rna' after {KEY!r}, got "
                                       f"{','.join(names)!r}", 1)
    for label in need:
        if label not in found:
            raise DatasetLayoutError(path, f"no {label!r} column, and this step needs {' and '.join(need)} labels "
                                           f"(header {','.join(names)!r})", 1)
    meta = [(n, i) for i, n in enumerate(names) if i > 0 and i not in found.values()]
    return found, meta


def _value(path: Path, line: int, sid: str, label: str, text: str) -> float:
    """One label cell; NaN for an empty cell (the slide is unlabelled for that target)."""
    if not text:
        return np.nan
    where = f"slide {sid!r}: {_WHAT[label]}"
    if label == "rna":
        return parse_number(path, line, text, where)
    grade = parse_integer(path, line, text, where)
    if grade not in (1, 2, 3):
        raise DatasetLayoutError(path, f"{where} must be 1, 2 or 3, got {grade}", line)
    return float(grade)


def read_labels_by_id(
    path: str | Path,
    *,
    cohort: Collection[str] | None = None,
    cohort_name: str = "the cohort",
    need: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read a labels CSV keyed by ``slide_id`` (the module docstring gives the format).

    Parameters and return value as :func:`read_labels`.

    Raises
    ------
    DatasetLayoutError
        One line naming the file and line, and the slide ID where there is one: missing or
        unreadable file, a header without ``slide_id`` first or without ``grade``/``rna`` (or
        without a column in ``need``), a row with another number of fields, an empty or
        non-plain slide ID, an ID twice, an ID not in ``cohort``, a row with no label, a grade
        that is not an integer 1-3, an RNA score that is not a finite number.
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines or not lines[0].strip():
        raise DatasetLayoutError(path, f"labels file has no header (expected '{KEY},grade,rna')", 1)
    found, meta = _header(path, lines[0], need)
    n_cols = len(_fields(lines[0]))
    known = set(cohort) if cohort is not None else None
    seen: dict[str, int] = {}
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = _fields(line)
        if not fields:
            continue  # rows are keyed by ID, so a blank line moves nothing
        if len(fields) != n_cols:
            raise DatasetLayoutError(path, f"expected {n_cols} fields as in the header, got {len(fields)}", line_no)
        sid = fields[0]
        claim_slide_id(path, line_no, sid, seen, twice=f"slide {sid!r} is labelled twice")
        if known is not None and sid not in known:
            raise DatasetLayoutError(path, f"slide {sid!r} is not in {cohort_name}", line_no)
        values = {label: _value(path, line_no, sid, label, fields[i]) for label, i in found.items()}
        if all(np.isnan(v) for v in values.values()):
            raise DatasetLayoutError(path, f"slide {sid!r} has no label: every one of "
                                           f"{', '.join(found)} is empty (delete the row to leave it out)", line_no)
        rows.append((sid, values, [fields[i] for _, i in meta]))
    if not rows:
        raise DatasetLayoutError(path, "labels file has a header and no rows")
    return _frame(rows, found, meta)


def _frame(rows: list, found: dict[str, int], meta: list[tuple[str, int]]) -> pd.DataFrame:
    df = pd.DataFrame({KEY: pd.Series([r[0] for r in rows], dtype=object)})
    for label, column in _COLUMN.items():
        values = np.asarray([r[1].get(label, np.nan) for r in rows], np.float64)
        # Consumers use the grade as an integer; keep TUPAC16's int64 whenever every slide has one.
        df[column] = values.astype(np.int64) if label == "grade" and not np.isnan(values).any() else values
    for j, (name, _) in enumerate(meta):
        df[name] = pd.Series([r[2][j] for r in rows], dtype=object)
    df.attrs.update(format="by-id", labels=list(found), metadata=[name for name, _ in meta])
    return df
