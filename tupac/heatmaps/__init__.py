"""The run-folder format and the heatmap engine, with no Ray in them.

Everything a later stage reads from a run lives here, so that the features, the report and the
tumor / mitosis code read a run without importing the Ray machinery of :mod:`tupac.infer`::

    RUN/ledger.sqlite                 per-slide states (tupac.heatmaps.ledger)
    RUN/summary.json                  done / failed (with reasons) / skipped, written at the end
    RUN/slides/<id>.zarr/             heatmaps: tissue/0, tumor/0, mitosis/0 (+ levels), OME-NGFF 0.5
    RUN/slides/<id>.zarr/commit.json  written last; a slide without it is not done (tupac.heatmaps.commit)
    RUN/slides/<id>.mitoses.csv       detections x,y,prob (level 0), checksummed in commit.json

:mod:`tupac.heatmaps.windows` lays a model's heatmap over a slide (the windows), :mod:`tupac.heatmaps.engine`
turns their pixels into heatmap cells for any model, and :mod:`tupac.heatmaps.prepare` prepares a slide
for it (tissue windows, stain statistics, the store). Importing this package is cheap: zarr and dask are imported when a store is opened.
"""

from tupac.heatmaps.commit import (
    CommitRecord,
    InputFingerprint,
    code_version,
    input_fingerprint,
    is_committed,
    models_fingerprint,
    read_commit,
)
from tupac.heatmaps.ledger import Ledger, Plan, SlideRecord, State
from tupac.heatmaps.store import ArraySpec, HeatmapStore, store_path

__all__ = [
    "ArraySpec",
    "CommitRecord",
    "HeatmapStore",
    "InputFingerprint",
    "Ledger",
    "Plan",
    "SlideRecord",
    "State",
    "code_version",
    "input_fingerprint",
    "is_committed",
    "models_fingerprint",
    "read_commit",
    "store_path",
]
