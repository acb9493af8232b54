"""Per-slide steps of cohort inference that run as Ray tasks (not in the driver).

Everything here opens the slide or the store itself, so a native crash while decoding (a
segfault in a reader) kills a Ray worker, which Ray reports as a failed task, never the driver.

1. :func:`prepare_slide`: open the slide, tissue mask (thumbnail), stain statistics per stain
   method the models need, create the store (``tissue``, ``tumor``, ``mitosis``), write the
   tissue mask, and return the tumor windows (those with tissue) as coordinates.
2. :func:`tumor_regions`: after every tumor window is stored, threshold the tumor heatmap on the
   tissue grid (model threshold, inside tissue) and return the 40x mitosis windows that overlap
   a tumor region, with the stain statistics of those regions for the mitosis stage.
3. :func:`finalize_slide`: detections from the mitosis heatmap, chunk by chunk with a halo
   (exactly what :func:`tupac.mitosis.detect.detect_from_heatmap` gives on the whole heatmap),
   the detections CSV, then the commit record, last.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from typing import Any, Mapping

import numpy as np
import pandas as pd

from tupac.errors import ResolutionError, TupacError
from tupac.heatmaps.commit import atomic_write_bytes
from tupac.heatmaps.prepare import CardInfo, SlidePlan, plan_slide
from tupac.heatmaps.store import HeatmapStore, detections_path
from tupac.heatmaps.windows import window_tissue
from tupac.mitosis.detect import detect_from_heatmap, nms
from tupac.mitosis.scoring import TUPAC_RADIUS_PX
from tupac.preprocess import stain
from tupac.preprocess.tissue import TissueMask, slide_tissue_mask
from tupac.slide import open_slide
from tupac.slide.resample import MPP_TOLERANCE
from tupac.tumor.regions import heatmap_on_grid

__all__ = ["prepare_slide", "tumor_regions", "finalize_slide", "detect_windowed", "call_safely", "error_line",
           "maybe_inject_fault"]

FAULT_ENV = "TUPAC_INFER_FAULT"
"""Fault injection for the reliability tests: ``segfault:<slide_id>:<stage>`` makes the worker
that handles that slide at that stage (``prepare``, ``tumor``, ``mitosis``) die by SIGSEGV, the
way a crashing native decoder would. Unset in normal runs."""


def maybe_inject_fault(slide_id: str, stage: str) -> None:
    """Crash this process if :data:`FAULT_ENV` asks for it (tests only)."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec and spec == f"segfault:{slide_id}:{stage}":
        ctypes.string_at(0)  # reads address 0: SIGSEGV, exactly what a native decoder crash looks like


def error_line(e: BaseException, path: Any = None) -> str:
    """One line naming the file and the problem (tupac errors already do; others get the path)."""
    text = (str(e).strip().splitlines() or [""])[0][:500]
    if isinstance(e, TupacError):
        return text
    where = f"{path}: " if path is not None and str(path) not in text else ""
    return f"{where}{type(e).__name__}: {text}" if text else f"{where}{type(e).__name__}"


def call_safely(fn, label: Any, *args, **kwargs) -> tuple[str, Any]:
    """Run a slide step in a Ray worker and return ``("ok", value)`` or ``("error", one line)``.

    Errors travel as text: tupac's exceptions take ``(path, problem)`` and do not survive Ray's
    pickling as exceptions, and the driver only needs the message for the ledger. A crash of the
    process itself (segfault) still surfaces as Ray's ``WorkerCrashedError``. ``label`` (the slide
    path) prefixes messages of non-tupac errors.
    """
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as e:  # every failure of one slide is that slide's, reported not raised
        return "error", error_line(e, label)


def prepare_slide(
    slide_id: str,
    path: str,
    mpp_override: float | None,
    store_path: str,
    cards: Mapping[str, CardInfo],
    chunks: Mapping[str, int],
    tissue_mpp: float = 8.0,
    backend: str = "auto",
    tissue_options: Mapping[str, float] | None = None,
) -> SlidePlan:
    """Tissue, stain statistics and the (empty) store of one slide; see the module docstring.

    The Ray task around :func:`tupac.heatmaps.prepare.plan_slide` (the preparation ``tupac
    tumor-map`` shares): it opens the slide and refuses one whose level 0 is coarser than a model reads.
    ``tissue_options`` are keyword arguments of :func:`tupac.preprocess.tissue.tissue_mask`
    (``InferConfig.tissue_options()``: hole filling, dilation, small-object removal); none = its defaults.

    Raises
    ------
    SlideOpenError, MissingMPPError, ResolutionError, SlideDecodeError
        The slide cannot be used; the message names the file and the problem.
    """
    t0 = time.perf_counter()
    maybe_inject_fault(slide_id, "prepare")
    with open_slide(path, backend=backend, mpp=mpp_override) as reader:
        t_tissue = time.perf_counter()
        tissue = slide_tissue_mask(reader, tissue_mpp, **dict(tissue_options or {}))  # decodes the thumbnail: corrupt files fail here
        tissue_s = time.perf_counter() - t_tissue
        for task, info in cards.items():
            # A 40x model on a 20x slide would need upsampling: say so now, not mid-slide.
            if info.card.mpp < reader.mpp * (1 - MPP_TOLERANCE):
                raise ResolutionError(
                    f"{path}: the {task} model reads at {info.card.mpp:g} um/px but the slide's level 0 is "
                    f"{reader.mpp:g} um/px (a {task} stage needs a finer scan)"
                )
        plan = plan_slide(reader, tissue, slide_id, store_path, cards, chunks, overwrite=False, t0=t0)
        t_qc = time.perf_counter()
        qc = qc_stats(reader, tissue, cards) if len(plan.tumor_windows) else {}
        qc_s = time.perf_counter() - t_qc
    return dataclasses.replace(plan, steps_s={**plan.steps_s, "tissue_s": tissue_s, "qc_s": qc_s}, qc=qc)


def qc_stats(reader, tissue: TissueMask, cards: Mapping[str, CardInfo]) -> dict[str, dict | None]:
    """Per task, the slide's stain and texture statistics at the model's resolution (out-of-distribution check).

    A few tissue tiles per resolution (:data:`tupac.features.ood.QC_TILES`), read while the slide is
    open anyway. A failure here is a missing statistic (None), never a failed slide: the check is
    a warning, and inference must not depend on it.
    """
    from tupac.features.ood import slide_stats

    out: dict[str, dict | None] = {}
    for task, info in cards.items():
        try:
            out[task] = slide_stats(reader, tissue, float(info.card.mpp))
        except Exception:  # noqa: BLE001  (a warning's statistics must never fail a slide)
            out[task] = None
    return out


def tumor_regions(
    store_path: str,
    plan: SlidePlan,
    threshold: float,
    slide_path: str | None = None,
    mpp_override: float | None = None,
    stain_method: str | None = None,
) -> dict[str, Any]:
    """Tumor regions, the mitosis windows inside them, and the regions' stain statistics.

    The tumor heatmap is sampled on the tissue grid (nearest cell); a region pixel is tissue
    with tumor probability ``>= threshold``. Windows of the mitosis heatmap whose cells cover a
    region pixel are returned.

    With ``slide_path`` and ``stain_method``, the slide's stain statistics are measured again on
    its tumor regions only, for the mitosis stage. The mitosis network is trained on tumor fields,
    each standardized with its own statistics; statistics taken over the whole tissue (stroma
    included) standardize a slide's tumor differently, and the network then calls ordinary
    nuclei mitoses. On ten phantom slides from three centers, tumor statistics took the
    detector from 36 TP / 32 FP / 15 FN to 46 / 1 / 5 at the same threshold.

    Returns
    -------
    dict
        ``windows``: int64 (k, 2) mitosis windows; ``tumor_area_mm2``; ``stats``: the regions'
        ``SlideStainStats.to_dict()`` (None without regions or without ``stain_method``); ``seconds``.
    """
    t0 = time.perf_counter()
    store = HeatmapStore.open(store_path, mode="r")
    tissue = store.read("tissue").astype(bool)
    g = plan.geoms["tumor"]
    frame = g.frame
    prob = heatmap_on_grid(store.read("tumor"), frame.mpp, frame.offset_um[0], tissue.shape, plan.tissue_mpp)
    regions = tissue & (prob >= threshold)
    keep = window_tissue(plan.geoms["mitosis"], regions, plan.tissue_mpp) if "mitosis" in plan.geoms else None
    windows = np.argwhere(keep).astype(np.int64) if keep is not None else np.zeros((0, 2), np.int64)
    stats = None
    if slide_path is not None and stain_method and len(windows):
        stats = region_stain_stats(slide_path, mpp_override, plan, tissue, regions, stain_method)
    return {
        "windows": windows,
        "tumor_area_mm2": float(regions.sum()) * plan.tissue_mpp**2 / 1e6,
        "stats": stats,
        "seconds": time.perf_counter() - t0,
    }


def region_stain_stats(
    slide_path: str, mpp_override: float | None, plan: SlidePlan, tissue: np.ndarray, region: np.ndarray, method: str
) -> dict:
    """Stain statistics of a slide measured on ``region`` (tiles drawn there; glass from ``tissue``).

    Parameters
    ----------
    tissue, region : ndarray of bool, shape (h, w)
        Masks on the slide's tissue grid (``plan.tissue_mpp`` um/px).

    Returns
    -------
    dict
        ``SlideStainStats.to_dict()``.
    """
    with open_slide(slide_path, backend=plan.backend, mpp=mpp_override) as reader:
        fitted = stain.fit_slide(
            reader, TissueMask(tissue, plan.tissue_mpp), region=TissueMask(region, plan.tissue_mpp), method=method
        )
    return fitted.to_dict()


def detect_windowed(
    read_block, geom, windows: np.ndarray, threshold: float, sigma_px: float, nms_radius_px: float, scale_l0: float
):
    """Mitosis detections from a heatmap read window by window, equal to one whole-heatmap call.

    Each window's cells are read with a halo wide enough for the Gaussian (``4 sigma``, scipy's
    truncation) and the 3x3 maximum filter; peaks are kept only in the window's own cells, all
    peaks of the slide are ordered as on the whole heatmap (raster), and one greedy NMS runs over
    them. Memory: one window plus halo, and the peaks.

    Parameters
    ----------
    read_block : callable ``(rows: slice, cols: slice) -> ndarray``
        Reads part of the heatmap (e.g. a Zarr array's ``__getitem__``).
    geom : HeatmapGeometry
        Of the mitosis heatmap.
    windows : ndarray of int, shape (k, 2)
        Windows that were computed (elsewhere the heatmap is 0 and has no peak above a positive
        threshold).
    threshold, sigma_px, nms_radius_px
        As in :func:`tupac.mitosis.detect.detect_from_heatmap` (input-frame pixels).
    scale_l0 : float
        Level-0 pixels per input pixel.

    Returns
    -------
    DataFrame
        ``x, y`` (level 0, float64), ``prob`` (float32), by descending ``prob``.
    """
    s, off = float(geom.stride_px), float(geom.offset_px)
    sigma_cells = sigma_px / s if sigma_px > 0 else 0.0
    halo = (int(4.0 * sigma_cells + 0.5) if sigma_cells > 0 else 0) + 2
    H, W = geom.shape
    rows_all, cols_all, scores = [], [], []
    for r, c in np.asarray(windows).reshape(-1, 2):
        core_r, core_c = geom.cells((int(r), int(c)))
        r0, r1 = max(0, core_r.start - halo), min(H, core_r.stop + halo)
        c0, c1 = max(0, core_c.start - halo), min(W, core_c.stop + halo)
        block = np.asarray(read_block(slice(r0, r1), slice(c0, c1)))
        det = detect_from_heatmap(block, stride_px=1.0, offset_px=0.0, threshold=threshold,
                                  sigma_px=sigma_cells, nms_radius_px=0.0)
        ii = np.rint(det["y"].to_numpy()).astype(np.int64) + r0
        jj = np.rint(det["x"].to_numpy()).astype(np.int64) + c0
        inside = (ii >= core_r.start) & (ii < core_r.stop) & (jj >= core_c.start) & (jj < core_c.stop)
        rows_all.append(ii[inside])
        cols_all.append(jj[inside])
        scores.append(det["prob"].to_numpy()[inside])
    if not rows_all or sum(len(a) for a in rows_all) == 0:
        return pd.DataFrame({"x": np.zeros(0), "y": np.zeros(0), "prob": np.zeros(0, np.float32)})
    ii, jj, score = np.concatenate(rows_all), np.concatenate(cols_all), np.concatenate(scores)
    order = np.lexsort((jj, ii))  # raster order, as np.nonzero gives on the whole heatmap
    ii, jj, score = ii[order], jj[order], score[order]
    x_in, y_in = off + jj * s, off + ii * s
    keep = nms(np.stack([x_in, y_in], axis=1), score, nms_radius_px)
    return pd.DataFrame({"x": scale_l0 * x_in[keep], "y": scale_l0 * y_in[keep], "prob": score[keep].astype(np.float32)})


def finalize_slide(
    slide_id: str,
    path: str,
    store_path: str,
    plan: SlidePlan,
    cards: Mapping[str, CardInfo],
    input_fp: Any,
    mitosis_windows: np.ndarray | None,
    timings: Mapping[str, float],
    extra: Mapping[str, Any],
    detection: Mapping[str, float],
    ood: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Detections CSV (when the mitosis stage ran), then the commit record, last.

    ``ood``: thresholds of the out-of-distribution check (:class:`tupac.features.ood.OodConfig`
    fields; default its defaults), whose verdict the record keeps as ``extra["ood"]``.

    Returns
    -------
    dict
        ``mitoses`` (count or None), ``seconds``.
    """
    t0 = time.perf_counter()
    store = HeatmapStore.open(store_path)
    outputs = {}
    n_mitoses = None
    steps = {}
    if "mitosis" in cards and mitosis_windows is not None:
        t_det = time.perf_counter()
        g = plan.geoms["mitosis"]
        arr = store.array("mitosis")
        det = detect_windowed(
            lambda rs, cs: arr[rs, cs], g, mitosis_windows, cards["mitosis"].threshold,
            detection["sigma_px"], detection["nms_radius_px"], g.mpp / g.slide_mpp,
        )
        # Windows at the right and bottom edges read white padding past the slide; a maximum found
        # there is not on the slide, and QuPath (or any viewer) would place it off the image.
        w, h = plan.dimensions
        det = det[(det["x"] >= 0) & (det["x"] < w) & (det["y"] >= 0) & (det["y"] < h)].reset_index(drop=True)
        csv_path = detections_path(store_path)
        atomic_write_bytes(csv_path, det.to_csv(index=False).encode())
        outputs["mitoses.csv"] = csv_path
        n_mitoses = int(len(det))
        steps["detect_s"] = time.perf_counter() - t_det
    extra = {**extra, "mitoses": n_mitoses}
    try:
        extra["ood"] = ood_verdict(store, plan, cards, extra, ood).to_dict()
    except Exception as e:  # noqa: BLE001  (the check warns; it must never cost the slide its result)
        extra["ood"] = {"ood": False, "reasons": [], "checked": [], "note": f"check failed: {error_line(e)}", "stats": {}}
    record = store.commit(
        path, input_fp, {f"{t}:{c.card.name}": c.weights_sha256 for t, c in cards.items()},
        timings_s={**timings, **steps, "finalize_s": time.perf_counter() - t0},
        outputs=outputs,
        extra=extra,
        expected_chunks=planned_chunks(store, plan, mitosis_windows),
    )
    return {"mitoses": n_mitoses, "seconds": time.perf_counter() - t0, "models_fp": record.models_fp}


def ood_verdict(store: Any, plan: SlidePlan, cards: Mapping[str, CardInfo], extra: Mapping[str, Any],
                thresholds: Mapping[str, float] | None = None):
    """The slide's out-of-distribution check against the models' cards (:mod:`tupac.features.ood`).

    Statistics: the pixel statistics of the preparation (``plan.qc``), plus the tumor fraction of
    tissue (tumor model) and the mitotic density per mm² of tumor (mitosis model) from
    ``extra["tumor_area_mm2"]`` and ``extra["mitoses"]``. The tissue area is the tissue mask's.

    Returns
    -------
    OodResult
    """
    from tupac.features.ood import OodConfig, check_with_cards, slide_density_stats

    tissue_mm2 = float(np.count_nonzero(store.read("tissue"))) * plan.tissue_mpp**2 / 1e6
    dens = slide_density_stats(extra.get("tumor_area_mm2"), tissue_mm2, extra.get("mitoses"))
    stats: dict[str, dict | None] = {t: (dict(plan.qc.get(t) or {}) or None) for t in cards}
    if "tumor" in stats and "tumor_fraction" in dens:
        stats["tumor"] = {**(stats["tumor"] or {}), "tumor_fraction": dens["tumor_fraction"]}
    if "mitosis" in stats and "mitoses_per_mm2" in dens:
        stats["mitosis"] = {**(stats["mitosis"] or {}), "mitoses_per_mm2": dens["mitoses_per_mm2"]}
    return check_with_cards(stats, {t: c.card for t, c in cards.items()}, OodConfig(**dict(thresholds or {})))


def planned_chunks(store: Any, plan: SlidePlan, mitosis_windows: np.ndarray | None) -> dict[str, list[tuple[int, int]]]:
    """Every level-0 chunk this job wrote into the slide's store: the whole tissue grid, the tumor
    windows and the mitosis windows (one chunk each); what the commit checks is on disk."""
    rows, cols = store.spec("tissue").grid()
    out = {"tissue": [(r, c) for r in range(rows) for c in range(cols)],
           "tumor": [tuple(rc) for rc in np.asarray(plan.tumor_windows).reshape(-1, 2).tolist()]}
    if mitosis_windows is not None and "mitosis" in store.names:
        out["mitosis"] = [tuple(rc) for rc in np.asarray(mitosis_windows).reshape(-1, 2).tolist()]
    return out


def detection_params(card) -> dict[str, float]:
    """Smoothing and NMS of the mitosis detector (card.extra may override; level-0 40x pixels)."""
    extra = dict(card.extra or {})
    return {
        "sigma_px": float(extra.get("sigma_px", 8.0)),
        "nms_radius_px": float(extra.get("nms_radius_px", TUPAC_RADIUS_PX)),
    }
