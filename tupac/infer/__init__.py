"""Cohort inference: per-slide heatmap stores, commit records, the run ledger and the manifest.

A run directory ``RUN/`` holds::

    RUN/ledger.sqlite                 per-slide states (tupac.infer.ledger)
    RUN/summary.json                  done / failed (with reasons) / skipped, written at the end
    RUN/slides/<id>.zarr/             heatmaps: tissue/0, tumor/0, mitosis/0 (+ levels), OME-NGFF 0.5
    RUN/slides/<id>.zarr/commit.json  written last; a slide without it is not done
    RUN/slides/<id>.mitoses.csv       detections x,y,prob (level 0), checksummed in commit.json

Importing this package is cheap: zarr and dask are imported when a store is opened, and the
Ray actors live in their own modules.
"""

from tupac.infer.commit import (
    CommitRecord,
    InputFingerprint,
    code_version,
    input_fingerprint,
    is_committed,
    models_fingerprint,
    read_commit,
)
from tupac.infer.ledger import Ledger, Plan, SlideRecord, State
from tupac.infer.manifest import ManifestEntry, from_dataset, load_cohort, read_manifest, slide_id_problem
from tupac.infer.store import ArraySpec, HeatmapStore, store_path

__all__ = [
    "ArraySpec",
    "CommitRecord",
    "HeatmapStore",
    "InputFingerprint",
    "Ledger",
    "ManifestEntry",
    "Plan",
    "SlideRecord",
    "State",
    "code_version",
    "from_dataset",
    "input_fingerprint",
    "is_committed",
    "load_cohort",
    "models_fingerprint",
    "read_commit",
    "read_manifest",
    "slide_id_problem",
    "store_path",
]
