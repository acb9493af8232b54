"""Small run folders for the report tests, built through the real store API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from tupac.infer.commit import input_fingerprint
from tupac.infer.store import ArraySpec, HeatmapStore, store_path


def disk(shape: tuple[int, int], center_rc: tuple[float, float], radius: float) -> np.ndarray:
    """Bool mask of pixel centres within ``radius`` of ``center_rc``."""
    r, c = np.ogrid[: shape[0], : shape[1]]
    return (r - center_rc[0]) ** 2 + (c - center_rc[1]) ** 2 <= radius**2


def write_store(
    run: Path,
    slide_id: str,
    slide_file: Path,
    arrays: Mapping[str, tuple[np.ndarray, float, tuple[float, float]]],
    chunk: int = 32,
    detections: pd.DataFrame | None = None,
    timings: Mapping[str, float] | None = None,
    extra: Mapping | None = None,
    commit: bool = True,
) -> Path:
    """Create ``RUN/slides/<id>.zarr`` with the given heatmaps (name -> (array, mpp, offset_um)),
    every chunk written with ``write_tile``; detections CSV beside it; commit last."""
    path = store_path(run, slide_id)
    specs = {
        name: ArraySpec(a.shape, (chunk, chunk), "uint8" if a.dtype == bool else "float32", mpp, offset_um=off)
        for name, (a, mpp, off) in arrays.items()
    }
    store = HeatmapStore.create(path, slide_id, specs)
    for name, (a, _, _) in arrays.items():
        gr, gc = specs[name].grid()
        for i in range(gr):
            for j in range(gc):
                ys, xs = store.chunk_bounds(name, (i, j))
                store.write_tile(name, (i, j), a[ys, xs])
    outputs = {}
    if detections is not None:
        csv = path.with_name(f"{slide_id}.mitoses.csv")
        detections.to_csv(csv, index=False)
        outputs["mitoses.csv"] = csv
    if commit:
        store.commit(slide_file, input_fingerprint(slide_file), {"tumor:test": "0" * 64},
                     timings_s=timings or {}, outputs=outputs, extra=extra or {}, durable=False)
    return path


def write_predict(run: Path, n: int = 36, seed: int = 0) -> Path:
    """``RUN/predict`` written by :func:`tupac.predict.fit.write_outputs` from a real, light fit
    (36 synthetic slides, one model per task, 3 folds, 2 repeats: a few seconds)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "predict"))
    from synthetic import synthetic_cohort

    from tupac.predict.cohort import build_cohort, validate_feature_table
    from tupac.predict.fit import FitConfig, fit_cohort, write_outputs

    features, labels = synthetic_cohort(n=n, n_noise=6, seed=seed)
    cohort = build_cohort(validate_feature_table(features), labels)
    cfg = FitConfig(seed=seed, repeats=2, n_splits=3, inner_splits=2, k_features=5, grade_models=("logreg_enet",),
                    rna_models=("elastic_net",), n_boot=200, importance_repeats=1)
    write_outputs(fit_cohort(cohort, cfg), run / "predict")
    return run / "predict"


def write_summary(run: Path, done: list[str], failed: list[tuple[str, str]], throughput: dict | None = None) -> None:
    """``RUN/summary.json`` shaped like the job's (ledger summary + throughput)."""
    doc = {
        "total": len(done) + len(failed),
        "counts": {"PENDING": 0, "RUNNING": 0, "DONE": len(done), "FAILED": len(failed)},
        "done": done,
        "skipped": [],
        "failed": [{"slide_id": s, "path": f"/data/{s}.svs", "error": e, "attempts": 3, "given_up": True}
                   for s, e in failed],
        "unfinished": [],
        "ok": not failed,
        "throughput": throughput or {},
    }
    (run / "summary.json").write_text(json.dumps(doc))
