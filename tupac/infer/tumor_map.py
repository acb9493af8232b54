"""A slide's tumor probability map, written to a Zarr heatmap store (``tupac tumor-map``).

Per slide: tissue mask (thumbnail), then the preparation the cohort job's slide task shares
(:func:`tupac.heatmaps.prepare.plan_slide`: geometry, windows with tissue, stain statistics over the
slide's tissue, the store), then the tumor model window by window through the window engine
(:mod:`tupac.heatmaps.engine`) with each window's cells written as one Zarr chunk,
so memory holds one window at a time whatever the slide size. The store gets ``tissue`` and
``tumor`` images (OME-NGFF, micrometer scales) and a commit record written last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from tupac.heatmaps.commit import input_fingerprint
from tupac.heatmaps.engine import SlideWindows, WindowPredictor, compute_heatmap, standardizer
from tupac.heatmaps.prepare import CardInfo, plan_slide
from tupac.heatmaps.store import HeatmapStore
from tupac.preprocess import stain
from tupac.preprocess.tissue import slide_tissue_mask
from tupac.slide import open_slide


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
    slide_path = Path(slide_path)
    slide_id = slide_id or slide_path.stem
    fingerprint = input_fingerprint(slide_path)
    info = CardInfo.from_trained("tumor", trained)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with open_slide(slide_path, mpp=mpp) as reader:
        tissue = slide_tissue_mask(reader, tissue_mpp)
        timings["tissue_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        plan = plan_slide(reader, tissue, slide_id, out_path, {"tumor": info}, {"tumor": chunk}, overwrite=overwrite)
        if info.stain_method:
            timings["stain_fit_s"] = time.perf_counter() - t1
        stats = plan.stats.get(info.stain_method) if info.stain_method else None
        preprocess = standardizer(trained.reference, stain.SlideStainStats.from_dict(stats) if stats else None)
        store = HeatmapStore.open(out_path)
        geom = plan.geoms["tumor"]
        windows = [tuple(rc) for rc in plan.tumor_windows.tolist()]
        total = len(windows)
        t2 = time.perf_counter()
        compute_heatmap(
            SlideWindows(reader, geom),
            WindowPredictor(trained.model),
            lambda rc, block: store.write_tile("tumor", rc, block),
            windows,
            preprocess=preprocess,
            progress=(lambda done: progress(done, total)) if progress else None,
        )
        timings["tumor_s"] = time.perf_counter() - t2
    store.commit(
        slide_path,
        fingerprint,
        {f"tumor:{info.card.name}": trained.weights_sha256},
        timings_s=timings,
        extra={"threshold": trained.threshold, "windows": total},
    )
    return store
