"""The features stage as a run: every committed slide of ``RUN/slides`` becomes one row of ``RUN/features.parquet``.

This drives the stage (reads the run folder, writes parquet, logs the fit to MLflow); the feature
math itself, arrays in and rows out, is :mod:`tupac.features`.

Features of a run: every committed slide of ``RUN/slides`` becomes one row of ``RUN/features.parquet``.

What is read, per slide: the heatmap store ``RUN/slides/<id>.zarr`` (only when committed: the commit
record is written last, so a store without one is an unfinished slide and is skipped, and said so),
its detections ``RUN/slides/<id>.mitoses.csv`` (``x,y,prob``, level-0 px), and the slide file (the
commit record's input path, or ``slides=`` a dataset root, slide folder or manifest) for the pixel
features. What is written::

    RUN/features.parquet                 slide_id + named columns, one row per slide, no NaN/Inf except
                                         in the row of a slide without tissue (flag ``no_tissue``)
    RUN/features/dictionary.csv          name, group, unit, description of every column
    RUN/features/qc.csv                  slide_id, qc_ood, qc_ood_reasons: the out-of-distribution check
                                         (tupac.features.ood; the flag is also the table's qc_ood column)
    RUN/features/fringe/<id>.csv         x,y,width,height (level-0 px) of the slide's fringe patches
    RUN/features/deep_hist.safetensors   standardization + k-means of the deep-descriptor histogram (+
                                         deep_hist.json: descriptor kind and width, training provenance)
    RUN/features/general/                grade network (general.safetensors + general.json) and the
                                         out-of-fold rows of the training slides (oof.parquet)
    RUN/features/summary.json            slides done / skipped (why), training / new, Dask tasks per slide
    RUN/features/mlflow.json             where the grade network's fit was logged (runs, registered version)

Tracking: a fit of the grade network (a run with labels) is logged to MLflow after every file above is
written (:mod:`tupac.tracking.general`; the run's own store, as ``tupac fit``): a store that fails
then raises FeatureTrackingError and leaves the features in place, and the numbers are the same with
or without tracking.

A slide without tissue (a blank slide, committed by the job with empty heatmaps) does not stop
the cohort: it gets a row of missing values with ``no_tissue = 1``, the fits leave it out, and the
notes name it.

Where it runs (``executor=``, :mod:`tupac.infer.cluster`): in this process by default; with a
``RayExecutor``, each slide's features are a Ray task (1 CPU) that opens its own slide, store and
models (networks loaded once per worker process) and returns its row, while its deep descriptors
and general-feature volumes stay in Ray's object store (``keep=`` of :mod:`tupac.infer.cluster`'s executors) for the
tasks that need them: the deep-histogram fit, the grade network's fit, the per-slide histogram and
general rows, and the MLflow logging. The driver reads the commit records and writes the tables; it
holds no pixels. The numbers are the same bits either way (tests/features/test_features_on_ray.py);
benchmarks/features_cluster.py measures both.

No leakage: the fits that see several slides (deep-histogram scaler and k-means; the grade network)
are fitted on the labelled training slides only, and saved; a run without labels reuses them. New
slides get features from those fits alone, so adding or removing other new slides changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tupac.data.layout import SLIDES_DIR, SLIDE_SUFFIXES
from tupac.data.manifest import from_dataset, read_manifest
from tupac.data.labels import read_labels
from tupac.errors import FeatureError, FeatureFileError, FeatureTrackingError, HeatmapStoreError
from tupac.features import check_finite, feature_dictionary
from tupac.features.aggregate import open_heatmaps, slide_features
from tupac.features.config import FeatureRunConfig
from tupac.features.deep_hist import (
    DeepHistogram,
    descriptor_of,
    descriptor_width,
    fit_deep_histogram,
    mitosis_descriptors,
)
from tupac.features.dictionary import NO_TISSUE, NO_TISSUE_FEATURE, dictionary_frame
from tupac.features.general import (
    GeneralConfig,
    check_fold_sizes,
    cross_fit,
    feature_volumes,
    general_dictionary,
    general_features,
    ids_hash,
    load_grade_net,
    save_grade_net,
    volumes_hash,
)
from tupac.geometry import MPP_40X
from tupac.heatmaps.commit import read_commit
from tupac.heatmaps.store import HeatmapStore, detections_path
from tupac.infer.cluster import LocalExecutor
from tupac.preprocess.stain import SlideStainStats, fit_slide, transform
from tupac.runlock import run_lock
from tupac.slide import open_slide
from tupac.tracking.store import resolve_tracking_uri

__all__ = ["FeatureRunConfig", "RunSlide", "RunFeatures", "discover_slides", "read_detections", "run_features"]


@dataclass(frozen=True)
class RunSlide:
    """A committed slide of a run: its store, detections table, slide file and optional µm/px override."""

    slide_id: str
    store: Path
    detections_csv: Path
    slide_path: Path
    mpp: float | None = None


@dataclass(frozen=True)
class RunFeatures:
    """What :func:`run_features` wrote and measured."""

    table: pd.DataFrame
    dictionary: pd.DataFrame
    skipped: list[tuple[str, str]]
    training: list[str]
    new: list[str]
    n_tasks: dict[str, int]
    notes: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each slide's task (by slide ID) and of the fits (``"(deep_hist fit)"``, ``"(general fit)"``),
    measured in the process that ran them (its Dask threads included)."""


# ---------------------------------------------------------------- inputs


def slide_sources(source: str | Path) -> dict[str, tuple[Path, float | None]]:
    """Slide id -> (file, µm/px override) from a manifest CSV, a TUPAC16 dataset root or a slide folder."""
    p = Path(source).expanduser()
    if p.is_file():
        entries = read_manifest(p)
    elif (p / SLIDES_DIR).is_dir():
        entries = from_dataset(p)
    elif p.is_dir():
        return {f.stem: (f.resolve(), None) for f in sorted(p.iterdir()) if f.suffix.lower() in SLIDE_SUFFIXES}
    else:
        raise FeatureFileError(p, "no such slide source (expected a manifest CSV, a dataset root or a slide folder)")
    return {e.slide_id: (e.path, e.mpp) for e in entries}


def discover_slides(run: str | Path, slides: str | Path | None = None) -> tuple[list[RunSlide], list[tuple[str, str]]]:
    """The committed slides of ``RUN/slides`` (ID order) and the skipped ones with the reason.

    Raises
    ------
    FeatureFileError
        ``RUN/slides`` is missing.
    """
    folder = Path(run) / "slides"
    if not folder.is_dir():
        raise FeatureFileError(folder, "no slides folder in the run (expected RUN/slides/<id>.zarr from `tupac infer`)")
    sources = slide_sources(slides) if slides is not None else None
    found, skipped = [], []
    for store in sorted(folder.glob("*.zarr")):
        sid = store.name[: -len(".zarr")]
        try:
            record = read_commit(store)
        except HeatmapStoreError as e:
            skipped.append((sid, e.problem))
            continue
        csv = detections_path(store)
        if not csv.is_file():
            skipped.append((sid, f"no detections table {csv.name}"))
            continue
        if sources is None:
            path, mpp = Path(record.input_path), None
        elif sid in sources:
            path, mpp = sources[sid]
        else:
            skipped.append((sid, f"not in the slide source {slides}"))
            continue
        found.append(RunSlide(sid, store, csv, path, mpp))
    return found, skipped


def read_detections(path: str | Path, min_prob: float = 0.0) -> pd.DataFrame:
    """``x, y, prob`` (float64, level-0 px) of a detections CSV with a header, rows below ``min_prob`` dropped."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise FeatureFileError(path, "empty file (expected a header x,y,prob)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise FeatureFileError(path, f"not a readable CSV: {e}") from None
    missing = {"x", "y", "prob"} - set(df.columns)
    if missing:
        raise FeatureFileError(path, f"lacks column(s) {sorted(missing)} (expected x,y,prob in level-0 px)")
    try:
        df = df[["x", "y", "prob"]].astype(np.float64)
    except (TypeError, ValueError) as e:
        raise FeatureFileError(path, f"non-numeric detections: {e}") from None
    if not np.isfinite(df.to_numpy()).all():
        raise FeatureFileError(path, "detections hold NaN or Inf")
    return df[df["prob"] >= min_prob].reset_index(drop=True)


# ---------------------------------------------------------------- models and pixels


@dataclass
class _Networks:
    mitosis: Any = None  # TrainedModel
    general: Any = None  # TrainedModel of the general features' frozen network


# Trained networks loaded by this process, by (resolved folder, weights SHA-256): a Ray worker that runs many
# slides' tasks loads each network once, and a folder whose weights changed is loaded afresh.
_TRAINED: dict[tuple[str, str], Any] = {}
_TRAINED_MAX = 4  # a long-lived worker that sees several runs' models keeps only the latest few


def _trained(model_dir: Path):
    """The :class:`~tupac.models.trained.TrainedModel` of ``model_dir``, loaded at most once per process and weights."""
    # Deferred: this pulls torch, which importing this module should not.
    from tupac.models.trained import load_trained, weights_hash

    key = (str(Path(model_dir).resolve()), weights_hash(model_dir))
    if key not in _TRAINED:
        while len(_TRAINED) >= _TRAINED_MAX:
            _TRAINED.pop(next(iter(_TRAINED)))
        _TRAINED[key] = load_trained(model_dir)
    return _TRAINED[key]


def _load_networks(models: Path | None, cfg: FeatureRunConfig, want_general: bool) -> _Networks:
    if models is None:
        return _Networks()
    nets = _Networks(mitosis=_trained(Path(models) / "mitosis"))
    if want_general:
        nets.general = nets.mitosis if cfg.general_model == "mitosis" else _trained(Path(models) / "tumor")
    return nets


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch on ``n`` threads inside the block (None: as it is). A Ray task pins its torch to its CPUs, so a
    worker running on a many-core node does not spin more threads than it was given; the forward passes of the
    features give the same bits at any thread count (tests/features/test_features_on_ray.py checks it)."""
    if n is None:
        yield
        return
    import torch  # deferred: see _trained

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _SlidePixels:
    """An open slide with its stain standardization towards a model's template (slide statistics, fitted once).

    ``preset`` maps a template's key to statistics already measured for it (the inference job's
    tumor-region statistics of the mitosis stage), so features see the pixels the detector saw.
    """

    def __init__(self, slide: RunSlide, tissue: tuple[np.ndarray, float] | None, seed: int,
                 preset: Mapping[str, Any] | None = None) -> None:
        self.reader = open_slide(slide.slide_path, mpp=slide.mpp)
        self.mpp = float(self.reader.mpp)
        self.dimensions = tuple(int(v) for v in self.reader.dimensions)
        self._tissue, self._seed, self._stats = tissue, seed, dict(preset or {})

    def standardize(self, rgb: np.ndarray, reference) -> np.ndarray:
        if reference is None:
            return rgb
        from types import SimpleNamespace

        key = reference.key
        if key not in self._stats:
            mask, mpp = self._tissue if self._tissue is not None else (np.ones((8, 8), bool), self.mpp * max(self.dimensions) / 8)
            self._stats[key] = fit_slide(self.reader, SimpleNamespace(mask=mask, mpp=mpp), method=reference.method,
                                         seed=self._seed)
        return transform(rgb, self._stats[key], reference)

    def read(self, origin_l0, size_px: int, mpp: float, reference) -> np.ndarray:
        rgb = self.reader.read_region_mpp((float(origin_l0[0]), float(origin_l0[1])), (size_px, size_px), mpp)
        return self.standardize(rgb, reference)

    def close(self) -> None:
        self.reader.close()


def fringe_detections(det: pd.DataFrame, origins_l0: np.ndarray, slide_mpp: float) -> pd.DataFrame:
    """The detections inside at least one fringe patch (1000 px at 40x from each level-0 origin ``(k, 2)``),
    in their table order: the mitoses whose descriptors the paper clusters."""
    from tupac.features.mitosis_bio import detections_in_patch  # deferred: pulls scikit-image

    xy = det[["x", "y"]].to_numpy(dtype=np.float64)
    inside = np.zeros(len(det), dtype=bool)
    for origin in np.asarray(origins_l0).reshape(-1, 2):
        inside[detections_in_patch(xy, origin, slide_mpp)[1]] = True
    return det[inside]


def _deep_vectors(px: _SlidePixels, det: pd.DataFrame, origins_l0: np.ndarray, trained, limit: int) -> np.ndarray:
    """Deep descriptors ``(n, D)`` of the detections in the fringe patches (the ``limit`` most probable).

    Each patch is the network's own input (``card.patch_size`` at ``card.mpp``: 79 px at 0.25 µm/px
    for MitosNet, whose descriptor is then 4,096 wide; see :func:`mitosis_descriptors`) centred on
    the detection. At most ``limit`` patches are held per slide (uint8, 79 x 79 x 3: 18.7 kB each); the
    network runs over them in batches of 256.
    """
    det = fringe_detections(det, origins_l0, px.mpp)
    if len(det) == 0:
        return np.zeros((0, descriptor_width(trained.model)), np.float32)
    card = trained.card
    size, mpp = int(card.patch_size), float(card.mpp)
    top = det.sort_values("prob", ascending=False, kind="stable").iloc[:limit]
    half_l0 = size / 2 * mpp / px.mpp
    patches = np.stack([px.read((x - half_l0, y - half_l0), size, mpp, trained.reference)
                        for x, y in top[["x", "y"]].to_numpy()])
    return mitosis_descriptors(trained.model, patches)


def _general_patch_px(card, cfg: FeatureRunConfig) -> int:
    """Side of the general features' patches: ``general_px`` for fully convolutional networks, else the card's."""
    return max(cfg.general_px, int(card.patch_size)) if card.fully_convolutional else int(card.patch_size)


def _general_volumes(px: _SlidePixels, origins: np.ndarray, tissue_centre_l0, trained, cfg: FeatureRunConfig) -> np.ndarray:
    """Frozen-network feature volumes of patches centred on the first fringe patches (or the tissue centre)."""
    card = trained.card
    size = _general_patch_px(card, cfg)
    centres = origins[: cfg.general_patches] + 1000 * MPP_40X / px.mpp / 2
    if len(centres) == 0:
        centres = np.asarray([tissue_centre_l0], dtype=np.float64)
    half_l0 = size / 2 * card.mpp / px.mpp
    patches = np.stack([px.read(c - half_l0, size, card.mpp, trained.reference) for c in centres])
    return feature_volumes(trained.model, patches)


# ---------------------------------------------------------------- per slide


@dataclass
class _SlideResult:
    features: dict[str, float]
    groups: tuple[str, ...]
    origins: np.ndarray
    n_tasks: int
    slide_mpp: float
    deep: np.ndarray | None = None
    volumes: np.ndarray | None = None
    cpu_s: float = 0.0  # CPU seconds of the process that computed it (its Dask threads included)


def _tissue_of(store_path: Path) -> tuple[np.ndarray, float] | None:
    store = HeatmapStore.open(store_path, mode="r")
    if "tissue" not in store.names:
        return None
    return store.read("tissue").astype(bool), store.mpp("tissue")


def _mitosis_stats_of(store_path: Path, trained) -> dict[str, Any]:
    """The mitosis stage's stain statistics recorded in the slide's commit (tumor regions), keyed by
    the mitosis template; empty when the job recorded none (no tumor, or an older run)."""
    if trained is None or trained.reference is None:
        return {}
    recorded = read_commit(store_path).extra.get("mitosis_stain_stats")
    if not recorded or recorded.get("method") != trained.reference.method:
        return {}
    return {trained.reference.key: SlideStainStats.from_dict(recorded)}


def _one_slide(slide: RunSlide, cfg: FeatureRunConfig, nets: _Networks, want_general: bool, scheduler) -> _SlideResult:
    det = read_detections(slide.detections_csv, cfg.min_prob)
    hm = open_heatmaps(slide.store)
    kw = dict(threshold=cfg.threshold, min_region_mm2=cfg.min_region_mm2, n_patches=cfg.n_patches, seed=cfg.seed, scheduler=scheduler)
    if not cfg.pixels:
        if slide.mpp is None:
            raise FeatureError(f"{slide.slide_id}: without reading the slide its µm/px must come from a manifest")
        r = slide_features(hm, det, slide.mpp, **kw)
        return _SlideResult(r.features, r.groups, r.fringe_origins_l0, r.n_tasks, slide.mpp)
    if not slide.slide_path.is_file():
        raise FeatureFileError(slide.slide_path, f"slide file of {slide.slide_id} not found (pass --slides, or --no-pixels)")
    tissue = _tissue_of(slide.store)
    px = _SlidePixels(slide, tissue, cfg.seed, _mitosis_stats_of(slide.store, nets.mitosis))
    try:
        ref = nets.mitosis.reference if nets.mitosis is not None else None
        r = slide_features(hm, det, px.mpp, read_patch=lambda o: px.read(o, 1000, MPP_40X, ref),
                           slide_dimensions_l0=px.dimensions, **kw)
        res = _SlideResult(r.features, r.groups, r.fringe_origins_l0, r.n_tasks, px.mpp)
        if nets.mitosis is not None:
            res.deep = _deep_vectors(px, det, r.fringe_origins_l0, nets.mitosis, cfg.max_deep_per_slide)
        if want_general and nets.general is not None:
            centre = _tissue_centre_l0(tissue, px)
            res.volumes = _general_volumes(px, r.fringe_origins_l0, centre, nets.general, cfg)
    finally:
        px.close()
    return res


def _tissue_centre_l0(tissue: tuple[np.ndarray, float] | None, px: _SlidePixels) -> np.ndarray:
    if tissue is not None and tissue[0].any():
        rc = np.argwhere(tissue[0]).mean(axis=0)
        return (rc[::-1] + 0.5) * tissue[1] / px.mpp
    return np.asarray(px.dimensions, dtype=np.float64) / 2


# ---------------------------------------------------------------- tasks
#
# The stage's work as top-level functions of (paths, configs, small values, arrays handed on by the executor):
# run_features hands them to an executor (tupac.infer.cluster), in this process or as Ray tasks, and they
# compute the same numbers either way. Each opens the files it needs itself (the slide, its store, the
# models folder), so the driver holds no pixels; each returns its small result first and its heavy arrays
# after it, which the executor may keep where they were made (``keep=``, tupac.infer.cluster).

SLIDE_CPUS = 1
"""CPUs a slide's features task asks for (its torch runs on as many threads when it runs as a Ray task)."""


def _slide_task(slide: RunSlide, cfg: FeatureRunConfig, models: Path | None, want_general: bool, scheduler: Any,
                threads: int | None) -> tuple[_SlideResult, np.ndarray | None, np.ndarray | None]:
    """One slide's features: ``(result without arrays, deep descriptors, general volumes)``.

    Returns
    -------
    _SlideResult
        The slide's feature row (every group but ``deep_hist`` and ``general``), fringe origins
        ``(k, 2)`` level-0 px, Dask task count, µm/px, and ``cpu_s`` (this process's CPU seconds on it).
    ndarray of float32, shape (n, D), or None
        Deep descriptors of the detections in the fringe patches (n <= ``max_deep_per_slide``, D = 4,096
        for MitosNet); None without a mitosis network or pixels.
    ndarray of float32, shape (general_patches, C, h, w), or None
        The frozen network's feature volumes; None unless the general features are wanted.
    """
    t0 = time.process_time()
    with _torch_threads(threads):
        nets = _load_networks(models, cfg, want_general)
        r = _one_slide(slide, cfg, nets, want_general, scheduler)
    deep, volumes = r.deep, r.volumes
    r.deep = r.volumes = None
    r.cpu_s = time.process_time() - t0
    return r, deep, volumes


def _deep_fit_task(models: Path, cfg: FeatureRunConfig, out: Path, training: list[str], threads: int | None,
                   *train_deep: np.ndarray) -> tuple[dict[str, Any], DeepHistogram | None]:
    """Fit the deep histogram on the training slides' descriptors (``train_deep``, one ``(n_i, D)`` array per
    slide of ``training``, in that order) and save it in ``out``, or load the saved fit when ``training`` is
    empty: ``({"n_clusters", "notes", "cpu_s"}, fit or None)``."""
    t0 = time.process_time()
    notes: list[str] = []
    with _torch_threads(threads):
        fit = _deep_fit(dict(zip(training, train_deep, strict=True)), training, out, _trained(Path(models) / "mitosis"),
                        cfg, notes)
    info = {"n_clusters": fit.n_clusters if fit is not None else None, "notes": notes,
            "cpu_s": time.process_time() - t0}
    return info, fit


def _deep_rows_task(fit: DeepHistogram, deep: np.ndarray) -> dict[str, float]:
    """One slide's ``deep_hist_*`` columns from its descriptors ``(n, D)``."""
    return fit.features(deep)


def _general_fit_task(models: Path, cfg: FeatureRunConfig, out: Path, training: list[str], grades: np.ndarray,
                      track: bool, threads: int | None, *train_volumes: np.ndarray
                      ) -> tuple[dict[str, Any], _GeneralFit | None, Any]:
    """Cross-fit the grade network on the training slides' volumes (one ``(P, C, h, w)`` array per slide of
    ``training``) and save it in ``out``: ``({"rows", "notes", "cpu_s"}, fit for tracking or None, network)``;
    ``rows`` maps each training slide to its out-of-fold row ``(1027,)`` float64."""
    t0 = time.process_time()
    with _torch_threads(threads):
        general = _trained(Path(models) / ("mitosis" if cfg.general_model == "mitosis" else "tumor"))
        rows, net, fit, note = _general_fit([_writable(v) for v in train_volumes], training, grades, out, general,
                                            cfg, track)
    info = {"rows": rows, "notes": [note], "cpu_s": time.process_time() - t0, "tracked": fit is not None}
    return info, fit, net


def _general_load_task(models: Path, cfg: FeatureRunConfig, out: Path, ids: list[str]
                       ) -> tuple[dict[str, Any], None, Any]:
    """The saved grade network of ``out`` (checked against the frozen network of ``models``) and the saved
    out-of-fold rows of those of ``ids`` that were its training slides: ``({"rows", "notes", "cpu_s"}, None, net)``."""
    t0 = time.process_time()
    general = _trained(Path(models) / ("mitosis" if cfg.general_model == "mitosis" else "tumor"))
    net, meta = load_grade_net(out)
    if meta.get("model_sha256") != general.weights_sha256:
        raise FeatureFileError(out / "general.json", "was fitted on another frozen network; rerun with --labels")
    oof = pd.read_parquet(out / "oof.parquet")
    rows = {s: oof.loc[s].to_numpy(np.float64) for s in ids if s in oof.index}
    note = (f"general: reused the grade network of {len(meta.get('train_ids', []))} training slides "
            f"(their out-of-fold rows for {len(rows)} of them)")
    return {"rows": rows, "notes": [note], "cpu_s": time.process_time() - t0, "tracked": False}, None, net


def _general_rows_task(net: Any, volumes: np.ndarray) -> np.ndarray:
    """One slide's general-feature row ``(1027,)`` float64 from its volumes ``(P, C, h, w)`` (a slide's row
    depends on that slide and the network alone, so slides may be computed anywhere, in any order)."""
    return general_features(net, [_writable(volumes)])[0]


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, copied only when read-only: an array from Ray's object store is a read-only view of shared memory,
    and torch warns on every ``from_numpy`` of one (nothing here writes to it; the copy keeps torch quiet)."""
    return np.require(a, requirements="W")


def _track_task(run: Path, fit: _GeneralFit, tracking_uri: str | None) -> tuple[Path, str]:
    """Log the grade network's fit to MLflow (see :func:`_track_general`): ``(mlflow.json path, note)``."""
    notes: list[str] = []
    path = _track_general(run, fit, tracking_uri, notes)
    return path, notes[0]


# ---------------------------------------------------------------- fits shared by slides


def _deep_fit(vecs: Mapping[str, np.ndarray], training: list[str], out: Path, mitosis,
              cfg: FeatureRunConfig, notes: list[str]) -> DeepHistogram | None:
    """Fit (training slides' descriptors ``vecs``) or load the deep histogram of ``mitosis`` (a TrainedModel)."""
    if training:
        desc = descriptor_of(mitosis.model)
        n_vec = sum(len(v) for v in vecs.values())
        k = min(cfg.n_clusters, n_vec)
        if k < 2:
            raise FeatureError(f"the training slides hold {n_vec} detected mitoses in their fringe patches; the deep "
                               "histogram needs at least 2")
        if k < cfg.n_clusters:
            notes.append(f"deep_hist: {n_vec} training vectors, so {k} clusters instead of {cfg.n_clusters}")
        fit = fit_deep_histogram(vecs, n_clusters=k, seed=cfg.seed)
        fit = DeepHistogram(fit.mean, fit.scale, fit.centers,
                            dict(fit.meta, model_sha256=mitosis.weights_sha256, descriptor=desc.kind,
                                 descriptor_text=desc.text, mitoses_from="fringe patches"))
        fit.save(out)
        if fit.dim != 4096:
            notes.append(f"deep_hist: {desc.kind} descriptors are {fit.dim} wide (4,096 only for MitosNet)")
        return fit
    if not (out / "deep_hist.json").is_file():
        notes.append(f"deep_hist: not computed (no --labels to fit it on, and no saved fit in {out})")
        return None
    fit = DeepHistogram.load(out)
    if fit.meta.get("model_sha256") != mitosis.weights_sha256:
        raise FeatureFileError(out / "deep_hist.json", "was fitted with another mitosis network; rerun with --labels")
    notes.append(f"deep_hist: reused the fit of {fit.meta.get('n_train_slides')} training slides")
    return fit


@dataclass
class _GeneralFit:
    """A fresh cross-fit of the grade network, with what :func:`tupac.tracking.general.log_general_fit` needs."""

    cf: Any
    record: Any
    params: dict
    meta: dict
    training: list[str]
    grades: np.ndarray
    net_dir: Path


def _general_fit(train_volumes: list[np.ndarray], training: list[str], grades: np.ndarray, out: Path, general,
                 cfg: FeatureRunConfig, track: bool) -> tuple[dict[str, np.ndarray], Any, _GeneralFit | None, str]:
    """Cross-fit the grade network on the training slides (frozen network ``general``, a TrainedModel), save it
    and the out-of-fold rows in ``out``: ``(out-of-fold row per training slide, the all-slides network, the fit
    for tracking or None, note)``. New slides' rows come from that network, one slide at a time
    (:func:`_general_rows_task`), exactly what :func:`~tupac.features.general.cross_fit` would give them."""
    gcfg = GeneralConfig(epochs=cfg.general_epochs, seed=cfg.seed)
    record = None
    if track:
        # deferred: tupac.tracking.general imports tupac.train, hence torch (~1 s); only a tracked fit needs it
        from tupac.tracking.general import GeneralFitRecord

        record = GeneralFitRecord()
    cf = cross_fit(train_volumes, grades, [], n_splits=cfg.n_splits, config=gcfg, tracker_for=record)
    meta = {"model": cfg.general_model, "model_sha256": general.weights_sha256, "seed": cfg.seed,
            "n_splits": cfg.n_splits, "epochs": gcfg.epochs, "train_ids": training,
            "train_ids_sha256": ids_hash(training), "folds": cf.folds.tolist(),
            "general_px": cfg.general_px, "general_patches": cfg.general_patches}
    save_grade_net(cf.net, out, meta)
    oof = pd.DataFrame(cf.train, index=pd.Index(training, name="slide_id"))
    oof.columns = [str(c) for c in oof.columns]
    oof.to_parquet(out / "oof.parquet")
    note = f"general: grade network cross-fitted on {len(training)} training slides ({cfg.n_splits} folds)"
    fit = None
    if record is not None:
        from tupac.tracking.general import fit_params  # deferred: imports torch (see GeneralFitRecord above)

        card = general.card
        params = fit_params(gcfg, in_channels=int(train_volumes[0].shape[1]), frozen_model=cfg.general_model,
                            frozen_arch=card.architecture, frozen_sha256=general.weights_sha256,
                            n_patches=cfg.general_patches, patch_px=_general_patch_px(card, cfg),
                            n_splits=cfg.n_splits, train_ids=training, folds=cf.folds,
                            volumes_sha256=volumes_hash(train_volumes))
        fit = _GeneralFit(cf, record, params, meta, training, grades, out)
    return dict(zip(training, cf.train)), cf.net, fit, note


def _track_general(run: Path, fit: _GeneralFit, tracking_uri: str | None, notes: list[str]) -> Path:
    """Log the fit to MLflow and write ``RUN/features/mlflow.json``; any failure becomes FeatureTrackingError
    (the features are written by then, and the message says so)."""
    from tupac.tracking.general import log_general_fit  # deferred: imports torch (see _general_fit)

    uri = tracking_uri or resolve_tracking_uri(run)
    try:
        tracked = log_general_fit(run, fit.cf, fit.record, train_ids=fit.training, grades=fit.grades,
                                  params=fit.params, meta=fit.meta, net_dir=fit.net_dir, tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 - whatever the store raised, the features are safe and must be said so
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FeatureTrackingError(
            f"MLflow tracking of the grade network in {uri} failed ({type(e).__name__}: {first[:300]}); the features "
            f"are written ({run / 'features.parquet'}, grade network in {fit.net_dir})") from e
    path = run / "features" / "mlflow.json"
    path.write_text(json.dumps(tracked.to_dict(), indent=2) + "\n")
    notes.append(f"general: MLflow run {tracked.parent_run_id} in {tracked.tracking_uri}; "
                 f"registered tupac-general-grade version {tracked.registered_version}")
    return path


# ---------------------------------------------------------------- the run


def _labels(path: Path | None, ids: list[str], cohort: set[str], cohort_name: str
            ) -> tuple[list[str], np.ndarray, list[str]]:
    """Training slides (label-file order, with a store and a grade) and their grades; labelled slides
    without a store.

    ``path`` is either labels format (:func:`tupac.data.labels.read_labels`); a by-ID file must name
    only slides of ``cohort``. Slides with an RNA score and no grade are not training slides: every fit
    here (deep-feature clusters, grade network) is a grade fit or its preparation.
    """
    if path is None:
        return [], np.zeros(0, np.int64), []

    lab = read_labels(path, cohort=cohort, cohort_name=cohort_name, need=("grade",))
    lab = lab[lab["mitosis_score"].notna()]
    have = set(ids)
    keep = lab[lab["slide_id"].isin(have)]
    absent = [s for s in lab["slide_id"] if s not in have]
    return keep["slide_id"].tolist(), keep["mitosis_score"].to_numpy(np.int64), absent


def _cohort_ids(run: Path, slides: str | Path | None, stored: list[str]) -> tuple[set[str], str]:
    """The slides a labels file may name: the run's stores, and the slide source's slides when one is
    given (a slide that failed inference is still part of the cohort); with the phrase for messages."""
    where = f"the run {run / 'slides'}"
    if slides is None:
        return set(stored), where
    return set(stored) | set(slide_sources(slides)), f"{where} or the slide source {slides}"


def _atomic_parquet(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_fringe(folder: Path, results: Mapping[str, _SlideResult]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for sid, r in results.items():
        side = 1000 * MPP_40X / r.slide_mpp
        df = pd.DataFrame(r.origins.reshape(-1, 2), columns=["x", "y"]).assign(width=side, height=side)
        df.to_csv(folder / f"{sid}.csv", index=False)


def _table(results: Mapping[str, _SlideResult], groups: tuple[str, ...], n_clusters: int, ids: list[str],
           blank: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cohort table (``slide_id``, ``no_tissue``, then the groups' columns; rows in ``ids`` order)
    and its dictionary. Slides in ``blank`` get NaN everywhere but their flag; the others must be finite."""
    dictionary = feature_dictionary(groups, n_clusters=n_clusters)
    names = dictionary["name"].tolist()
    for sid, r in results.items():
        if set(r.features) != set(names):
            extra, missing = set(r.features) - set(names), set(names) - set(r.features)
            raise FeatureError(f"slide {sid}: columns differ from the dictionary (extra {sorted(extra)[:5]}, "
                               f"missing {sorted(missing)[:5]})")
    missing_row = [np.nan] * len(names)
    rows = [[results[sid].features[n] for n in names] if sid in results else missing_row for sid in ids]
    table = pd.DataFrame(rows, columns=names, dtype=np.float64)
    blank_set = set(blank)
    flag = pd.Series([float(sid in blank_set) for sid in ids], dtype=np.float64)
    check_finite(table[flag.to_numpy() == 0], "cohort feature table")
    table.insert(0, NO_TISSUE, flag)
    table.insert(0, "slide_id", pd.Series(ids, dtype=object))
    dictionary = pd.concat([dictionary_frame([NO_TISSUE_FEATURE]), dictionary], ignore_index=True)
    return table, dictionary


def _with_qc(table: pd.DataFrame, dictionary: pd.DataFrame, found: list[RunSlide], blank: list[str]
             ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The table and dictionary with the out-of-distribution flag ``qc_ood`` from the commit records
    (:mod:`tupac.features.ood`), and the QC table (flag and reasons) for ``features/qc.csv``."""
    from tupac.features.ood import QC_OOD, qc_dictionary, qc_frame

    verdicts = {s.slide_id: read_commit(s.store).extra.get("ood") for s in found}
    qc = qc_frame(verdicts, table["slide_id"].tolist(), blank)
    table = table.assign(**{QC_OOD: qc[QC_OOD].to_numpy()})
    dictionary = pd.concat([dictionary, dictionary_frame(qc_dictionary())], ignore_index=True)
    return table, dictionary, qc


def _has_no_tissue(store_path: Path) -> bool:
    """Whether the job found no tissue on the slide: its commit says so, or, for a record written
    before the job said it, its tissue mask is empty."""
    said = read_commit(store_path).extra.get("no_tissue")
    if said is not None:
        return bool(said)
    tissue = _tissue_of(store_path)
    return tissue is not None and not tissue[0].any()


def _some(ids: list[str], n: int = 5) -> str:
    """At most ``n`` IDs, comma-separated, with an ellipsis when there are more."""
    return ", ".join(ids[:n]) + (" ..." if len(ids) > n else "")


def run_features(
    run: str | Path,
    *,
    labels: str | Path | None = None,
    slides: str | Path | None = None,
    models: str | Path | None = None,
    config: FeatureRunConfig = FeatureRunConfig(),
    scheduler: Any = None,
    progress: Callable[[str, str], None] | None = None,
    track: bool = True,
    tracking_uri: str | None = None,
    executor: Any = None,
) -> RunFeatures:
    """Compute and write the feature table of a run (see the module docstring for the files).

    Parameters
    ----------
    run : path
        The run folder (``RUN/slides/<id>.zarr`` + ``<id>.mitoses.csv``).
    labels : path, optional
        Labels by slide ID (``slide_id,grade[,rna]``) or TUPAC16's ``training_ground_truth.csv``
        (:func:`tupac.data.labels.read_labels`): its slides with a grade are the training slides (fits see
        only them). A by-ID file naming a slide that is neither in the run nor in ``slides`` is an error.
    slides : path, optional
        Where the slide files are (manifest CSV, dataset root or slide folder); default the commit records' paths.
    models : path, optional
        ``MODELS`` with ``mitosis`` (and ``tumor`` for ``general_model="tumor"``): stain template of the
        patches, deep and general features.
    config : FeatureRunConfig
    scheduler : optional
        Dask scheduler of the per-slide heatmap graphs; default Dask's threaded scheduler, in the
        process that computes the slide (with a ``RayExecutor``: inside the slide's task).
        ``ray.util.dask.ray_dask_get`` (Dask-on-Ray) makes every chunk of those graphs a nested Ray task:
        the same numbers, but 2.5x the stage's wall time on an 8-slide phantom run with 2 CPUs
        (benchmarks/features_cluster.py), since a slide's chunks are small (a heatmap tile each) and each
        nested task waits for a CPU held by the slide tasks; the slide is the unit of parallelism, so the
        default keeps its reductions local.
    progress : callable(slide_id, stage), optional
        Called with ``(slide_id, "done")`` after each slide, then ``("", stage)`` for the cohort fits.
    track : bool
        Log a fit of the grade network to MLflow (parent run, a nested run per fit, the
        all-training-slides network registered as ``tupac-general-grade``); see the module docstring.
    tracking_uri : str, optional
        The MLflow store; default ``MLFLOW_TRACKING_URI``, else ``RUN/mlflow.db`` (as ``tupac fit``).
    executor : LocalExecutor or RayExecutor, optional
        Where the work runs (:mod:`tupac.infer.cluster`); default this process, one slide after another.
        A connected ``RayExecutor`` runs each slide's features as a Ray task (1 CPU; it reads the slide's
        pixels, its store and the models itself), the deep-histogram fit, the grade network's fit and the
        MLflow logging as tasks of their own, and the per-slide deep-histogram and general rows as tasks fed
        from the object store: this process reads only the run's commit records and writes the tables.
        The features are the same numbers either way (tests/features/test_features_on_ray.py).

    Returns
    -------
    RunFeatures

    Raises
    ------
    FeatureTrackingError
        Tracking failed after every output was written.
    RunFolderBusyError
        Another job holds the run folder (:func:`tupac.runlock.run_lock`).
    """
    with run_lock(run, "tupac features", create=False):
        return _run_features_locked(Path(run), labels, slides, models, config, scheduler, progress, track,
                                    tracking_uri, executor)


def _run_features_locked(run: Path, labels, slides, models, config: FeatureRunConfig, scheduler, progress, track: bool,
                         tracking_uri: str | None, executor) -> RunFeatures:
    tick = progress or (lambda _s, _m: None)
    found, skipped = discover_slides(run, slides)
    if not found:
        why = "; ".join(f"{s}: {w}" for s, w in skipped[:3]) or "no stores"
        raise FeatureFileError(run / "slides", f"no committed slide with detections ({why})")
    ids = [s.slide_id for s in found]
    blank = [s.slide_id for s in found if _has_no_tissue(s.store)]
    blank_set = set(blank)
    if len(blank) == len(found):
        raise FeatureError(f"{run / 'slides'}: no committed slide has tissue ({_some(blank)} are blank)")
    cohort, cohort_name = _cohort_ids(run, slides, ids + [sid for sid, _ in skipped])
    training, grades, absent = _labels(Path(labels) if labels else None, ids, cohort, cohort_name)
    if labels and not training:
        raise FeatureError(f"{labels}: none of its slides has a committed store in {run / 'slides'}")
    with_tissue = [i for i, sid in enumerate(training) if sid not in blank_set]
    training, grades = [training[i] for i in with_tissue], grades[with_tissue]
    if labels and not training:
        raise FeatureError(f"{labels}: every labelled slide in {run / 'slides'} has no tissue ({_some(blank)})")
    out = run / "features"
    notes = [f"labelled but not in the run: {_some(absent)}"] if absent else []
    if blank:
        notes.append(f"no tissue: {_some(blank)}: a row of missing values flagged {NO_TISSUE}, left out of every fit")
    general_dir = out / "general"
    want_general = config.general
    if want_general is None:
        want_general = models is not None and config.pixels and (bool(training) or (general_dir / "general.json").is_file())
    if want_general and (models is None or not config.pixels):
        raise FeatureError("general features need --models (the frozen network) and the slide pixels")
    if want_general and training:
        # Before any slide is read: a split that cannot be made must not cost the cohort's features first.
        notes += check_fold_sizes(grades, config.n_splits, f"{labels}")
    models = Path(models) if models else None
    ex = executor if executor is not None else LocalExecutor()
    # A Ray task's torch gets as many threads as the task has CPUs; in this process torch keeps its own setting.
    threads = SLIDE_CPUS if getattr(ex, "where", "local") != "local" else None

    for sid in blank:
        tick(sid, "done")
    todo = [s for s in found if s.slide_id not in blank_set]
    made = ex.map(_slide_task, [(s, config, models, want_general, scheduler, threads) for s in todo],
                  keep=2, num_cpus=SLIDE_CPUS, name="features-slide",
                  on_done=lambda i, _r: tick(todo[i].slide_id, "done"))
    # Slide order (ID order, as discover_slides gives): the tables and the fits' inputs do not depend on
    # the order in which the tasks finished.
    results: dict[str, _SlideResult] = {s.slide_id: r for s, (r, _) in zip(todo, made)}
    deep = {s.slide_id: h[0] for s, (_, h) in zip(todo, made)}
    volumes = {s.slide_id: h[1] for s, (_, h) in zip(todo, made)}
    cpu_s = {sid: r.cpu_s for sid, r in results.items()}
    out.mkdir(parents=True, exist_ok=True)
    groups = next(iter(results.values())).groups
    n_clusters = config.n_clusters
    fitted_deep = False
    if models is None or not config.pixels:
        notes.append("deep_hist: not computed (needs --models with a mitosis network and the slide pixels)")
    else:
        info, (fit,) = ex.call(_deep_fit_task, models, config, out, training, threads,
                               *[deep[s] for s in training], keep=1, name="features-deep-hist-fit")
        notes += info["notes"]
        cpu_s["(deep_hist fit)"] = info["cpu_s"]
        if info["n_clusters"] is not None:
            fitted_deep = True
            tick("", "deep-feature histograms")
            groups += ("deep_hist",)
            n_clusters = info["n_clusters"]
            rows = ex.map(_deep_rows_task, [(fit, deep[sid]) for sid in results], name="features-deep-hist-rows")
            for r, row in zip(results.values(), rows):
                r.features.update(row)
    general_fit = None
    if want_general:
        tick("", "general features (grade network)")
        if training:
            info, (general_fit, net) = ex.call(_general_fit_task, models, config, general_dir, training,
                                               grades, track, threads, *[volumes[s] for s in training],
                                               keep=2, name="features-general-fit")
        else:
            info, (general_fit, net) = ex.call(_general_load_task, models, config, general_dir, list(results),
                                               keep=2, name="features-general-load")
        notes += info["notes"]
        cpu_s["(general fit)"] = info["cpu_s"]
        if not info["tracked"]:
            general_fit = None  # on Ray a handle is never None: the task says whether it made a fit to log
        rows = dict(info["rows"])
        fresh = [s for s in results if s not in rows]
        rows.update(zip(fresh, ex.map(_general_rows_task, [(net, volumes[s]) for s in fresh],
                                      name="features-general-rows")))
        names = [f.name for f in general_dictionary()]
        for sid, r in results.items():
            r.features.update(zip(names, rows[sid].tolist()))
        groups += ("general",)
    table, dictionary = _table(results, groups, n_clusters, ids, blank)
    table, dictionary, qc = _with_qc(table, dictionary, found, blank)
    _atomic_parquet(table, run / "features.parquet")
    dictionary.to_csv(out / "dictionary.csv", index=False)
    qc.to_csv(out / "qc.csv", index=False)
    _write_fringe(out / "fringe", results)
    n_tasks = {sid: r.n_tasks for sid, r in results.items()}
    new = [s for s in ids if s not in set(training)]
    summary = {"slides": ids, "skipped": [{"slide_id": s, "reason": w} for s, w in skipped], "no_tissue": blank,
               "ood": [{"slide_id": r.slide_id, "reasons": r.qc_ood_reasons} for r in qc[qc["qc_ood"] > 0].itertuples()],
               "training": training,
               "new": new, "groups": list(groups), "n_clusters": n_clusters if fitted_deep else None,
               "dask_tasks": n_tasks, "notes": notes, "config": config.__dict__}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    paths = {"table": run / "features.parquet", "dictionary": out / "dictionary.csv", "folder": out}
    if want_general and training:
        # A new fit: an earlier fit's record no longer describes the saved network (rewritten below if tracked).
        (out / "mlflow.json").unlink(missing_ok=True)
    if general_fit is not None:
        tick("", "MLflow: grade network runs")
        paths["mlflow"], note = ex.call(_track_task, run, general_fit, tracking_uri or resolve_tracking_uri(run),
                                        name="features-mlflow")
        notes.append(note)
    return RunFeatures(table, dictionary, skipped, training, new, n_tasks, notes, paths, cpu_s)

