"""``tupac export-qupath``: per slide, ``RUN/qupath/<id>.tumor.geojson`` and ``<id>.mitoses.geojson``.

Import both into QuPath with *File > Import objects from file* on the slide's image: coordinates
are level-0 pixels of the slide file the run read (the commit record names it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tupac.errors import HeatmapStoreError, ReportError
from tupac.heatmaps.commit import atomic_write_bytes
from tupac.heatmaps.store import HeatmapStore
from tupac.report.geojson import (
    dumps,
    feature_collection,
    mitosis_features,
    tumor_features,
    validate_feature_collection,
)
from tupac.report.run import SlideEntry, list_slides, read_detections, slide_geometry

__all__ = ["QuPathExport", "export_slide", "export_run", "tumor_threshold", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class QuPathExport:
    """What was written for one slide.

    Attributes
    ----------
    slide_id : str
    tumor_path, mitoses_path : Path
    n_regions : int
        Tumor polygons.
    n_mitoses : int or None
        Points (None when the run has no detections table for the slide: an empty collection is written).
    threshold : float
        Tumor threshold used.
    tumor_area_um2 : float
        Sum of the polygons' areas.
    """

    slide_id: str
    tumor_path: Path
    mitoses_path: Path
    n_regions: int
    n_mitoses: int | None
    threshold: float
    tumor_area_um2: float


def tumor_threshold(record, threshold: float | None) -> float:
    """The caller's threshold, else the one the run used (commit ``extra``), else 0.5."""
    if threshold is not None:
        return float(threshold)
    extra = getattr(record, "extra", None) or {}
    for key in ("tumor_threshold", "threshold"):
        if isinstance(extra.get(key), (int, float)):
            return float(extra[key])
    return DEFAULT_THRESHOLD


def _write(path: Path, fc: dict, slide_size) -> None:
    problems = validate_feature_collection(fc, slide_size)
    if problems:  # a bug, not a user error: say which feature is wrong rather than write a bad file
        raise ReportError(path, f"would write invalid GeoJSON: {problems[0]} ({len(problems)} problem(s))")
    atomic_write_bytes(path, dumps(fc))


def export_slide(
    entry: SlideEntry,
    out_dir: str | Path,
    threshold: float | None = None,
    tolerance_um: float | None = None,
    min_area_um2: float = 0.0,
    slide_mpp: float | None = None,
    mitosis_object: str = "detection",
) -> QuPathExport:
    """Write one committed slide's tumor regions and mitoses as QuPath GeoJSON.

    Parameters
    ----------
    entry : SlideEntry
        From :func:`tupac.report.run.list_slides`.
    out_dir : path-like
        Folder for ``<id>.tumor.geojson`` and ``<id>.mitoses.geojson`` (created).
    threshold : float, optional
        Tumor probability threshold (default: the run's, see :func:`tumor_threshold`).
    tolerance_um : float, optional
        Douglas-Peucker tolerance in µm (default: half a tumor-heatmap cell).
    min_area_um2 : float
        Drop regions smaller than this.
    slide_mpp : float, optional
        Level-0 µm/px when the slide file cannot be opened (or to override its metadata).
    mitosis_object : {"detection", "annotation"}

    Raises
    ------
    ReportError
        Slide not committed, no tumor heatmap, unreadable detections or slide resolution.
    """
    if not entry.committed:
        raise ReportError(entry.store, f"slide {entry.slide_id} is not done ({entry.problem})")
    try:
        store = HeatmapStore.open(entry.store, mode="r")
        spec = store.spec("tumor")
        prob = _read_tumor(store)
    except HeatmapStoreError as e:
        raise ReportError(entry.store, f"no readable tumor heatmap: {e.problem}") from None
    mpp, size = slide_geometry(entry.record, slide_mpp)
    frame = spec.frame.on_slide(mpp, size)
    t = tumor_threshold(entry.record, threshold)
    tol = 0.5 * spec.mpp if tolerance_um is None else float(tolerance_um)
    regions = tumor_features(prob, frame, t, tol, min_area_um2)
    det = read_detections(entry.detections_csv)
    points = mitosis_features(det, mitosis_object) if det is not None else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tumor_path = out / f"{entry.slide_id}.tumor.geojson"
    mitoses_path = out / f"{entry.slide_id}.mitoses.geojson"
    _write(tumor_path, feature_collection(regions), size)
    _write(mitoses_path, feature_collection(points), size)
    area = float(sum(f["properties"]["measurements"]["area_um2"] for f in regions))
    return QuPathExport(entry.slide_id, tumor_path, mitoses_path, len(regions),
                        None if det is None else len(points), t, area)


def _read_tumor(store) -> np.ndarray:
    """The tumor heatmap as float32, read chunk by chunk (no float64 copy of the whole map)."""
    arr = store.array("tumor")
    out = np.empty(arr.shape, np.float32)
    ch = arr.chunks
    for r in range(0, arr.shape[0], ch[0]):
        out[r: r + ch[0]] = arr[r: r + ch[0], :]
    return out


def export_run(
    run_dir: str | Path,
    slide_id: str | None = None,
    out_dir: str | Path | None = None,
    on_slide=None,
    **kwargs,
) -> tuple[list[QuPathExport], list[tuple[str, str]]]:
    """Export every committed slide of a run (or one), to ``RUN/qupath`` by default.

    Parameters
    ----------
    run_dir : path-like
    slide_id : str, optional
        Only this slide (ReportError when it is not in the run or not done).
    out_dir : path-like, optional
    on_slide : callable(str), optional
        Called before each slide (progress).
    **kwargs
        Passed to :func:`export_slide`.

    Returns
    -------
    (exports, skipped)
        ``skipped`` lists ``(slide_id, reason)`` for slides that are not done.
    """
    run_dir = Path(run_dir)
    entries = list_slides(run_dir)
    if slide_id is not None:
        entries = [e for e in entries if e.slide_id == slide_id]
        if not entries:
            raise ReportError(run_dir / "slides", f"no slide {slide_id!r} in this run")
        if not entries[0].committed:
            raise ReportError(entries[0].store, f"slide {slide_id} is not done ({entries[0].problem})")
    out = Path(out_dir) if out_dir is not None else run_dir / "qupath"
    exports, skipped = [], []
    for e in entries:
        if not e.committed:
            skipped.append((e.slide_id, e.problem or "not committed"))
            continue
        if on_slide:
            on_slide(e.slide_id)
        exports.append(export_slide(e, out, **kwargs))
    return exports, skipped
