"""Settings of the features stage (:func:`tupac.feature_run.run_features`): one frozen dataclass,
validated at construction."""

from __future__ import annotations

from dataclasses import dataclass

from tupac.config_check import option
from tupac.errors import FeatureError

__all__ = ["FeatureRunConfig"]


@dataclass(frozen=True)
class FeatureRunConfig:
    """Settings of :func:`run_features`; each field's description is its ``help``
    (:func:`tupac.config_check.option`)."""

    seed: int = option(0, help="Seed of every random choice and fit (fringe choice, deep-descriptor k-means, "
                               "the general network and its folds).")
    n_patches: int = option(50, help="Fringe patches per slide (50 in the paper).")
    threshold: float = option(0.5, help="Tumor probability threshold.")
    min_region_mm2: float = option(0.01, help="Tumor regions smaller than this (mm²) are dropped as speckle.")
    min_prob: float = option(0.0, help="Ignore detections below this probability.")
    n_clusters: int = option(200, help="Deep-histogram bins (k-means clusters); fewer when the training slides "
                                       "hold fewer mitoses (recorded).")
    max_deep_per_slide: int = option(2000, help="Most detections in a slide's fringe patches (highest probability "
                                                "first) whose deep descriptors are computed.")
    pixels: bool = option(True, help="Read the slides (biological, deep, general features).")
    general: bool | None = option(None, help="General features (grade network); default: on when labels and a "
                                             "network are given (or a saved fit exists).")
    general_model: str = option("mitosis", help="Frozen network of the general features: mitosis or tumor.")
    general_patches: int = option(8, help="General-feature patches per slide (centred on its first fringe patches).")
    general_px: int = option(256, help="Side of a general-feature patch at the network's mpp (px).")
    n_splits: int = option(5, help="Cross-fitting folds (as the predictive CV).")
    general_epochs: int = option(60, help="Training epochs of the grade network.")

    def __post_init__(self) -> None:
        if self.general_model not in ("mitosis", "tumor"):
            raise FeatureError(f"general_model must be 'mitosis' or 'tumor', got {self.general_model!r}")
        if min(self.n_patches, self.n_clusters, self.max_deep_per_slide, self.general_patches, self.n_splits) < 1:
            raise FeatureError("n_patches, n_clusters, max_deep_per_slide, general_patches, n_splits must be >= 1")
        if self.n_splits < 2:
            raise FeatureError(f"cross-fitting needs at least 2 folds, got n_splits={self.n_splits}")
        checks = [
            (self.seed >= 0, f"seed={self.seed!r}, expected >= 0"),
            (0 <= self.threshold <= 1, f"threshold={self.threshold!r}, expected a probability in [0, 1]"),
            (0 <= self.min_prob <= 1, f"min_prob={self.min_prob!r}, expected a probability in [0, 1]"),
            (self.min_region_mm2 >= 0, f"min_region_mm2={self.min_region_mm2!r}, expected >= 0 mm^2"),
            (self.general_px >= 1, f"general_px={self.general_px!r}, expected >= 1"),
            (self.general_epochs >= 1, f"general_epochs={self.general_epochs!r}, expected >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise FeatureError(msg)
