"""The feature catalog: every slide-level feature of every group, in table order, and its dictionary."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from tupac.features.deep_hist import deep_hist_dictionary
from tupac.features.dictionary import Feature, dictionary_frame
from tupac.features.fringe import FRINGE_FEATURES
from tupac.features.general import general_dictionary
from tupac.features.mitosis_arch import ARCH_FEATURES, ARCH_FLAGS
from tupac.features.mitosis_bio import BIO_FLAGS, BIO_SLIDE_FEATURES
from tupac.features.tumor import TUMOR_FEATURES, TUMOR_FLAGS

__all__ = ["GROUPS", "feature_dictionary", "feature_list"]

GROUPS = ("tumor", "fringe", "mitosis_arch", "mitosis_bio", "deep_hist", "general")


def feature_list(groups: Iterable[str] = GROUPS, n_clusters: int = 200) -> tuple[Feature, ...]:
    """Every slide-level feature of ``groups``, each group followed by its flags, in table order."""
    by_group = {
        "tumor": TUMOR_FEATURES + TUMOR_FLAGS,
        "fringe": FRINGE_FEATURES,
        "mitosis_arch": ARCH_FEATURES + ARCH_FLAGS,
        "mitosis_bio": BIO_SLIDE_FEATURES + BIO_FLAGS,
        "deep_hist": deep_hist_dictionary(n_clusters),
        "general": general_dictionary(),
    }
    groups = tuple(groups)
    unknown = [g for g in groups if g not in by_group]
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; known: {list(by_group)}")
    return tuple(f for g in GROUPS if g in groups for f in by_group[g])


def feature_dictionary(groups: Iterable[str] = GROUPS, n_clusters: int = 200) -> pd.DataFrame:
    """The feature dictionary: DataFrame ``name, group, unit, description``, one row per column."""
    return dictionary_frame(feature_list(groups, n_clusters))
