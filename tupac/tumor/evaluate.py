"""Tumor-map quality against true masks (phantom cohorts carry them in ``ROOT/truth/<id>/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tupac.geometry import resample_onto
from tupac.heatmaps.engine import heatmap_to_array
from tupac.preprocess import stain
from tupac.preprocess.tissue import slide_tissue_mask
from tupac.slide import open_slide
from tupac.synth import read_truth_mask
from tupac.tumor.regions import heatmap_on_grid, map_quality, pixel_auroc


def evaluate_slide(trained, slide_path: Path, truth_dir: Path, chunk: int = 64, area_threshold: float = 0.5) -> dict:
    """Map one slide with ``trained`` and compare it with ``truth_dir/tumor.png`` inside ``tissue.png``.

    Returns the :func:`tupac.tumor.regions.map_quality` figures (at the card's threshold),
    ``feature_area_mm2`` (tumor at ``area_threshold``, the features stage's default 0.5, inside
    the predicted tissue mask: the area the features' ``tumor_area_mm2`` reports) and the pixel
    scores needed to pool an AUROC over slides (``_scores``, ``_truth``).
    """
    truth, truth_mpp = read_truth_mask(truth_dir / "tumor.png")
    true_tissue, _ = read_truth_mask(truth_dir / "tissue.png")
    with open_slide(slide_path) as reader:
        tissue = slide_tissue_mask(reader, 8.0)
        pre = None
        if trained.reference is not None:
            stats = stain.fit_slide(reader, tissue, method=trained.reference.method)
            pre = lambda t: stain.transform(t, stats, trained.reference)  # noqa: E731
        heat, geom = heatmap_to_array(reader, trained.model, tissue_mask=tissue.mask, tissue_mpp=tissue.mpp,
                                      preprocess=pre, chunk=chunk)
    prob = heatmap_on_grid(heat, geom.cell_um, geom.offset_px * geom.mpp, truth.shape, truth_mpp)
    q = map_quality(prob, truth, true_tissue, trained.threshold, truth_mpp)
    inside = true_tissue | truth
    # The features count tumor inside the *predicted* tissue mask, resampled the same way.
    on_tissue = resample_onto(tissue.mask, tissue.mpp, (0.0, 0.0), truth.shape, truth_mpp, (0.0, 0.0))
    q["feature_area_mm2"] = float(((prob >= area_threshold) & on_tissue).sum() * (truth_mpp / 1000.0) ** 2)
    q["_scores"], q["_truth"] = prob[inside], truth[inside]
    return q


def evaluate_cohort(trained, root: str | Path, slide_ids: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Per-slide and pooled tumor-map quality of ``trained`` on a phantom cohort.

    Returns
    -------
    (table, pooled)
        ``table``: one row per slide (auroc, dice, fp/fn/tumor/pred areas in mm², ``area_rel_error``:
        the features' tumor area (:func:`evaluate_slide`'s ``feature_area_mm2``) / true area - 1);
        ``pooled``: pixel AUROC over all slides, Dice over all pixels, total false-positive area,
        median and largest absolute relative area error.
    """
    root = Path(root)
    slides = sorted((root / "training_image_data").glob("*.svs"))
    rows, scores, truths = [], [], []
    inter = total = 0.0
    for path in slides:
        sid = path.stem
        if slide_ids is not None and sid not in slide_ids:
            continue
        q = evaluate_slide(trained, path, root / "truth" / sid)
        scores.append(q.pop("_scores"))
        t = q.pop("_truth")
        truths.append(t)
        pred = scores[-1] > trained.threshold
        inter += float(np.logical_and(pred, t).sum())
        total += float(pred.sum() + t.sum())
        rows.append({"slide_id": sid, **q})
    table = pd.DataFrame(rows)
    if len(table):
        table["area_rel_error"] = table["feature_area_mm2"] / table["tumor_area_mm2"].where(table["tumor_area_mm2"] > 0) - 1.0
    rel = table["area_rel_error"].dropna() if len(table) else pd.Series(dtype=float)
    pooled = {
        "auroc": pixel_auroc(np.concatenate(scores), np.concatenate(truths)) if scores else float("nan"),
        "dice": 2 * inter / total if total else float("nan"),
        "fp_area_mm2": float(table["fp_area_mm2"].sum()) if len(table) else 0.0,
        "area_rel_error_median": float(rel.median()) if len(rel) else float("nan"),
        "area_rel_error_max_abs": float(rel.abs().max()) if len(rel) else float("nan"),
        "slides": len(table),
    }
    return table, pooled
