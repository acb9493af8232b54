"""Mitosis detection logic: detections from heatmaps, threshold choice, TUPAC16 scoring and files.

Pure functions over numpy arrays and DataFrames; only :mod:`tupac.mitosis.io` touches files
(the ones it is handed).
"""

from tupac.mitosis.detect import choose_threshold, detect_from_heatmap, nms
from tupac.mitosis.scoring import TUPAC_RADIUS_PX, Counts, match_points, score_image, score_images

__all__ = [
    "TUPAC_RADIUS_PX",
    "Counts",
    "choose_threshold",
    "detect_from_heatmap",
    "match_points",
    "nms",
    "score_image",
    "score_images",
]
