"""Reading a run folder for the report and the QuPath export: slides, commit records, detections.

Layout read here (written by ``tupac infer`` / the Ray job)::

    RUN/slides/<id>.zarr          heatmap store; <id>.zarr/commit.json when the slide is done
    RUN/slides/<id>.mitoses.csv   detections, header ``x,y,prob`` (level-0 pixels)
    RUN/summary.json              the job summary (ledger summary + throughput), optional
    RUN/ledger.sqlite             the ledger, optional
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tupac.errors import HeatmapStoreError, LedgerError, ReportError, TupacError
from tupac.heatmaps.commit import read_commit
from tupac.heatmaps.ledger import Ledger
from tupac.heatmaps.store import detections_path
from tupac.slide import open_slide

__all__ = ["SlideEntry", "list_slides", "read_detections", "slide_geometry", "read_json", "run_summary"]


@dataclass(frozen=True)
class SlideEntry:
    """One slide folder of a run.

    Attributes
    ----------
    slide_id : str
    store : Path
        ``RUN/slides/<id>.zarr``.
    record : CommitRecord or None
        The commit record; None when the slide is not committed (not done) or unreadable.
    problem : str or None
        Why ``record`` is None.
    detections_csv : Path
        ``RUN/slides/<id>.mitoses.csv`` (may not exist).
    """

    slide_id: str
    store: Path
    record: Any
    problem: str | None
    detections_csv: Path

    @property
    def committed(self) -> bool:
        return self.record is not None


def list_slides(run_dir: str | Path) -> list[SlideEntry]:
    """Every ``RUN/slides/*.zarr`` folder, sorted by slide ID (hidden temporaries skipped)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(run_dir, "no such run folder")
    out = []
    for store in sorted((run_dir / "slides").glob("*.zarr")):
        if store.name.startswith(".") or not store.is_dir():
            continue
        sid = store.name[: -len(".zarr")]
        try:
            rec, problem = read_commit(store), None
        except HeatmapStoreError as e:
            rec, problem = None, e.problem
        out.append(SlideEntry(sid, store, rec, problem, detections_path(store)))
    return out


def read_detections(path: str | Path) -> pd.DataFrame | None:
    """The detections table (``x, y, prob`` float64), or None when the file does not exist.

    Raises
    ------
    ReportError
        The file exists but is not a CSV with ``x, y, prob`` columns.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({c: np.empty(0) for c in ("x", "y", "prob")})
    except (OSError, ValueError) as e:
        raise ReportError(path, f"cannot read detections: {e}") from None
    missing = {"x", "y", "prob"} - set(df.columns)
    if missing:
        raise ReportError(path, f"detections need columns x, y, prob; missing {sorted(missing)}")
    return df[["x", "y", "prob"]].astype(np.float64)


def slide_geometry(record: Any, slide_mpp: float | None = None) -> tuple[float, tuple[int, int] | None]:
    """Level-0 µm/px and ``(width, height)`` of the slide a commit record was made from.

    Opens the slide file named in the record (metadata only). When ``slide_mpp`` is given and
    the file cannot be opened, returns ``(slide_mpp, None)`` (size unknown).

    Raises
    ------
    ReportError
        The slide cannot be opened and no ``slide_mpp`` was given.
    """
    try:
        with open_slide(record.input_path, backend="openslide", mpp=slide_mpp) as s:
            return float(s.mpp), tuple(int(v) for v in s.dimensions)
    except TupacError as e:
        if slide_mpp is not None:
            return float(slide_mpp), None
        raise ReportError(record.input_path, f"cannot read the slide's level-0 resolution ({e}); pass --slide-mpp") from None


def read_json(path: str | Path) -> tuple[Any, str | None]:
    """``(data, None)``, or ``(None, reason)`` when the file is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        return None, f"{path.name} not found"
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as e:
        return None, f"{path}: unreadable ({e})"


def run_summary(run_dir: str | Path) -> tuple[dict | None, str]:
    """The job summary: ``RUN/summary.json``, else the ledger's summary, else None.

    Returns
    -------
    (summary or None, source)
        ``source`` names where it came from (or why there is none).
    """
    run_dir = Path(run_dir)
    data, why = read_json(run_dir / "summary.json")
    if isinstance(data, dict):
        return data, "summary.json"
    ledger_file = run_dir / "ledger.sqlite"
    if ledger_file.is_file():
        try:
            with Ledger.open(run_dir) as ledger:
                return ledger.summary(), "ledger.sqlite"
        except LedgerError as e:
            return None, str(e)
    return None, why or "no summary.json or ledger.sqlite"
