"""A slide's preparation for the window engine, in one place (no Ray).

Per slide, before any model runs: the heatmap geometry of each model, the windows with tissue
under them, the slide's stain statistics per stain method the models need (over its tissue), and
the slide's heatmap store created with ``tissue`` written. :func:`plan_slide` does it on an open
reader and its tissue mask; the cohort job's slide task (:func:`tupac.infer.slide_task.prepare_slide`)
and the single-slide ``tupac tumor-map`` (:func:`tupac.infer.tumor_map.tumor_map`) both call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tupac.errors import ModelError
from tupac.geometry import Frame
from tupac.heatmaps.store import ArraySpec, HeatmapStore
from tupac.heatmaps.windows import heatmap_geometry, window_tissue
from tupac.preprocess import stain

__all__ = ["CardInfo", "SlidePlan", "plan_slide", "slide_specs", "write_full"]


@dataclass(frozen=True)
class CardInfo:
    """What a slide's preparation and the slide tasks need from one trained model (no weights).

    Attributes
    ----------
    task : str
    card : ModelCard
    stain_method : str or None
        Method of the model's stain reference (None: no standardization).
    threshold : float
        Tumor: region threshold; mitosis: detection threshold.
    weights_sha256 : str
    """

    task: str
    card: Any
    stain_method: str | None
    threshold: float
    weights_sha256: str

    @classmethod
    def from_dir(cls, task: str, model_dir: str | Path) -> "CardInfo":
        # Deferred: tupac.models imports torch, which preparing a slide does not need.
        from tupac.models.io import load_card
        from tupac.models.trained import weights_hash

        card = load_card(model_dir)
        if card.task != task:
            raise ModelError(f"{model_dir}: card says task {card.task!r}, expected a {task} model")
        method = card.stain_method
        if card.stain_reference and not method:
            method = stain.StainReference.load(Path(model_dir) / card.stain_reference).method
        return cls(task, card, method if card.stain_reference else None, card.decision_threshold, weights_hash(model_dir))

    def output_params(self) -> dict[str, Any]:
        """What of the card, besides the weights, decides the outputs: the threshold (tumor regions,
        hence where the mitosis stage looks; mitosis detections) and the detector's smoothing and
        suppression. A card whose threshold changed (another threshold rule on the same weights)
        must not leave the outputs of the old one standing as done."""
        extra = self.card.extra or {}
        return {"threshold": float(self.threshold), "sigma_px": extra.get("sigma_px"),
                "nms_radius_px": extra.get("nms_radius_px")}

    @classmethod
    def from_trained(cls, task: str, trained) -> "CardInfo":
        """From a loaded :class:`tupac.models.trained.TrainedModel`."""
        method = trained.reference.method if trained.reference is not None else None
        return cls(task, trained.card, method, float(trained.threshold), trained.weights_sha256)


@dataclass(frozen=True)
class SlidePlan:
    """What :func:`plan_slide` found: geometry and the tumor windows, as coordinates.

    Attributes
    ----------
    geoms : dict of str to HeatmapGeometry
        Per task.
    stats : dict of str to (dict or None)
        Stain statistics per method (``SlideStainStats.to_dict()``), None without tissue.
    tumor_windows : ndarray of int64, shape (k, 2)
        Tumor windows with tissue, raster order.
    tissue_mpp : float
    tissue_fraction : float
    dimensions : (int, int)
        Level-0 (width, height).
    mpp : float
        Level-0 µm/px used.
    backend : str
        The reader backend ``auto`` chose.
    seconds : float
        The whole preparation, from ``t0``.
    steps_s : dict of str to float
        Its parts: ``stain_s`` (stain statistics), ``store_s`` (creating the store and writing the
        tissue mask); the caller adds ``tissue_s`` when it computed the mask.
    qc : dict of str to (dict or None)
        Per task, the slide's stain and texture statistics at that model's resolution for the
        out-of-distribution check (:func:`tupac.features.ood.slide_stats`); filled by the cohort
        job's slide task, empty otherwise.
    """

    geoms: dict
    stats: dict
    tumor_windows: np.ndarray
    tissue_mpp: float
    tissue_fraction: float
    dimensions: tuple[int, int]
    mpp: float
    backend: str
    seconds: float
    steps_s: dict = field(default_factory=dict)
    qc: dict = field(default_factory=dict)


def slide_specs(geoms: Mapping[str, Any], tissue) -> dict[str, ArraySpec]:
    """The store's arrays: the tissue mask and one heatmap per task (one window per chunk)."""
    specs = {"tissue": ArraySpec.from_frame(Frame(tissue.mpp, shape=tissue.mask.shape), (256, 256), "uint8", 0)}
    for task, g in geoms.items():
        specs[task] = ArraySpec.from_frame(g.frame, (g.chunk, g.chunk), "float32", 0.0)
    return specs


def write_full(store, name: str, array: np.ndarray) -> None:
    """Write a small in-memory array chunk by chunk (each chunk once)."""
    rows, cols = store.spec(name).grid()
    for r in range(rows):
        for c in range(cols):
            rs, cs = store.chunk_bounds(name, (r, c))
            store.write_tile(name, (r, c), array[rs, cs])


def plan_slide(
    reader,
    tissue,
    slide_id: str,
    store_path: str | Path,
    cards: Mapping[str, CardInfo],
    chunks: Mapping[str, int],
    overwrite: bool = False,
    t0: float | None = None,
) -> SlidePlan:
    """Geometry, tumor windows, stain statistics and the store (``tissue`` written) of one slide.

    Parameters
    ----------
    reader : SlideReader
        The open slide.
    tissue : TissueMask
        Its tissue mask.
    slide_id : str
    store_path : path
        The Zarr group to create.
    cards : mapping of task to CardInfo
        Must hold ``tumor``: its windows with tissue are the plan's tumor windows.
    chunks : mapping of task to int
        Heatmap cells per window (and per Zarr chunk edge) of each task.
    overwrite : bool
        Replace a committed store at ``store_path``.
    t0 : float, optional
        ``time.perf_counter()`` when the slide's preparation began (for ``seconds``); default now.
    """
    t0 = time.perf_counter() if t0 is None else t0
    geoms = {t: heatmap_geometry(reader.dimensions, reader.mpp, info.card, chunks[t]) for t, info in cards.items()}
    keep = window_tissue(geoms["tumor"], tissue.mask, tissue.mpp)
    stats: dict[str, dict | None] = {}
    t_stain = time.perf_counter()
    for info in cards.values():
        m = info.stain_method
        if m and m not in stats:
            stats[m] = stain.fit_slide(reader, tissue, method=m).to_dict() if keep.any() else None
    t_store = time.perf_counter()
    store = HeatmapStore.create(store_path, slide_id, slide_specs(geoms, tissue), overwrite=overwrite)
    write_full(store, "tissue", tissue.mask.astype(np.uint8))
    windows = np.argwhere(keep).astype(np.int64)
    t_end = time.perf_counter()
    return SlidePlan(
        geoms=geoms, stats=stats, tumor_windows=windows, tissue_mpp=tissue.mpp,
        tissue_fraction=tissue.fraction, dimensions=tuple(reader.dimensions), mpp=float(reader.mpp),
        backend=reader.backend, seconds=t_end - t0,
        steps_s={"stain_s": t_store - t_stain, "store_s": t_end - t_store},
    )
