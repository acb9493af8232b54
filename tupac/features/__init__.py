"""Slide features: every slide becomes one row of named, documented numbers.

Groups (each a module of pure functions on arrays and tables; none opens files it is not handed,
none imports ray or mlflow):

- ``tumor`` (:mod:`.tumor`): tumor localization from the tumor heatmap and tissue mask: area,
  fraction of tissue, number and size of regions, shape of the largest (solidity, eccentricity,
  perimeter/area), extent and location, heatmap density inside the tumor.
- ``fringe`` (:mod:`.fringe`): fifty 1000 x 1000 patches at 40x from the boundary band of the
  largest tumor regions, where the biological features are measured; plus a small summary.
- ``mitosis_bio`` (:mod:`.mitosis_bio`): fifty morphometric, stain-intensity and texture features of
  the detected mitotic figures per patch, aggregated over the patches (mean, std, max) plus pooled
  slide values (number of mitoses, std of figure area, mean eccentricity).
- ``mitosis_arch`` (:mod:`.mitosis_arch`): sixty features of the mitoses' spatial distribution over
  the slide: densities, hotspots (1 and 10 HPF), grid sparsity/entropy, nearest-neighbour, Delaunay,
  Voronoi, and second-order statistics of the mitosis heatmap.
- ``deep_hist`` (:mod:`.deep_hist`): 200-bin histogram of k-means words of the mitosis network's
  penultimate features, fitted on training slides only and saved without pickle.
- ``general`` (:mod:`.general`): the paper's two-network model: a frozen tumor or mitosis network's
  feature volumes feed a small grade network; its 1,024 pooled units and 3 grade probabilities,
  out-of-fold for training slides (cross-fitting), from the all-training fit for new slides.
- ``flags``: ``*_missing`` columns, 1 where a group's values were filled because they are undefined
  (no tumor, no mitoses, ...). The table never holds NaN or Inf.

:mod:`.aggregate` reads the heatmap store with Dask and assembles the cohort table
(:func:`cohort_features`); :func:`slide_features` is the per-slide entry point a future
``compute_slide_features(store_path, detections, ...)`` wraps with :func:`open_heatmaps`.
:func:`feature_dictionary` documents every column (name, group, unit, description).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from tupac.features.dictionary import Feature, check_finite, dictionary_frame

__all__ = [
    "Feature",
    "GROUPS",
    "feature_dictionary",
    "feature_list",
    "check_finite",
    "slide_features",
    "cohort_features",
    "open_heatmaps",
]

GROUPS = ("tumor", "fringe", "mitosis_arch", "mitosis_bio", "deep_hist", "general")


def feature_list(groups: Iterable[str] = GROUPS, n_clusters: int = 200) -> tuple[Feature, ...]:
    """Every slide-level feature of ``groups``, each group followed by its flags, in table order."""
    from tupac.features.deep_hist import deep_hist_dictionary
    from tupac.features.fringe import FRINGE_FEATURES
    from tupac.features.general import general_dictionary
    from tupac.features.mitosis_arch import ARCH_FEATURES, ARCH_FLAGS
    from tupac.features.mitosis_bio import BIO_FLAGS, BIO_SLIDE_FEATURES
    from tupac.features.tumor import TUMOR_FEATURES, TUMOR_FLAGS

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


def __getattr__(name: str):
    # The Dask-backed entry points are imported on first use: importing tupac.features stays light.
    if name in ("slide_features", "cohort_features", "open_heatmaps", "SlideInput", "SlideHeatmaps"):
        from tupac.features import aggregate

        return getattr(aggregate, name)
    raise AttributeError(f"module 'tupac.features' has no attribute {name!r}")
