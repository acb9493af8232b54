"""TUPAC16 task-3 files: detection CSVs (``row,col,prob``) and ground truth (``row,col``).

Both are header-less, one point per line, coordinates in 40x pixels of the image; a ground-truth
file with no mitosis is empty. Files mirror the image tree: ``NN/MM.tif`` -> ``NN/MM.csv``.

Parsing is :mod:`tupac.data.readers` (every malformed line a
:class:`~tupac.errors.DatasetLayoutError` naming file and line); this module turns ``(row, col)``
into the ``x = col``, ``y = row`` DataFrames the mitosis stage works with, writes detection CSVs,
and pairs a prediction tree with a ground-truth tree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tupac.data.readers import read_detection_csv, read_mitosis_csv
from tupac.data.submission import write_detection_csv
from tupac.errors import DatasetLayoutError

__all__ = ["pair_csv_trees", "read_detections_csv", "read_truth_csv", "write_detections_csv"]


def read_truth_csv(path: str | Path) -> pd.DataFrame:
    """Read a TUPAC16 mitosis ground-truth CSV (``row,col`` per line, maybe empty).

    Returns
    -------
    DataFrame
        Columns ``x`` (= col) and ``y`` (= row), float64, in image pixels.
    """
    rc = read_mitosis_csv(path)
    return pd.DataFrame({"x": rc[:, 1], "y": rc[:, 0]})


def read_detections_csv(path: str | Path) -> pd.DataFrame:
    """Read a TUPAC16 task-3 detection CSV (``row,col,prob`` per line; ``row,col`` means prob 1).

    Returns
    -------
    DataFrame
        Columns ``x`` (= col), ``y`` (= row) and ``prob``, float64, in file order.
    """
    rcp = read_detection_csv(path)
    return pd.DataFrame({"x": rcp[:, 1], "y": rcp[:, 0], "prob": rcp[:, 2]})


def write_detections_csv(detections: pd.DataFrame, path: str | Path) -> Path:
    """Write detections (``x, y, prob``) as a TUPAC16 task-3 CSV: ``row,col,prob``, no header.

    Coordinates are rounded to whole pixels (as in the TUPAC16 files) and probabilities to 6
    decimals; parent folders are created; no detections give an empty file.
    Writing is :func:`tupac.data.submission.write_detection_csv`.
    """
    rc = np.rint(detections[["y", "x"]].to_numpy(dtype=np.float64))
    prob = np.round(detections["prob"].to_numpy(dtype=np.float64), 6)
    return write_detection_csv(path, rc, prob)


def pair_csv_trees(pred_dir: str | Path, truth_dir: str | Path) -> tuple[list[str], list[str]]:
    """Match the ``**/*.csv`` trees of a prediction folder and a ground-truth folder.

    Returns
    -------
    image_ids : list of str
        Relative paths (POSIX, e.g. ``"01/05.csv"``) of every ground-truth file, sorted.
    missing : list of str
        Those of ``image_ids`` with no prediction file (scored as no detections).

    Raises
    ------
    DatasetLayoutError
        A folder is missing, the truth folder holds no CSV, or a prediction has no ground truth.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for d, what in ((pred_dir, "prediction"), (truth_dir, "ground-truth")):
        if not d.is_dir():
            raise DatasetLayoutError(d, f"{what} folder does not exist")
    truth = {p.relative_to(truth_dir).as_posix() for p in truth_dir.rglob("*.csv") if p.is_file()}
    pred = {p.relative_to(pred_dir).as_posix() for p in pred_dir.rglob("*.csv") if p.is_file()}
    if not truth:
        raise DatasetLayoutError(truth_dir, "no ground-truth CSV files (expected NN/MM.csv)")
    orphans = sorted(pred - truth)
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DatasetLayoutError(
            pred_dir / orphans[0], f"prediction has no ground-truth file {truth_dir / orphans[0]}{more}"
        )
    ids = sorted(truth)
    return ids, [i for i in ids if i not in pred]
