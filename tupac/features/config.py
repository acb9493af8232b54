"""Settings of the features stage (:func:`tupac.feature_run.run_features`): one frozen dataclass,
validated at construction."""

from __future__ import annotations

from dataclasses import dataclass

from tupac.errors import FeatureError

__all__ = ["FeatureRunConfig"]


@dataclass(frozen=True)
class FeatureRunConfig:
    """Settings of :func:`run_features`.

    Attributes
    ----------
    seed : int
        Seeds fringe choice, deep projection and k-means, the general network and its folds.
    n_patches : int
        Fringe patches per slide (50 in the paper).
    threshold : float
        Tumor probability threshold.
    min_region_mm2 : float
        Tumor regions smaller than this are speckle and dropped.
    min_prob : float
        Detections with a lower probability are ignored.
    n_clusters : int
        Deep-histogram bins wanted; fewer when the training slides hold fewer mitoses (recorded).
    max_deep_per_slide : int
        Most detections per slide (highest probability first) whose deep vectors are computed.
    pixels : bool
        Read the slides for the biological, deep and general features.
    general : bool or None
        General features; None: when labels and a network are given (or a saved fit exists).
    general_model : str
        ``mitosis`` or ``tumor``: the frozen network of the general features.
    general_patches, general_px : int
        Patches per slide (centred on its first fringe patches) and their side at the network's mpp.
    n_splits : int
        Cross-fitting folds (the predictive models' CV folds).
    general_epochs : int
    """

    seed: int = 0
    n_patches: int = 50
    threshold: float = 0.5
    min_region_mm2: float = 0.01
    min_prob: float = 0.0
    n_clusters: int = 200
    max_deep_per_slide: int = 2000
    pixels: bool = True
    general: bool | None = None
    general_model: str = "mitosis"
    general_patches: int = 8
    general_px: int = 256
    n_splits: int = 5
    general_epochs: int = 60

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
