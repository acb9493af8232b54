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
- ``deep_hist`` (:mod:`.deep_hist`): 200-bin histogram of k-means words of the mitosis network's deep
  descriptors of the mitoses in the fringe patches (MitosNet: its 4,096 third-convolution
  activations per mitosis), standardized and clustered on training slides only, saved without pickle.
- ``general`` (:mod:`.general`): the paper's two-network model: a frozen tumor or mitosis network's
  feature volumes feed a small grade network; its 1,024 pooled units and 3 grade probabilities,
  out-of-fold for training slides (cross-fitting), from the all-training fit for new slides.
- ``flags``: ``*_missing`` columns, 1 where a group's values were filled because they are undefined
  (no tumor, no mitoses, ...). The table never holds NaN or Inf.

:mod:`.aggregate` reads the heatmap store with Dask and assembles the cohort table
(:func:`cohort_features`); :func:`slide_features` is the per-slide entry point a future
``compute_slide_features(store_path, detections, ...)`` wraps with :func:`open_heatmaps`.
:func:`feature_dictionary` (:mod:`.catalog`) documents every column (name, group, unit, description).
"""

from __future__ import annotations

from tupac.features.catalog import GROUPS, feature_dictionary, feature_list
from tupac.features.dictionary import Feature, check_finite

ALGORITHM_VERSION = 3
"""Raised whenever a change makes the same heatmaps, slides and config give other features (2: issue
17's MitosNet conv3 descriptors clustered on the fringe patches' mitoses, and the 1,024-wide general
layer; 3: issue 19's C-contiguous feature volumes, which move the general features in their last
bits). ``tupac run``'s features stage keys on it, so a run made by older code recomputes its table
instead of keeping features the current code would not give."""

__all__ = [
    "ALGORITHM_VERSION",
    "Feature",
    "GROUPS",
    "feature_dictionary",
    "feature_list",
    "check_finite",
    "slide_features",
    "cohort_features",
    "open_heatmaps",
]


def __getattr__(name: str):
    # Deferred: the Dask-backed entry points import dask and zarr; importing tupac.features stays light.
    if name in ("slide_features", "cohort_features", "open_heatmaps", "SlideInput", "SlideHeatmaps"):
        from tupac.features import aggregate

        return getattr(aggregate, name)
    raise AttributeError(f"module 'tupac.features' has no attribute {name!r}")
