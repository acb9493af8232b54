"""The cohort a model is fitted on: a feature table joined to the TUPAC16 labels.

Nothing is dropped silently. Slides that are on one side only, and label rows that cannot be used
(NaN, a grade outside 1-3), are either an error (``strict=True``) or listed in
:attr:`Cohort.exclusions` with the reason, which the caller prints and records in metrics.json.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tupac.data.labels import read_labels
from tupac.errors import CohortError
from tupac.features.dictionary import NO_TISSUE

__all__ = ["Cohort", "Exclusion", "read_feature_table", "validate_feature_table", "feature_table_hash", "build_cohort",
           "read_fit_labels"]

GRADES = (1, 2, 3)


@dataclass(frozen=True)
class Exclusion:
    """One slide left out of the cohort and why."""

    slide_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"slide_id": self.slide_id, "reason": self.reason}


@dataclass(frozen=True)
class Cohort:
    """Features and labels of the slides used for fitting, row-aligned.

    Attributes
    ----------
    X : DataFrame, shape (n_slides, n_features), float64
        Indexed by ``slide_id``; NaN allowed (imputed inside the pipelines).
    grade : ndarray of int64, shape (n_slides,)
        Mitosis score 1-3.
    rna : ndarray of float64, shape (n_slides,)
        RNA proliferation score.
    exclusions : list of Exclusion
        Slides present in the features or the labels but not used.
    """

    X: pd.DataFrame
    grade: np.ndarray
    rna: np.ndarray
    exclusions: list[Exclusion] = field(default_factory=list)

    @property
    def slide_ids(self) -> np.ndarray:
        return self.X.index.to_numpy(dtype=object)

    def summary(self) -> dict:
        """Counts for metrics.json and the console."""
        counts = {str(g): int((self.grade == g).sum()) for g in GRADES}
        return {
            "n_slides": int(len(self.X)),
            "n_features": int(self.X.shape[1]),
            "grade_counts": counts,
            "n_excluded": len(self.exclusions),
            "excluded": [e.to_dict() for e in self.exclusions],
        }


def read_feature_table(path: str | Path) -> pd.DataFrame:
    """Read ``RUN/features.parquet`` (or a CSV) and validate it; see :func:`validate_feature_table`."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: feature table not found")
    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as e:  # pyarrow/pandas raise many types for a corrupt file
        raise CohortError(f"{path}: cannot read the feature table: {e}") from e
    return validate_feature_table(df, source=str(path))


def validate_feature_table(df: pd.DataFrame, source: str = "feature table") -> pd.DataFrame:
    """Check a feature table and return it indexed by ``slide_id`` with float64 columns.

    Parameters
    ----------
    df : DataFrame
        A ``slide_id`` column (or index) and numeric (or boolean) feature columns; NaN allowed.
    source : str
        What to name in error messages (the file path).

    Raises
    ------
    CohortError
        No ``slide_id``, duplicated or empty IDs, a non-numeric or infinite column, no features.
    """
    if "slide_id" in df.columns:
        df = df.set_index("slide_id")
    elif df.index.name != "slide_id":
        raise CohortError(f"{source}: no 'slide_id' column")
    # Quality-control columns (qc_ood, qc_ood_reasons: tupac.features.ood) describe the slide, not its
    # biology: never features, and the reasons are text.
    df = df.drop(columns=[c for c in df.columns if str(c).startswith("qc_")])
    ids = df.index.astype(str)
    if ids.isna().any() or (ids.str.strip() == "").any():
        raise CohortError(f"{source}: empty slide_id")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise CohortError(f"{source}: slide_id {dup[0]!r} appears more than once")
    bad = [c for c in df.columns if not (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    if bad:
        raise CohortError(f"{source}: feature column {bad[0]!r} is not numeric (dtype {df[bad[0]].dtype})")
    if df.shape[1] == 0:
        raise CohortError(f"{source}: no feature columns besides slide_id")
    out = df.astype(np.float64)
    out.index = pd.Index(ids, name="slide_id")
    out.columns = [str(c) for c in out.columns]
    inf = np.isinf(out.to_numpy()).any(axis=0)
    if inf.any():
        raise CohortError(f"{source}: feature column {out.columns[np.argmax(inf)]!r} has infinite values")
    return out


def feature_table_hash(X: pd.DataFrame) -> str:
    """SHA-256 of a validated feature table's content (IDs, column names, float64 values).

    Independent of the file format and of the parquet writer, so the same table hashes the same
    wherever it was written; recorded with every MLflow run.
    """
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, X.index)).encode())
    h.update(b"\x1e")
    h.update("\x1f".join(map(str, X.columns)).encode())
    h.update(b"\x1e")
    h.update(np.ascontiguousarray(X.to_numpy(np.float64)).tobytes())
    return h.hexdigest()


def read_fit_labels(path: str | Path, features: pd.DataFrame, run: str | Path | None = None,
                    source: str = "the feature table") -> pd.DataFrame:
    """The labels of a fit, in either format (:func:`tupac.data.labels.read_labels`).

    A fit needs both targets, so a by-ID file must have ``grade`` and ``rna`` columns; a slide with
    one of them empty is excluded by :func:`build_cohort` with the reason. Its IDs must be slides of
    the cohort: rows of ``features`` or, with ``run``, stores in ``RUN/slides`` (a slide with no
    feature row, e.g. one that failed inference, is still part of the cohort).

    Parameters
    ----------
    path : path-like
        The labels file.
    features : DataFrame
        From :func:`validate_feature_table` (indexed by ``slide_id``).
    run : path-like, optional
        The run folder.
    source : str
        What ``features`` is (its file), for the unknown-ID message.
    """
    cohort = set(map(str, features.index))
    name = source
    if run is not None:
        cohort |= {p.name[: -len(".zarr")] for p in (Path(run) / "slides").glob("*.zarr")}
        name = f"{source} or {Path(run) / 'slides'}"
    return read_labels(path, cohort=cohort, cohort_name=name, need=("grade", "rna"))


def build_cohort(
    features: pd.DataFrame, labels: pd.DataFrame, *, strict: bool = False, labels_source: str = "labels"
) -> Cohort:
    """Join a validated feature table to labels, reporting every slide that is not used.

    Parameters
    ----------
    features : DataFrame
        From :func:`validate_feature_table`.
    labels : DataFrame
        Columns ``slide_id``, ``mitosis_score``, ``proliferation_score`` (as
        :func:`tupac.data.read_ground_truth` returns; rows built by hand are checked again here).
    strict : bool
        Raise instead of excluding.
    labels_source : str
        The labels file, for messages.

    Raises
    ------
    CohortError
        ``strict`` and something would be excluded; or no slide left.
    """
    missing_cols = {"slide_id", "mitosis_score", "proliferation_score"} - set(labels.columns)
    if missing_cols:
        raise CohortError(f"{labels_source}: labels lack column(s) {sorted(missing_cols)}")
    lab = labels.copy()
    lab["slide_id"] = lab["slide_id"].astype(str)
    dup = lab["slide_id"][lab["slide_id"].duplicated()]
    if len(dup):
        raise CohortError(f"{labels_source}: slide {dup.iloc[0]} is labelled more than once")
    lab = lab.set_index("slide_id")
    grade = pd.to_numeric(lab["mitosis_score"], errors="coerce")
    rna = pd.to_numeric(lab["proliferation_score"], errors="coerce")

    # A slide without tissue has a row of missing values and the flag; the flag is not a feature.
    blank: set[str] = set()
    if NO_TISSUE in features.columns:
        blank = set(features.index[features[NO_TISSUE].fillna(0) > 0])
        features = features.drop(columns=NO_TISSUE)
    exclusions: list[Exclusion] = []
    for sid in lab.index:
        if not np.isfinite(grade[sid]):
            exclusions.append(Exclusion(sid, f"mitosis score is missing or not a number in {labels_source}"))
        elif grade[sid] not in GRADES:
            exclusions.append(Exclusion(sid, f"mitosis score {grade[sid]:g} in {labels_source} is not 1, 2 or 3"))
        elif not np.isfinite(rna[sid]):
            exclusions.append(Exclusion(sid, f"proliferation score is missing or not finite in {labels_source}"))
        elif sid not in features.index:
            exclusions.append(Exclusion(sid, "labelled but has no row in the feature table"))
        elif sid in blank:
            exclusions.append(Exclusion(sid, f"no tissue on the slide: its features are missing (flag {NO_TISSUE})"))
    for sid in features.index.difference(lab.index, sort=False):
        exclusions.append(Exclusion(sid, f"has features but no label in {labels_source}"))
    all_nan = features.index[features.isna().all(axis=1)]
    for sid in all_nan:
        if sid in lab.index and sid not in blank:
            exclusions.append(Exclusion(sid, "every feature is NaN"))

    if strict and exclusions:
        e = exclusions[0]
        more = f" (and {len(exclusions) - 1} more)" if len(exclusions) > 1 else ""
        raise CohortError(f"{labels_source}: slide {e.slide_id} {e.reason}{more}")
    excluded = {e.slide_id for e in exclusions}
    keep = [sid for sid in lab.index if sid not in excluded]
    if not keep:
        raise CohortError(f"{labels_source}: no slide has both valid labels and features")
    return Cohort(
        X=features.loc[keep],
        grade=grade.loc[keep].to_numpy(np.int64),
        rna=rna.loc[keep].to_numpy(np.float64),
        exclusions=exclusions,
    )
