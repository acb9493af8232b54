"""The feature dictionary: every column of the cohort table, named and documented.

Each feature module declares its columns as a tuple of :class:`Feature` (name, group, unit,
description). The report and the biomarker analysis read the dictionary, and the tests check that
it covers every column a table holds, so a column can never appear undocumented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tupac.errors import FeatureError

__all__ = ["Feature", "NO_TISSUE", "NO_TISSUE_FEATURE", "dictionary_frame", "ordered_row", "check_finite", "safe_stats"]


@dataclass(frozen=True)
class Feature:
    """One named slide feature.

    Attributes
    ----------
    name : str
        Column name in the cohort table (``snake_case``, prefixed by its group).
    group : str
        Feature group (``tumor``, ``fringe``, ``mitosis_bio``, ``mitosis_arch``, ``deep_hist``, ``flags``).
    unit : str
        Physical unit (``mm2``, ``um``, ``1/mm2``, ...), ``count``, ``fraction``, ``bits`` or ``1`` when dimensionless.
    description : str
        What the value measures, and how a missing value is filled.
    """

    name: str
    group: str
    unit: str
    description: str

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or " " in self.name:
            raise ValueError(f"feature name must be a non-empty identifier, got {self.name!r}")


NO_TISSUE = "no_tissue"
"""The cohort table's row flag of a slide without tissue (a blank or glass-only slide)."""

NO_TISSUE_FEATURE = Feature(
    NO_TISSUE, "flags", "flag",
    "1 when the slide has no tissue (blank, glass only): every other value of its row is missing (NaN), and the "
    "fits (deep histogram, grade network, tupac fit) leave the slide out. The only NaN the table ever holds.")


def dictionary_frame(features: Iterable[Feature]) -> pd.DataFrame:
    """A DataFrame with columns ``name, group, unit, description``, one row per feature, names unique."""
    rows = [(f.name, f.group, f.unit, f.description) for f in features]
    df = pd.DataFrame(rows, columns=["name", "group", "unit", "description"])
    dup = df["name"][df["name"].duplicated()].tolist()
    if dup:
        raise FeatureError(f"feature dictionary has duplicate names: {dup[:5]}")
    return df


def ordered_row(values: Mapping[str, float], features: Iterable[Feature]) -> dict[str, float]:
    """``values`` in dictionary order, as floats; a missing or extra name is a programming error."""
    names = [f.name for f in features]
    missing = [n for n in names if n not in values]
    extra = [k for k in values if k not in set(names)]
    if missing or extra:
        raise FeatureError(f"feature values do not match the dictionary: missing {missing[:5]}, extra {extra[:5]}")
    return {n: float(values[n]) for n in names}


def check_finite(table: pd.DataFrame, where: str = "feature table") -> pd.DataFrame:
    """Raise :class:`FeatureError` naming the columns that hold NaN or Inf; return ``table``."""
    num = table.select_dtypes(include=[np.number])
    bad = num.columns[~np.isfinite(num.to_numpy(dtype=np.float64)).all(axis=0)].tolist()
    if bad:
        raise FeatureError(f"{where}: non-finite values in columns {bad[:10]}")
    return table


def safe_stats(values: np.ndarray) -> dict[str, float]:
    """mean, std (population), min, max, median, cv of a 1-D sample; NaN for an empty sample.

    ``cv`` (std / mean) is 0 when the mean is 0.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        nan = math.nan
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "median": nan, "cv": nan}
    mean = float(v.mean())
    std = float(v.std())
    return {
        "mean": mean,
        "std": std,
        "min": float(v.min()),
        "max": float(v.max()),
        "median": float(np.median(v)),
        "cv": std / mean if mean != 0 else 0.0,
    }
