"""TUPAC16 data as distributed: slides, ground-truth CSVs, ROI CSVs, the mitosis auxiliary set,
and the submission formats; labels by slide ID for any cohort (:mod:`tupac.data.labels`). See
:mod:`tupac.data.layout` for the folder layout."""

from tupac.data.ids import TEST_PREFIX, TRAIN_PREFIX, parse_slide_id, slide_id_for
from tupac.data.labels import read_labels
from tupac.data.layout import MitosisImage, SlideEntry, Tupac16Dataset
from tupac.data.readers import read_detection_csv, read_ground_truth, read_mitosis_csv, read_roi_csv
from tupac.data.submission import (
    read_scores_submission,
    write_detection_csv,
    write_detection_submission,
    write_scores_submission,
)

__all__ = [
    "TEST_PREFIX",
    "TRAIN_PREFIX",
    "MitosisImage",
    "SlideEntry",
    "Tupac16Dataset",
    "parse_slide_id",
    "read_detection_csv",
    "read_ground_truth",
    "read_labels",
    "read_mitosis_csv",
    "read_roi_csv",
    "read_scores_submission",
    "slide_id_for",
    "write_detection_csv",
    "write_detection_submission",
    "write_scores_submission",
]
