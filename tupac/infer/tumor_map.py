"""A slide's tumor probability map, written to a Zarr heatmap store (``tupac tumor-map``).

Per slide: tissue mask (thumbnail), stain statistics over the slide's tissue, then the tumor model
window by window (:mod:`tupac.heatmaps.windows`) with each window's cells written as one Zarr chunk,
so memory holds one window at a time whatever the slide size. The store gets ``tissue`` and
``tumor`` images (OME-NGFF, micrometer scales) and a commit record written last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np


def tumor_map(
    slide_path: str | Path,
    trained,
    out_path: str | Path,
    *,
    slide_id: str | None = None,
    mpp: float | None = None,
    tissue_mpp: float = 8.0,
    chunk: int = 64,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
):
    """Compute and store the tumor map of one slide.

    Parameters
    ----------
    slide_path : path
        The slide.
    trained : tupac.models.trained.TrainedModel
        A tumor model loaded with :func:`tupac.models.trained.load_trained`.
    out_path : path
        The Zarr group to create (e.g. ``OUT.zarr`` or ``RUN/slides/<id>.zarr``).
    slide_id : str, optional
        Defaults to the slide file's stem.
    mpp : float, optional
        Level-0 um/px for slides whose metadata has none.
    tissue_mpp : float
        Resolution of the tissue mask (um/px).
    chunk : int
        Heatmap cells per window and per Zarr chunk edge.
    overwrite : bool
        Replace a committed store at ``out_path``.
    progress : callable ``(done, total)``, optional

    Returns
    -------
    HeatmapStore
        The committed store.
    """
    from tupac.heatmaps.commit import input_fingerprint
    from tupac.heatmaps.windows import compute_slide_heatmap, heatmap_geometry, window_tissue
    from tupac.heatmaps.store import ArraySpec, HeatmapStore
    from tupac.preprocess import stain
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide

    slide_path = Path(slide_path)
    slide_id = slide_id or slide_path.stem
    fingerprint = input_fingerprint(slide_path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with open_slide(slide_path, mpp=mpp) as reader:
        tissue = slide_tissue_mask(reader, tissue_mpp)
        timings["tissue_s"] = time.perf_counter() - t0
        preprocess = None
        if trained.reference is not None:
            t1 = time.perf_counter()
            stats = stain.fit_slide(reader, tissue, method=trained.reference.method)
            reference = trained.reference
            preprocess = lambda tile: stain.transform(tile, stats, reference)  # noqa: E731
            timings["stain_fit_s"] = time.perf_counter() - t1
        card = trained.card
        geom = heatmap_geometry(reader.dimensions, reader.mpp, card, chunk)
        store = HeatmapStore.create(
            out_path,
            slide_id,
            {
                "tissue": ArraySpec(tissue.mask.shape, (256, 256), "uint8", tissue.mpp, 0,
                                    offset_um=(tissue.mpp / 2, tissue.mpp / 2)),
                "tumor": ArraySpec(geom.shape, (chunk, chunk), "float32", geom.cell_um, 0.0,
                                   offset_um=(geom.offset_px * geom.mpp,) * 2),
            },
            overwrite=overwrite,
        )
        _write_full(store, "tissue", tissue.mask.astype(np.uint8))
        total = int(window_tissue(geom, tissue.mask, tissue.mpp).sum())
        t2 = time.perf_counter()
        compute_slide_heatmap(
            reader,
            trained.model,
            lambda rc, block: store.write_tile("tumor", rc, block),
            tissue_mask=tissue.mask,
            tissue_mpp=tissue.mpp,
            preprocess=preprocess,
            chunk=chunk,
            progress=(lambda done: progress(done, total)) if progress else None,
        )
        timings["tumor_s"] = time.perf_counter() - t2
    store.commit(
        slide_path,
        fingerprint,
        {f"tumor:{card.name}": trained.weights_sha256},
        timings_s=timings,
        extra={"threshold": trained.threshold, "windows": total},
    )
    return store


def _write_full(store, name: str, array: np.ndarray) -> None:
    """Write a small in-memory array chunk by chunk (each chunk once)."""
    rows, cols = store.spec(name).grid()
    for r in range(rows):
        for c in range(cols):
            rs, cs = store.chunk_bounds(name, (r, c))
            store.write_tile(name, (r, c), array[rs, cs])
