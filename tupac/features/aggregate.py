"""Per-slide and cohort feature tables, with Dask doing the heatmap reductions.

A slide's heatmaps come from its store (:class:`tupac.heatmaps.store.HeatmapStore`: each heatmap an
OME-NGFF image group, read at dataset ``0``, with its µm/px and the offset of its pixel (0, 0)) and are
read lazily, one Dask task per stored Zarr chunk (``dask.array.from_array`` over a picklable chunk
reader, see :class:`ZarrReader` for why not ``from_zarr``). Rasters of different resolutions and
offsets, and the level-0 detections, are aligned in the tumor raster's frame. Two small graphs per slide:

1. the tumor heatmap (block-averaged by an integer factor when it exceeds ``max_pixels``, so memory
   stays bounded whatever the slide size) and the tissue mask are brought to numpy, and the tumor
   features, tumor mask and fringe patches are computed from them;
2. the mitosis heatmap is summarized chunk by chunk (``map_blocks``: each chunk yields the additive
   moments of its values inside the tumor, :func:`tupac.features.mitosis_arch.heatmap_moments`),
   and the per-chunk summaries are summed. The tumor mask enters the graph once, as a single key.

So a slide's graph has a few tasks per chunk and a handful more, never per tile; :attr:`SlideFeatures.n_tasks`
reports it. Graphs run on the local threaded scheduler by default; pass ``scheduler=ray_dask_get``
(``ray.util.dask``) to run them on a Ray cluster (Dask-on-Ray). This module itself never imports ray.

The cohort table has one row per slide (``slide_id`` then named columns, each in the feature
dictionary) and holds no NaN or Inf; the caller writes it to parquet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tupac.errors import FeatureError, FeatureFileError, HeatmapStoreError
from tupac.features.catalog import feature_dictionary
from tupac.features.deep_hist import DeepHistogram
from tupac.features.dictionary import check_finite
from tupac.features.fringe import fringe_patches, fringe_summary
from tupac.features.mitosis_arch import HEAT_BINS, arch_features, heatmap_moments
from tupac.features.mitosis_bio import detections_in_patch, patch_bio_features, slide_bio_features
from tupac.features.tumor import tumor_features
from tupac.geometry import MPP_40X, Frame, pixels_under, resample_onto
from tupac.heatmaps.store import HeatmapStore

__all__ = ["SlideHeatmaps", "SlideInput", "SlideFeatures", "open_heatmaps", "slide_features", "cohort_features"]

@dataclass(frozen=True)
class SlideHeatmaps:
    """Lazy heatmaps of one slide (``dask.array`` 2-D, axes y, x), their resolutions in µm/px and the
    position of their pixel (0, 0).

    ``*_offset_um`` is ``(y, x)`` in µm from the slide's level-0 origin to the *centre* of heatmap
    pixel (0, 0), as the store records it (``ArraySpec.offset_um``); None means ``mpp / 2``: pixel
    (0, 0) covers ``[0, mpp)`` from the origin, the convention of the pure feature modules.
    :meth:`frame` gives each heatmap's :class:`tupac.geometry.Frame`.
    """

    tumor: Any
    tumor_mpp: float
    tissue: Any = None
    tissue_mpp: float | None = None
    mitosis: Any = None
    mitosis_mpp: float | None = None
    tumor_offset_um: tuple[float, float] | None = None
    tissue_offset_um: tuple[float, float] | None = None
    mitosis_offset_um: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name, (arr, mpp, off) in self._layers().items():
            if arr is None:
                continue
            if arr.ndim != 2:
                raise FeatureError(f"{name} heatmap must be 2-D (y, x), got shape {arr.shape}")
            if mpp is None or not (math.isfinite(mpp) and mpp > 0):
                raise FeatureError(f"{name} heatmap needs a positive µm/px, got {mpp!r}")
            if off is not None and (len(off) != 2 or not all(math.isfinite(float(v)) for v in off)):
                raise FeatureError(f"{name} heatmap offset must be two finite µm values (y, x), got {off!r}")

    def _layers(self) -> dict[str, tuple[Any, float | None, tuple[float, float] | None]]:
        return {
            "tumor": (self.tumor, self.tumor_mpp, self.tumor_offset_um),
            "tissue": (self.tissue, self.tissue_mpp, self.tissue_offset_um),
            "mitosis": (self.mitosis, self.mitosis_mpp, self.mitosis_offset_um),
        }

    def frame(self, name: str) -> Frame:
        """Where heatmap ``name`` lies on the slide."""
        arr, mpp, off = self._layers()[name]
        known = arr is not None and all(isinstance(v, (int, np.integer)) for v in arr.shape)
        return Frame(mpp, off, tuple(arr.shape) if known else None)

    def origin_um(self, name: str) -> np.ndarray:
        """``(y, x)`` µm from the slide origin to the top-left corner of heatmap ``name``'s pixel (0, 0)."""
        return self.frame(name).origin_um


class ZarrReader:
    """A picklable, lazily opened view of one Zarr array, for ``dask.array.from_array``.

    Why not hand the ``zarr.Array`` itself to Dask (``da.from_zarr``, as ``HeatmapStore.as_dask``
    does)? Dask-on-Ray rebuilds every dataclass it finds in a task by calling its constructor with all
    of its fields, and zarr 3's metadata dataclass has a field its constructor does not take, so such
    graphs fail on Ray. This reader is a plain object holding the store path and the array's path in
    it (``tumor/0``: dataset 0 of the ``tumor`` image group); each worker opens the array on first
    use, and the graph carries a few strings instead of the array's metadata.
    """

    def __init__(self, store: str, name: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...]):
        self.store, self.name = store, name
        self.shape, self.dtype, self.chunks = tuple(shape), np.dtype(dtype), tuple(chunks)
        self.ndim = len(self.shape)
        self._array = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_array"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _array=None)

    def __getitem__(self, key):
        # Deferred: zarr loads in the worker that first reads a chunk, not where the graph is built.
        import zarr

        if self._array is None:
            self._array = zarr.open_group(self.store, mode="r")[self.name]
        return np.asarray(self._array[key])


def _lazy(path: Path, z, name: str):
    """Dask array over the zarr array ``z`` found at ``name`` inside the store ``path``: one task per chunk."""
    import dask.array as da  # deferred: dask loads with the first graph (importing the features stays cheap)

    reader = ZarrReader(str(path), name, z.shape, z.dtype, z.chunks)
    token = dask_token(path, name, z.shape, z.chunks)
    return da.from_array(reader, chunks=z.chunks, name=f"zarr-{name.replace('/', '-')}-{token}",
                         asarray=False, fancy=False, meta=np.empty((0,) * z.ndim, dtype=z.dtype))


def dask_token(*parts) -> str:
    from dask.base import tokenize  # deferred: dask loads with the first graph

    return tokenize(*(str(p) for p in parts))


def open_heatmaps(store_path: str | Path) -> SlideHeatmaps:
    """Open a slide's heatmap store (:class:`tupac.heatmaps.store.HeatmapStore`) lazily.

    Parameters
    ----------
    store_path : path
        ``RUN/slides/<slide_id>.zarr``: a Zarr v3 group whose heatmaps are OME-NGFF image groups
        ``tumor`` (required), ``tissue`` and ``mitosis`` (optional), each read at full resolution
        (dataset ``0``), with µm/px from ``store.mpp(name)`` and the centre of pixel (0, 0) from
        ``store.spec(name).offset_um``. The commit record is not checked here (the caller decides).

    Returns
    -------
    SlideHeatmaps
        Dask arrays chunked as stored (one chunk per tile), one read task per chunk (see :class:`ZarrReader`).

    Raises
    ------
    FeatureFileError
        Not a tupac heatmap store, or no ``tumor`` heatmap; the message names the store.
    """
    path = Path(store_path)
    try:
        store = HeatmapStore.open(path, mode="r")
    except HeatmapStoreError as e:
        raise FeatureFileError(path, f"not a readable heatmap store: {e.problem}") from None
    if "tumor" not in store.names:
        raise FeatureFileError(path, f"has no 'tumor' heatmap (heatmaps: {', '.join(store.names) or 'none'})")
    arrays: dict[str, Any] = {}
    frames: dict[str, Frame] = {}
    for name in ("tumor", "tissue", "mitosis"):
        if name not in store.names:
            continue
        try:
            z = store.array(name, 0)
        except (HeatmapStoreError, KeyError) as e:
            raise FeatureFileError(path / name, f"heatmap dataset 0 is unreadable: {e}") from None
        arrays[name] = _lazy(path, z, f"{name}/0")
        frames[name] = store.spec(name).frame
    placed = {name: (f.mpp, f.offset_um) for name, f in frames.items()}
    (tumor_mpp, tumor_off), (tissue_mpp, tissue_off), (mitosis_mpp, mitosis_off) = (
        placed.get(name, (None, None)) for name in ("tumor", "tissue", "mitosis"))
    return SlideHeatmaps(
        tumor=arrays["tumor"], tumor_mpp=tumor_mpp, tumor_offset_um=tumor_off,
        tissue=arrays.get("tissue"), tissue_mpp=tissue_mpp, tissue_offset_um=tissue_off,
        mitosis=arrays.get("mitosis"), mitosis_mpp=mitosis_mpp, mitosis_offset_um=mitosis_off,
    )


# ---------------------------------------------------------------- graph pieces


def _bounded(arr, mpp: float, max_pixels: int, reduce: str):
    """Block-average (or majority-vote a mask) ``arr`` by the smallest integer factor that brings it under ``max_pixels``.

    The block-averaged raster keeps its top-left corner where the source's was (cell 0 covers source
    pixels ``0..f-1``), so :meth:`SlideHeatmaps.origin_um` holds for it too.
    """
    import dask.array as da  # deferred: dask loads with the first graph

    n = arr.shape[0] * arr.shape[1]
    f = max(1, math.ceil(math.sqrt(n / max_pixels)))
    if f == 1:
        return arr, mpp
    pad = [(0, (-s) % f) for s in arr.shape]
    if reduce == "mean":
        # Averaging NaN-free probabilities: padding by the edge value keeps edge cells unbiased.
        arr = da.pad(arr.astype(np.float32), pad, mode="edge")
        return da.coarsen(np.mean, arr, {0: f, 1: f}), mpp * f
    arr = da.pad(arr.astype(bool), pad, mode="constant", constant_values=False)
    return da.coarsen(np.mean, arr.astype(np.float32), {0: f, 1: f}) >= 0.5, mpp * f


def _moment_block(block, tumor, tumor_mpp, tumor_origin, heat_mpp, heat_origin, block_info=None):
    """Heatmap moments of one chunk, inside the tumor (nearest tumor pixel by chunk pixel centre)."""
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    rows = pixels_under(r1 - r0, r0, heat_mpp, heat_origin[0], tumor_mpp, tumor_origin[0], tumor.shape[0])
    cols = pixels_under(c1 - c0, c0, heat_mpp, heat_origin[1], tumor_mpp, tumor_origin[1], tumor.shape[1])
    inside = tumor[np.ix_(rows, cols)]
    return heatmap_moments(block, inside)[None, None, :]


def _n_tasks(*collections) -> int:
    keys: set = set()
    for c in collections:
        keys.update(c.__dask_graph__().keys())
    return len(keys)


# ---------------------------------------------------------------- one slide


@dataclass(frozen=True)
class SlideFeatures:
    """Features of one slide and what produced them.

    Attributes
    ----------
    features : dict of str -> float
        Named features (all finite), in dictionary order of their groups.
    groups : tuple of str
        Feature groups present (``tumor``, ``fringe``, ``mitosis_arch``, ``mitosis_bio``, ``deep_hist``).
    fringe_origins_l0 : ndarray of int64, shape (k, 2)
        Level-0 origins of the fringe patches (to be stored in the run).
    n_tasks : int
        Tasks in the slide's Dask graphs (grows with chunks, not tiles).
    """

    features: dict[str, float]
    groups: tuple[str, ...]
    fringe_origins_l0: np.ndarray
    n_tasks: int


def _detections(det: pd.DataFrame | np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    if det is None:
        return np.zeros((0, 2)), None
    if isinstance(det, pd.DataFrame):
        missing = {"x", "y"} - set(det.columns)
        if missing:
            raise FeatureError(f"detections need columns x, y (level-0 px), prob; missing {sorted(missing)}")
        xy = det[["x", "y"]].to_numpy(dtype=np.float64)
        return xy, det["prob"].to_numpy(dtype=np.float64) if "prob" in det else None
    arr = np.asarray(det, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2)), None
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise FeatureError(f"detections must be (n, 2) x, y or (n, 3) x, y, prob in level-0 px, got shape {arr.shape}")
    return arr[:, :2], (arr[:, 2] if arr.shape[1] == 3 else None)


def _tumor_and_tissue(heatmaps: SlideHeatmaps, max_pixels: int, scheduler: Any):
    """Graph 1: the tumor probabilities and the tissue mask in memory, both on the tumor raster's grid.

    Returns
    -------
    prob : ndarray of float32, shape (h, w)
        Tumor probabilities, block-averaged when the stored raster exceeds ``max_pixels``.
    tumor_mpp : float
        Their resolution in µm/px (the stored one times the block factor).
    tissue : ndarray of bool, shape (h, w), or None
        The tissue mask resampled onto ``prob``'s pixels (None when the slide has no tissue heatmap).
    n_tasks : int
        Tasks in the graph.
    """
    import dask  # deferred: dask loads with the first graph

    tumor_d, tumor_mpp = _bounded(heatmaps.tumor, heatmaps.tumor_mpp, max_pixels, "mean")
    coll = [tumor_d]
    tissue_d = None
    if heatmaps.tissue is not None:
        tissue_d, tissue_mpp = _bounded(heatmaps.tissue, heatmaps.tissue_mpp, max_pixels, "majority")
        coll.append(tissue_d)
    n_tasks = _n_tasks(*coll)
    computed = dask.compute(*coll, scheduler=scheduler)
    prob_np = np.asarray(computed[0], dtype=np.float32)
    # Every raster and point is placed in the tumor raster's frame (its pixel (0, 0) at the frame
    # origin), which is what the pure feature modules assume; results go back to level 0 at the end.
    tissue_np = None
    if tissue_d is not None:
        tissue_np = resample_onto(np.asarray(computed[1], dtype=bool), tissue_mpp, heatmaps.origin_um("tissue"),
                                  prob_np.shape, tumor_mpp, heatmaps.origin_um("tumor"))
    return prob_np, tumor_mpp, tissue_np, n_tasks


def _mitosis_moments(heatmaps: SlideHeatmaps, tumor_np: np.ndarray, tumor_mpp: float, scheduler: Any):
    """Graph 2: the mitosis heatmap's moments inside the tumor, per chunk, summed.

    Parameters
    ----------
    tumor_np : ndarray of bool, shape (h, w)
        Tumor mask at ``tumor_mpp`` µm/px, in the tumor raster's frame.

    Returns
    -------
    heat : ndarray of float64, shape (5 + HEAT_BINS,), or None
        :func:`~tupac.features.mitosis_arch.heatmap_moments`; None without a mitosis heatmap or tumor.
    n_tasks : int
        Tasks in the graph (0 when it is not built).
    """
    import dask  # deferred: dask loads with the first graph

    if heatmaps.mitosis is None or not tumor_np.any():
        return None, 0
    # The mask enters the graph once, as one key, rather than once per chunk.
    tumor_key = dask.delayed(tumor_np, pure=True)
    blocks = heatmaps.mitosis.map_blocks(
        _moment_block, tumor_key, tumor_mpp, tuple(heatmaps.origin_um("tumor")), heatmaps.mitosis_mpp,
        tuple(heatmaps.origin_um("mitosis")),
        chunks=(1, 1, 5 + HEAT_BINS), new_axis=[2], dtype=np.float64, meta=np.empty((0, 0, 0)),
    )
    total = blocks.sum(axis=(0, 1))
    n_tasks = _n_tasks(total)
    (heat,) = dask.compute(total, scheduler=scheduler)
    return heat, n_tasks


def _extent_um(tumor_shape: tuple[int, int], tumor_mpp: float, t_origin: np.ndarray, slide_mpp: float,
               slide_dimensions_l0: tuple[int, int] | None) -> tuple[float, float]:
    """``(width, height)`` in µm of the slide from the tumor frame's origin (default: the tumor raster's extent)."""
    if slide_dimensions_l0 is None:
        return (tumor_shape[1] * tumor_mpp, tumor_shape[0] * tumor_mpp)
    return (slide_dimensions_l0[0] * slide_mpp - t_origin[1], slide_dimensions_l0[1] * slide_mpp - t_origin[0])


def _origins_l0(in_frame: np.ndarray, shift_l0: np.ndarray, slide_mpp: float,
                slide_dimensions_l0: tuple[int, int] | None) -> np.ndarray:
    """Fringe patch origins moved from the tumor frame to level 0, shape (k, 2) int64 ``(x, y)`` px.

    With the slide's dimensions, origins are clipped so that a 1000 px patch at 40x stays inside.
    """
    origins = np.round(in_frame + shift_l0)
    if slide_dimensions_l0 is not None:
        hi = np.asarray(slide_dimensions_l0, dtype=np.float64) - 1000 * MPP_40X / slide_mpp
        origins = np.clip(origins, 0, np.maximum(hi, 0))
    return origins.astype(np.int64).reshape(-1, 2)


def _arch_and_fringe(heatmaps: SlideHeatmaps, tumor_np: np.ndarray, tumor_mpp: float, tissue_on_tumor: np.ndarray,
                     xy: np.ndarray, prob: np.ndarray | None, heat: np.ndarray | None, tissue_area_mm2: float,
                     slide_mpp: float, slide_dimensions_l0: tuple[int, int] | None, n_patches: int, seed: int):
    """Architectural and fringe features, computed in the tumor raster's frame.

    Parameters
    ----------
    tumor_np, tissue_on_tumor : ndarray of bool, shape (h, w)
        Tumor and tissue masks at ``tumor_mpp`` µm/px, pixel (0, 0) at the frame origin.
    xy : ndarray of float, shape (n, 2)
        Detections ``(x, y)`` in level-0 px from the slide origin; ``prob`` (n,) or None.
    heat : ndarray, shape (5 + HEAT_BINS,), or None
        Mitosis heatmap moments inside the tumor (:func:`_mitosis_moments`).

    Returns
    -------
    features : dict of str -> float
        Architectural features, then the fringe summary.
    origins : ndarray of int64, shape (k, 2)
        Fringe patch origins ``(x, y)`` in level-0 px from the slide origin.
    """
    t_origin = heatmaps.origin_um("tumor")
    shift_l0 = t_origin[::-1] / slide_mpp  # (x, y) level-0 px of the frame origin
    extent = _extent_um(tumor_np.shape, tumor_mpp, t_origin, slide_mpp, slide_dimensions_l0)
    features = arch_features(xy - shift_l0, slide_mpp, tumor_np, tumor_mpp, prob=prob, tissue_area_mm2=tissue_area_mm2,
                             heat_moments=heat, slide_extent_um=extent)
    in_frame = fringe_patches(tumor_np, tumor_mpp, slide_mpp, tissue=tissue_on_tumor, n=n_patches, seed=seed)
    features.update(fringe_summary(in_frame, tumor_np, tumor_mpp, slide_mpp))
    return features, _origins_l0(in_frame, shift_l0, slide_mpp, slide_dimensions_l0)


def _bio_features(origins: np.ndarray, xy: np.ndarray, prob: np.ndarray | None, slide_mpp: float,
                  read_patch: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """Biological features pooled over the fringe patches at level-0 ``origins`` (k, 2).

    ``xy`` (n, 2) are the detections in level-0 px and ``prob`` (n,) their probabilities, or None.
    """
    per_patch, figures = [], []
    for origin in origins:
        rgb = read_patch(origin)
        pxy, idx = detections_in_patch(xy, origin, slide_mpp)
        f, figs = patch_bio_features(rgb, pxy, None if prob is None else prob[idx], return_figures=True)
        per_patch.append(f)
        figures.append(figs)
    return slide_bio_features(per_patch, figures)


def slide_features(
    heatmaps: SlideHeatmaps, detections: pd.DataFrame | np.ndarray | None, slide_mpp: float, *,
    threshold: float = 0.5, min_region_mm2: float = 0.01, max_pixels: int = 16_000_000,
    n_patches: int = 50, seed: int = 0, read_patch: Callable[[np.ndarray], np.ndarray] | None = None,
    deep_fit: DeepHistogram | None = None, deep_vectors: np.ndarray | None = None,
    slide_dimensions_l0: tuple[int, int] | None = None, scheduler: Any = None,
) -> SlideFeatures:
    """All features of one slide.

    Parameters
    ----------
    heatmaps : SlideHeatmaps
        Lazy tumor (required), tissue and mitosis heatmaps (see :func:`open_heatmaps`).
    detections : DataFrame with ``x, y, prob`` (level-0 px), or ndarray (n, 2|3), or None
        Detected mitoses.
    slide_mpp : float
        Level-0 resolution of the slide in µm/px.
    threshold, min_region_mm2 : float
        Tumor threshold and speckle size (see :func:`tupac.features.tumor.tumor_features`).
    max_pixels : int
        Largest tumor/tissue raster brought into memory; larger ones are block-averaged.
    n_patches, seed : int
        Fringe patches wanted and the seed of their choice.
    read_patch : callable, optional
        ``read_patch(origin_l0) -> (1000, 1000, 3) uint8`` at 0.25 µm/px (e.g. a closure over
        ``SlideReader.read_region_mpp``); with it the biological features are computed on the fringe patches.
    deep_fit : DeepHistogram, optional
        Fitted on training slides; with it the ``deep_hist_*`` columns are computed from ``deep_vectors``
        (None or empty: the slide has no mitosis, all-zero histogram, flagged).
    slide_dimensions_l0 : (width, height), optional
        Keeps fringe patches inside the slide.
    scheduler : optional
        Dask scheduler (name or get function, e.g. ``ray.util.dask.ray_dask_get``); default threads.

    Returns
    -------
    SlideFeatures
    """
    scheduler = scheduler or "threads"
    xy, prob = _detections(detections)
    prob_np, tumor_mpp, tissue_np, n_tasks = _tumor_and_tissue(heatmaps, max_pixels, scheduler)
    tum, tumor_np, tissue_on_tumor = tumor_features(
        prob_np, tumor_mpp, tissue_np, None, threshold=threshold, min_region_mm2=min_region_mm2, return_mask=True,
    )
    features, groups = dict(tum), ["tumor", "fringe", "mitosis_arch"]
    heat, heat_tasks = _mitosis_moments(heatmaps, tumor_np, tumor_mpp, scheduler)
    arch_fringe, origins = _arch_and_fringe(
        heatmaps, tumor_np, tumor_mpp, tissue_on_tumor, xy, prob, heat, features["tissue_area_mm2"], slide_mpp,
        slide_dimensions_l0, n_patches, seed,
    )
    features.update(arch_fringe)
    if read_patch is not None:
        groups.append("mitosis_bio")
        features.update(_bio_features(origins, xy, prob, slide_mpp, read_patch))
    if deep_fit is not None:
        groups.append("deep_hist")
        features.update(deep_fit.features(np.zeros((0, deep_fit.dim)) if deep_vectors is None else deep_vectors))
    return SlideFeatures(features, tuple(groups), origins, n_tasks + heat_tasks)


# ---------------------------------------------------------------- the cohort


@dataclass(frozen=True)
class SlideInput:
    """What :func:`cohort_features` needs for one slide (``heatmaps``: a store path or :class:`SlideHeatmaps`)."""

    slide_id: str
    heatmaps: SlideHeatmaps | str | Path
    detections: pd.DataFrame | np.ndarray | None
    slide_mpp: float
    read_patch: Callable[[np.ndarray], np.ndarray] | None = None
    deep_vectors: np.ndarray | None = None
    slide_dimensions_l0: tuple[int, int] | None = None


@dataclass(frozen=True)
class CohortFeatures:
    """The cohort table (``slide_id`` + named columns, finite), its dictionary, and per-slide extras."""

    table: pd.DataFrame
    dictionary: pd.DataFrame
    n_tasks: dict[str, int] = field(default_factory=dict)
    fringe_origins_l0: dict[str, np.ndarray] = field(default_factory=dict)


def cohort_features(
    slides: Sequence[SlideInput],
    *,
    deep_fit: DeepHistogram | None = None,
    scheduler: Any = None,
    progress: Callable[[str], None] | None = None,
    **slide_kwargs,
) -> CohortFeatures:
    """One row of features per slide.

    Parameters
    ----------
    slides : sequence of SlideInput
    deep_fit : DeepHistogram, optional
        Fitted on the training slides only; applied to every slide.
    scheduler : optional
        Dask scheduler for every slide's graphs (default threads; ``ray_dask_get`` for Dask-on-Ray).
    progress : callable, optional
        Called with each slide id when it is done (e.g. to advance a progress bar).
    **slide_kwargs
        Passed to :func:`slide_features` (threshold, n_patches, seed, ...).

    Returns
    -------
    CohortFeatures
        ``table`` has one row per slide and no NaN/Inf; every column but ``slide_id`` is in ``dictionary``.
    """
    rows, tasks, fringes, groups_seen = [], {}, {}, None
    for s in slides:
        hm = s.heatmaps if isinstance(s.heatmaps, SlideHeatmaps) else open_heatmaps(s.heatmaps)
        r = slide_features(
            hm, s.detections, s.slide_mpp, read_patch=s.read_patch, deep_fit=deep_fit,
            deep_vectors=s.deep_vectors, slide_dimensions_l0=s.slide_dimensions_l0, scheduler=scheduler,
            **slide_kwargs,
        )
        if groups_seen is not None and r.groups != groups_seen:
            raise FeatureError(
                f"slide {s.slide_id} has feature groups {r.groups}, others {groups_seen}: give every slide a "
                "read_patch or none"
            )
        groups_seen = r.groups
        rows.append({"slide_id": s.slide_id, **r.features})
        tasks[s.slide_id], fringes[s.slide_id] = r.n_tasks, r.fringe_origins_l0
        if progress is not None:
            progress(s.slide_id)
    n_clusters = deep_fit.n_clusters if deep_fit is not None else 200
    dictionary = feature_dictionary(groups_seen or ("tumor", "fringe", "mitosis_arch"), n_clusters=n_clusters)
    columns = ["slide_id"] + dictionary["name"].tolist()
    for row in rows:
        if set(row) != set(columns):
            extra, missing = set(row) - set(columns), set(columns) - set(row)
            raise FeatureError(
                f"slide {row['slide_id']}: columns differ from the dictionary (extra {sorted(extra)[:5]}, "
                f"missing {sorted(missing)[:5]})"
            )
    table = pd.DataFrame(rows, columns=columns)
    table["slide_id"] = table["slide_id"].astype(str)
    check_finite(table, "cohort feature table")
    return CohortFeatures(table, dictionary, tasks, fringes)
