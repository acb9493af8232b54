"""Heatmap stores and run folders for the feature tests, built through the real store API
(:class:`tupac.heatmaps.store.HeatmapStore`: ``create``, ``write_tile`` per chunk, ``commit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from tupac.heatmaps.commit import input_fingerprint
from tupac.heatmaps.store import ArraySpec, HeatmapStore, store_path

Heatmap = tuple  # (array, mpp, offset_um (y, x) or None, chunk)


def write_heatmaps(path: Path, slide_id: str, arrays: Mapping[str, Heatmap]) -> HeatmapStore:
    """Create a store at ``path`` holding ``arrays`` (name -> (array, mpp, offset_um, chunk side));
    every chunk is written with ``write_tile``. ``offset_um`` None = ``mpp / 2`` (pixel 0 covers [0, mpp))."""
    specs = {}
    for name, (a, mpp, off, chunk) in arrays.items():
        off = (mpp / 2, mpp / 2) if off is None else off
        dtype = "uint8" if a.dtype == bool else "float32"
        specs[name] = ArraySpec(a.shape, (chunk, chunk), dtype, mpp, offset_um=off)
    store = HeatmapStore.create(path, slide_id, specs)
    for name, (a, *_rest) in arrays.items():
        gr, gc = specs[name].grid()
        for i in range(gr):
            for j in range(gc):
                ys, xs = store.chunk_bounds(name, (i, j))
                store.write_tile(name, (i, j), a[ys, xs])
    return store


def write_run_slide(
    run: Path,
    slide_id: str,
    slide_file: Path,
    arrays: Mapping[str, Heatmap],
    detections: pd.DataFrame | None,
    commit: bool = True,
    extra: Mapping | None = None,
) -> Path:
    """``RUN/slides/<id>.zarr`` (+ ``<id>.mitoses.csv`` with ``x,y,prob``), committed last like the job does
    (``extra``: the commit record's ``extra``)."""
    path = store_path(run, slide_id)
    store = write_heatmaps(path, slide_id, arrays)
    outputs = {}
    if detections is not None:
        csv = path.with_name(f"{slide_id}.mitoses.csv")
        detections[["x", "y", "prob"]].to_csv(csv, index=False)
        outputs["mitoses.csv"] = csv
    if commit:
        store.commit(slide_file, input_fingerprint(slide_file), {"tumor:test": "0" * 64}, outputs=outputs,
                     extra=extra, durable=False)
    return path


def block_mean(mask: np.ndarray, f: int) -> np.ndarray:
    """``f x f`` block means of a 2-D array (trailing rows/columns that do not fill a block are dropped)."""
    h, w = (mask.shape[0] // f) * f, (mask.shape[1] // f) * f
    return mask[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
