"""Per-slide and cohort feature tables, with Dask doing the heatmap reductions.

A slide's heatmaps are read lazily, one Dask task per stored Zarr chunk (``dask.array.from_array`` over a
picklable chunk reader, see :class:`ZarrReader` for why not ``from_zarr``). Two small graphs per slide:

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tupac.errors import FeatureError, FeatureFileError
from tupac.features.deep_hist import DeepHistogram
from tupac.features.dictionary import check_finite
from tupac.features.fringe import fringe_patches, fringe_summary
from tupac.features.mitosis_arch import HEAT_BINS, arch_features, heatmap_moments
from tupac.features.mitosis_bio import detections_in_patch, patch_bio_features, slide_bio_features
from tupac.features.tumor import resample_nearest, tumor_features

__all__ = ["SlideHeatmaps", "SlideInput", "SlideFeatures", "open_heatmaps", "slide_features", "cohort_features"]

_UNIT_TO_UM = {"micrometer": 1.0, "micron": 1.0, "nanometer": 1e-3, "millimeter": 1e3}


@dataclass(frozen=True)
class SlideHeatmaps:
    """Lazy heatmaps of one slide (``dask.array`` 2-D, axes y, x) and their resolutions in µm/px."""

    tumor: Any
    tumor_mpp: float
    tissue: Any = None
    tissue_mpp: float | None = None
    mitosis: Any = None
    mitosis_mpp: float | None = None

    def __post_init__(self) -> None:
        for name in ("tumor", "tissue", "mitosis"):
            arr, mpp = getattr(self, name), getattr(self, f"{name}_mpp")
            if arr is None:
                continue
            if arr.ndim != 2:
                raise FeatureError(f"{name} heatmap must be 2-D (y, x), got shape {arr.shape}")
            if mpp is None or not (math.isfinite(mpp) and mpp > 0):
                raise FeatureError(f"{name} heatmap needs a positive µm/px, got {mpp!r}")


def _dataset_scale(entry: dict, ds: dict) -> float | None:
    """µm/px of one OME-NGFF dataset (its ``scale`` transformation on y, x, in the axes' unit)."""
    unit = next((a.get("unit") for a in entry.get("axes", []) if a.get("type") == "space" and a.get("unit")), "micrometer")
    for t in ds.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            sy, sx = (float(v) for v in t["scale"][-2:])
            if not math.isclose(sy, sx, rel_tol=1e-6):
                raise ValueError(f"anisotropic scale {sy} x {sx} is not supported")
            return sx * _UNIT_TO_UM.get(str(unit).lower(), 1.0)
    return None


def _multiscales(attrs: dict) -> list:
    return attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales") or []


def _array_mpp(group, name: str) -> float | None:
    """µm/px of array ``name``: its ``mpp`` attribute, its own OME-NGFF ``multiscales`` (full
    resolution = first dataset), or the group's ``multiscales`` entry whose dataset path or name is ``name``."""
    own = dict(group[name].attrs)
    for key in ("mpp", "um_per_px"):
        if key in own:
            return float(own[key])
    for entry in _multiscales(own):
        if entry.get("datasets"):
            return _dataset_scale(entry, entry["datasets"][0])
    for entry in _multiscales(dict(group.attrs)):
        datasets = entry.get("datasets", [])
        match = [d for d in datasets if d.get("path") == name]
        if not match and entry.get("name") == name and datasets:
            match = datasets[:1]
        if match:
            return _dataset_scale(entry, match[0])
    return None


class ZarrReader:
    """A picklable, lazily opened view of one Zarr array, for ``dask.array.from_array``.

    Why not hand the ``zarr.Array`` itself to Dask (``da.from_zarr``)? Dask-on-Ray rebuilds every
    dataclass it finds in a task by calling its constructor with all of its fields, and zarr 3's
    metadata dataclass has a field its constructor does not take, so such graphs fail on Ray. This
    reader is a plain object holding the store path and array name; each worker opens the array on
    first use, and the graph carries a few strings instead of the array's metadata.
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
        import zarr

        if self._array is None:
            self._array = zarr.open_group(self.store, mode="r")[self.name]
        return np.asarray(self._array[key])


def _lazy(path: Path, group, name: str):
    import dask.array as da

    z = group[name]
    reader = ZarrReader(str(path), name, z.shape, z.dtype, z.chunks)
    return da.from_array(reader, chunks=z.chunks, name=f"zarr-{name}-{dask_token(path, name, z.shape, z.chunks)}",
                         asarray=False, fancy=False, meta=np.empty((0,) * z.ndim, dtype=z.dtype))


def dask_token(*parts) -> str:
    from dask.base import tokenize

    return tokenize(*(str(p) for p in parts))


def open_heatmaps(store_path: str | Path, *, mpp: Mapping[str, float] | None = None) -> SlideHeatmaps:
    """Open a slide's Zarr v3 heatmap group lazily.

    Parameters
    ----------
    store_path : path
        ``RUN/slides/<slide_id>.zarr``, a group holding 2-D arrays ``tumor`` (required), ``tissue`` and
        ``mitosis`` (optional).
    mpp : mapping of array name -> µm/px, optional
        Overrides; otherwise read from the array's ``mpp`` attribute or OME-NGFF ``multiscales`` scale
        (the array's own, or the group's entry naming the array).

    Returns
    -------
    SlideHeatmaps
        Dask arrays chunked as stored, one read task per stored chunk (see :class:`ZarrReader`).
    """
    import zarr

    path = Path(store_path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, OSError) as e:
        raise FeatureFileError(path, f"not a readable Zarr group: {e}") from e
    names = set(group.array_keys())
    if "tumor" not in names:
        raise FeatureFileError(path, f"has no 'tumor' array (arrays: {sorted(names)})")
    out: dict[str, Any] = {}
    for name in ("tumor", "tissue", "mitosis"):
        if name not in names:
            continue
        try:
            res = (mpp or {}).get(name) or _array_mpp(group, name)
        except (ValueError, TypeError, KeyError) as e:
            raise FeatureFileError(path / name, f"bad multiscales metadata: {e}") from e
        if res is None:
            raise FeatureFileError(path / name, "no µm/px: expected an 'mpp' attribute or OME-NGFF multiscales scale")
        arr = _lazy(path, group, name)
        if arr.ndim == 3 and arr.shape[0] == 1:  # a (c=1, y, x) layout
            arr = arr[0]
        out[name], out[f"{name}_mpp"] = arr, float(res)
    return SlideHeatmaps(**out)


# ---------------------------------------------------------------- graph pieces


def _bounded(arr, mpp: float, max_pixels: int, reduce: str):
    """Block-average (or majority-vote a mask) ``arr`` by the smallest integer factor that brings it under ``max_pixels``."""
    import dask.array as da

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


def _moment_block(block, tumor, tumor_mpp, heat_mpp, block_info=None):
    """Heatmap moments of one chunk, inside the tumor (nearest tumor pixel by chunk pixel centre)."""
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    rows = np.clip(((np.arange(r0, r1) + 0.5) * heat_mpp / tumor_mpp).astype(np.int64), 0, tumor.shape[0] - 1)
    cols = np.clip(((np.arange(c0, c1) + 0.5) * heat_mpp / tumor_mpp).astype(np.int64), 0, tumor.shape[1] - 1)
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


def slide_features(
    heatmaps: SlideHeatmaps,
    detections: pd.DataFrame | np.ndarray | None,
    slide_mpp: float,
    *,
    threshold: float = 0.5,
    min_region_mm2: float = 0.01,
    max_pixels: int = 16_000_000,
    n_patches: int = 50,
    seed: int = 0,
    read_patch: Callable[[np.ndarray], np.ndarray] | None = None,
    deep_fit: DeepHistogram | None = None,
    deep_vectors: np.ndarray | None = None,
    slide_dimensions_l0: tuple[int, int] | None = None,
    scheduler: Any = None,
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
    import dask

    scheduler = scheduler or "threads"
    xy, prob = _detections(detections)

    # Graph 1: tumor and tissue rasters, bounded in size.
    tumor_d, tumor_mpp = _bounded(heatmaps.tumor, heatmaps.tumor_mpp, max_pixels, "mean")
    coll = [tumor_d]
    tissue_d = None
    if heatmaps.tissue is not None:
        tissue_d, tissue_mpp = _bounded(heatmaps.tissue, heatmaps.tissue_mpp, max_pixels, "majority")
        coll.append(tissue_d)
    n_tasks = _n_tasks(*coll)
    computed = dask.compute(*coll, scheduler=scheduler)
    prob_np = np.asarray(computed[0], dtype=np.float32)
    tissue_np = np.asarray(computed[1], dtype=bool) if tissue_d is not None else None
    tum, tumor_np, tissue_on_tumor = tumor_features(
        prob_np, tumor_mpp, tissue_np, tissue_mpp if tissue_np is not None else None,
        threshold=threshold, min_region_mm2=min_region_mm2, return_mask=True,
    )
    features = dict(tum)
    groups = ["tumor", "fringe", "mitosis_arch"]

    # Graph 2: mitosis heatmap moments inside the tumor, per chunk, summed.
    heat = None
    if heatmaps.mitosis is not None and tumor_np.any():
        tumor_key = dask.delayed(tumor_np, pure=True)
        blocks = heatmaps.mitosis.map_blocks(
            _moment_block, tumor_key, tumor_mpp, heatmaps.mitosis_mpp,
            chunks=(1, 1, 5 + HEAT_BINS), new_axis=[2], dtype=np.float64, meta=np.empty((0, 0, 0)),
        )
        total = blocks.sum(axis=(0, 1))
        n_tasks += _n_tasks(total)
        (heat,) = dask.compute(total, scheduler=scheduler)

    tissue_area = features["tissue_area_mm2"]
    extent = (tumor_np.shape[1] * tumor_mpp, tumor_np.shape[0] * tumor_mpp)
    if slide_dimensions_l0 is not None:
        extent = (slide_dimensions_l0[0] * slide_mpp, slide_dimensions_l0[1] * slide_mpp)
    features.update(
        arch_features(xy, slide_mpp, tumor_np, tumor_mpp, prob=prob, tissue_area_mm2=tissue_area,
                      heat_moments=heat, slide_extent_um=extent)
    )

    origins = fringe_patches(tumor_np, tumor_mpp, slide_mpp, tissue=tissue_on_tumor, n=n_patches, seed=seed,
                             slide_dimensions_l0=slide_dimensions_l0)
    features.update(fringe_summary(origins, tumor_np, tumor_mpp, slide_mpp))

    if read_patch is not None:
        groups.append("mitosis_bio")
        per_patch, figures = [], []
        for origin in origins:
            rgb = read_patch(origin)
            pxy, idx = detections_in_patch(xy, origin, slide_mpp)
            f, figs = patch_bio_features(rgb, pxy, None if prob is None else prob[idx], return_figures=True)
            per_patch.append(f)
            figures.append(figs)
        features.update(slide_bio_features(per_patch, figures))
    if deep_fit is not None:
        groups.append("deep_hist")
        features.update(deep_fit.features(np.zeros((0, deep_fit.dim)) if deep_vectors is None else deep_vectors))
    return SlideFeatures(features, tuple(groups), origins, n_tasks)


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
    from tupac.features import feature_dictionary

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
