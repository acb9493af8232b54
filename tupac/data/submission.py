"""Writers for the TUPAC16 submission formats (https://tupac.grand-challenge.org/Submission-format).

- Tasks 1 and 2: one header-less CSV of two columns, row ``i`` for case ``TUPAC-TE-i``: the
  mitosis-counting score (1-3) and the molecular proliferation score; a task not submitted is
  filled with ``-1``.
- Task 3: one header-less CSV per mitosis image, at the image's own relative path ``NN/MM.csv``,
  one detection per line: ``row,col[,prob]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tupac.data.ids import TEST_PREFIX, parse_slide_id, slide_id_for
from tupac.data.readers import parse_integer, parse_number, read_rows
from tupac.errors import DatasetLayoutError

__all__ = ["write_scores_submission", "read_scores_submission", "write_detection_csv", "write_detection_submission"]

NOT_SUBMITTED = -1


def _by_case(scores: Mapping[str, float] | None, prefix: str, what: str) -> dict[int, float]:
    if scores is None:
        return {}
    out = {}
    for sid, v in scores.items():
        p, i = parse_slide_id(sid)
        if p != prefix:
            raise ValueError(f"{what}: {sid} is not a {prefix}-XXX case")
        out[i] = v
    return out


def _fmt(v: float) -> str:
    return format(float(v), ".10g")


def write_scores_submission(
    path: str | Path,
    mitosis_scores: Mapping[str, int] | None = None,
    proliferation_scores: Mapping[str, float] | None = None,
    n_cases: int | None = None,
    prefix: str = TEST_PREFIX,
) -> Path:
    """Write the tasks 1-2 CSV.

    Parameters
    ----------
    path : path-like
        The CSV to write (parent folders are created).
    mitosis_scores : mapping slide_id -> int in {1, 2, 3}, optional
        Task 1 predictions; ``None`` submits no task 1 (column of -1).
    proliferation_scores : mapping slide_id -> float, optional
        Task 2 predictions; ``None`` submits no task 2.
    n_cases : int, optional
        Number of rows (cases 1..n_cases); defaults to the largest case number given.
    prefix : str
        Case ID prefix, ``TUPAC-TE`` for the test set.

    Raises
    ------
    ValueError
        A submitted task lacks a case, has a case beyond ``n_cases``, or has an invalid value.
    """
    mit = _by_case(mitosis_scores, prefix, "mitosis_scores")
    pro = _by_case(proliferation_scores, prefix, "proliferation_scores")
    if not mit and not pro:
        raise ValueError("nothing to submit: give mitosis_scores and/or proliferation_scores")
    n = n_cases if n_cases is not None else max([*mit, *pro])
    for name, task in (("mitosis_scores", mit), ("proliferation_scores", pro)):
        if not task:
            continue
        missing = sorted(set(range(1, n + 1)) - set(task))
        extra = sorted(set(task) - set(range(1, n + 1)))
        if missing:
            raise ValueError(f"{name} lacks {len(missing)} of {n} cases, first {slide_id_for(missing[0], prefix)}")
        if extra:
            raise ValueError(f"{name} has {slide_id_for(extra[0], prefix)} beyond n_cases={n}")
    for i, v in mit.items():
        if v not in (1, 2, 3):
            raise ValueError(f"mitosis score of {slide_id_for(i, prefix)} must be 1, 2 or 3, got {v!r}")
    for i, v in pro.items():
        if not math.isfinite(float(v)):
            raise ValueError(f"proliferation score of {slide_id_for(i, prefix)} is not finite: {v!r}")
    lines = [
        f"{int(mit[i]) if mit else NOT_SUBMITTED},{_fmt(pro[i]) if pro else NOT_SUBMITTED}" for i in range(1, n + 1)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_scores_submission(path: str | Path, prefix: str = TEST_PREFIX) -> pd.DataFrame:
    """Read a tasks 1-2 CSV back: ``slide_id``, ``mitosis_score`` (int64, -1 = not submitted),
    ``proliferation_score`` (float64, -1 = not submitted)."""
    path = Path(path)
    ids, mit, pro = [], [], []
    for i, (line, (m, p)) in enumerate(read_rows(path, 2, "submission file"), start=1):
        score = parse_integer(path, line, m, "mitosis score")
        if score not in (1, 2, 3, NOT_SUBMITTED):
            raise DatasetLayoutError(path, f"mitosis score must be 1, 2, 3 or -1, got {score}", line)
        ids.append(slide_id_for(i, prefix))
        mit.append(score)
        pro.append(parse_number(path, line, p, "proliferation score"))
    return pd.DataFrame(
        {"slide_id": ids, "mitosis_score": np.asarray(mit, np.int64), "proliferation_score": np.asarray(pro, np.float64)}
    )


def write_detection_csv(path: str | Path, rc: np.ndarray, prob: np.ndarray | None = None) -> Path:
    """Write one task-3 file: ``row,col[,prob]`` per detection, no header (an empty file for none).

    Parameters
    ----------
    rc : array of float, shape (n, 2)
        ``(row, col)`` image pixel coordinates.
    prob : array of float, shape (n,), optional
        Confidence of each detection; omitted column when ``None``.
    """
    rc = np.asarray(rc, np.float64).reshape(-1, 2)
    cols = [rc[:, 0], rc[:, 1]]
    if prob is not None:
        prob = np.asarray(prob, np.float64).reshape(-1)
        if prob.shape[0] != rc.shape[0]:
            raise ValueError(f"{rc.shape[0]} detections but {prob.shape[0]} probabilities")
        cols.append(prob)
    table = np.stack(cols, axis=1)
    if not np.isfinite(table).all():
        raise ValueError(f"detections for {path} contain NaN or infinite values")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(",".join(_fmt(v) for v in row) + "\n" for row in table))
    return path


def write_detection_submission(out_dir: str | Path, detections: Mapping[str, np.ndarray]) -> list[Path]:
    """Write task 3: ``out_dir/NN/MM.csv`` for each image key ``"NN/MM"``.

    Parameters
    ----------
    detections : mapping "NN/MM" -> array of shape (n, 2) or (n, 3)
        ``row, col[, prob]`` per detection; an empty array writes an empty file.
    """
    out_dir = Path(out_dir)
    written = []
    for key, table in detections.items():
        parts = key.split("/")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"image key must be 'NN/MM', got {key!r}")
        table = np.asarray(table, np.float64)
        if table.size == 0:
            table = table.reshape(0, 2)
        if table.ndim != 2 or table.shape[1] not in (2, 3):
            raise ValueError(f"detections of {key} must have shape (n, 2) or (n, 3), got {table.shape}")
        prob = table[:, 2] if table.shape[1] == 3 else None
        written.append(write_detection_csv(out_dir / parts[0] / f"{parts[1]}.csv", table[:, :2], prob))
    return written
