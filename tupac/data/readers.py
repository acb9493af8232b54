"""Readers for the TUPAC16 files, in their own header-less CSV formats.

Every problem (missing file, wrong column count, a value that is not a number or out of range)
is raised as :class:`tupac.errors.DatasetLayoutError` naming the file and the 1-based line,
never as a parser traceback. The files are small (at most a few hundred lines), so they are
parsed with the ``csv`` module, which keeps the line numbers exact.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tupac.data.ids import slide_id_for
from tupac.errors import DatasetLayoutError

__all__ = ["read_rows", "editor_lines", "parse_number", "parse_integer", "read_ground_truth", "read_roi_csv", "read_mitosis_csv", "read_detection_csv"]


def read_rows(path: str | Path, n_columns: int | tuple[int, ...], what: str) -> list[tuple[int, list[str]]]:
    """The rows of a header-less CSV, each with its 1-based line number as an editor shows it.

    These files have no key column (row ``i`` of ``training_ground_truth.csv`` *is* slide ``i``),
    so a row must never move: a blank line (or one of only whitespace) before the last row is an
    error, not something to skip, because skipping it would give every later row the meaning of
    the row above. Blank lines after the last row (a trailing newline, an editor's extra line)
    are fine.

    Parameters
    ----------
    path : path-like
    n_columns : int or tuple of int
        Allowed numbers of columns.
    what : str
        What the file is, for messages ("ground-truth file", "ROI file").

    Returns
    -------
    list of (int, list of str)
        ``(line number, stripped fields)`` per row, in file order.

    Raises
    ------
    DatasetLayoutError
        Missing or unreadable file, a blank line inside the file, or a row with another number of
        columns; the message names the file and the line.
    """
    path = Path(path)
    allowed = (n_columns,) if isinstance(n_columns, int) else tuple(n_columns)
    if not path.is_file():
        raise DatasetLayoutError(path, f"{what} not found")
    try:
        # utf-8-sig drops a byte-order mark written by spreadsheet programs.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(path, f"cannot read {what}: {e}") from e
    lines = editor_lines(text)
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines change nothing
    rows = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            raise DatasetLayoutError(
                path, f"blank line inside the {what}: rows are read by position, so every later row would be "
                      "misread; delete the line (or fill it in)", line_no)
        fields = [f.strip() for f in next(csv.reader([line]))]
        if len(fields) not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise DatasetLayoutError(path, f"expected {want} columns in the {what}, found {len(fields)}", line_no)
        rows.append((line_no, fields))
    return rows


def editor_lines(text: str) -> list[str]:
    """Split ``text`` into lines the way text editors number them: at ``\\r\\n``, ``\\n`` or ``\\r``.

    Not ``str.splitlines``, which also breaks at form feeds, ``\\x1c``-``\\x1e``, NEL and the Unicode
    line separators, so a stray control character would shift every later line number away from
    what the user sees. A final line break does not start an empty last line.
    """
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_number(path: Path, line: int, text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        hint = " (TUPAC16 files have no header line)" if line == 1 else ""
        raise DatasetLayoutError(path, f"{column} is not a number: {text!r}{hint}", line) from None
    if not math.isfinite(value):
        raise DatasetLayoutError(path, f"{column} is not finite: {text!r}", line)
    return value


def parse_integer(path: Path, line: int, text: str, column: str) -> int:
    value = parse_number(path, line, text, column)
    if value != int(value):
        raise DatasetLayoutError(path, f"{column} must be a whole number, got {text!r}", line)
    return int(value)


def read_ground_truth(path: str | Path, prefix: str = "TUPAC-TR") -> pd.DataFrame:
    """``training_ground_truth.csv``: row ``i`` (1-based) holds the labels of slide ``TUPAC-TR-i``.

    Returns
    -------
    DataFrame
        Columns ``slide_id`` (str), ``mitosis_score`` (int64, 1-3), ``proliferation_score``
        (float64), one row per line, in file order.
    """
    path = Path(path)
    rows = read_rows(path, 2, "ground-truth file")
    if not rows:
        raise DatasetLayoutError(path, "ground-truth file has no rows")
    ids, scores, prolif = [], [], []
    for i, (line, (score_text, prolif_text)) in enumerate(rows, start=1):
        score = parse_integer(path, line, score_text, "mitosis score")
        if score not in (1, 2, 3):
            raise DatasetLayoutError(path, f"mitosis score must be 1, 2 or 3, got {score}", line)
        ids.append(slide_id_for(i, prefix))
        scores.append(score)
        prolif.append(parse_number(path, line, prolif_text, "proliferation score"))
    return pd.DataFrame(
        {
            "slide_id": pd.Series(ids, dtype=object),
            "mitosis_score": np.asarray(scores, np.int64),
            "proliferation_score": np.asarray(prolif, np.float64),
        }
    )


def read_roi_csv(path: str | Path) -> np.ndarray:
    """``TUPAC-TR-XXX-ROI.csv``: one region of interest per line, ``x,y,width,height`` in level-0 pixels.

    Returns
    -------
    ndarray of int64, shape (n, 4)
        ``(x, y, width, height)`` per region; width and height are positive.
    """
    path = Path(path)
    out = []
    for line, fields in read_rows(path, 4, "ROI file"):
        x, y, w, h = (parse_integer(path, line, t, c) for t, c in zip(fields, ("x", "y", "width", "height")))
        if w <= 0 or h <= 0:
            raise DatasetLayoutError(path, f"ROI width and height must be positive, got {w}x{h}", line)
        if x < 0 or y < 0:
            raise DatasetLayoutError(path, f"ROI origin must not be negative, got ({x}, {y})", line)
        out.append((x, y, w, h))
    return np.asarray(out, np.int64).reshape(-1, 4)


def read_mitosis_csv(path: str | Path) -> np.ndarray:
    """A mitosis ground-truth file: ``row,col`` of one mitotic figure per line (empty file: none).

    Returns
    -------
    ndarray of float64, shape (n, 2)
        ``(row, col)`` image pixel coordinates, non-negative.
    """
    path = Path(path)
    out = []
    for line, (r, c) in read_rows(path, 2, "mitosis ground-truth file"):
        rc = (parse_number(path, line, r, "row"), parse_number(path, line, c, "col"))
        if min(rc) < 0:
            raise DatasetLayoutError(path, f"row and col must not be negative, got {rc}", line)
        out.append(rc)
    return np.asarray(out, np.float64).reshape(-1, 2)


def read_detection_csv(path: str | Path) -> np.ndarray:
    """A task-3 detection file: ``row,col[,prob]`` per line (probability 1 when absent).

    Returns
    -------
    ndarray of float64, shape (n, 3)
        ``(row, col, prob)`` per detection.
    """
    path = Path(path)
    out = []
    for line, fields in read_rows(path, (2, 3), "detection file"):
        vals = [parse_number(path, line, t, c) for t, c in zip(fields, ("row", "col", "prob"))]
        out.append(vals + [1.0] * (3 - len(vals)))
    return np.asarray(out, np.float64).reshape(-1, 3)
