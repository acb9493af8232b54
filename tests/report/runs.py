"""Small run folders for the report tests, built through the real store API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from tupac.heatmaps.commit import input_fingerprint
from tupac.heatmaps.store import ArraySpec, HeatmapStore, store_path


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


def phantom_run(cohort: Path, run: Path, seed: int = 0, commit_ids: list[str] | None = None) -> dict[str, Path]:
    """A run folder over a phantom cohort whose heatmaps are its truth, slightly blurred.

    Per slide: ``tissue`` (uint8, the truth mask at 4 µm/px, centre of cell 0 at 2 µm), ``tumor``
    (float32 probability at 8 µm/px: 2 x 2 means of the truth mask, Gaussian-smoothed; cell 0
    centred at 4 µm), and detections at the true mitoses (jittered by a few pixels, probabilities
    drawn from a seeded generator). Stage timings are drawn too (they only have to look like
    timings). Slides not in ``commit_ids`` (default: all) are left uncommitted.
    """
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    slides = sorted((cohort / "training_image_data").glob("*.svs"))
    out = {}
    for slide in slides:
        sid = slide.stem
        truth = cohort / "truth" / sid
        tissue = np.asarray(Image.open(truth / "tissue.png")) > 0
        tumor4 = (np.asarray(Image.open(truth / "tumor.png")) > 0).astype(np.float32)
        h, w = (tumor4.shape[0] // 2) * 2, (tumor4.shape[1] // 2) * 2
        tumor8 = tumor4[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        tumor8 = np.clip(ndimage.gaussian_filter(tumor8, 1.5) * 0.95 + 0.02, 0, 1).astype(np.float32)
        mit = pd.read_csv(truth / "mitoses.csv")
        det = pd.DataFrame({
            "x": mit["x"].to_numpy(float) + rng.normal(0, 3, len(mit)),
            "y": mit["y"].to_numpy(float) + rng.normal(0, 3, len(mit)),
            "prob": rng.uniform(0.55, 0.99, len(mit)),
        })
        timings = {"prepare_s": rng.uniform(1, 2), "read_s": rng.uniform(5, 9), "model_s": rng.uniform(20, 40),
                   "regions_s": rng.uniform(0.1, 0.3), "finalize_s": rng.uniform(0.2, 0.6)}
        extra = {"tumor_threshold": 0.5, "mitoses": len(det),
                 "tumor_area_mm2": float((tumor4 > 0).sum()) * 16 / 1e6}
        out[sid] = write_store(
            run, sid, slide,
            {"tissue": (tissue, 4.0, (2.0, 2.0)), "tumor": (tumor8, 8.0, (4.0, 4.0))},
            chunk=64, detections=det, timings=timings, extra=extra,
            commit=commit_ids is None or sid in commit_ids,
        )
    return out
