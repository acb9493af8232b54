"""The numbers of the report: metrics with confidence intervals beside the published figures,
biomarkers, per-slide timings and throughput. Pure functions of the run's files' contents."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = [
    "PUBLISHED",
    "bootstrap_kappa_ci",
    "bootstrap_spearman_ci",
    "metric_rows",
    "biomarker_rows",
    "timing_table",
    "throughput_rows",
]

PUBLISHED: tuple[dict[str, Any], ...] = (
    {
        "task": "grade", "metric": "kappa_quadratic", "value": 0.567, "ci": (0.464, 0.671),
        "source": "TUPAC16 best entry, 321-slide test set (Veta et al., Med. Image Anal. 2019, arXiv:1807.08284)",
    },
    {
        "task": "rna", "metric": "spearman_rho", "value": 0.617, "ci": (0.581, 0.651),
        "source": "TUPAC16 best entry, 321-slide test set (Veta et al., Med. Image Anal. 2019, arXiv:1807.08284)",
    },
    {
        "task": "rna", "metric": "spearman_rho", "value": 0.60, "ci": None,
        "source": "Shah et al., arXiv:1610.03467 (abstract; evaluation set as described there)",
    },
)
"""Published figures shown beside this run's. Checked against the papers' abstracts: the TUPAC16
overview gives the best test-set kappa 0.567 [0.464, 0.671] and Spearman 0.617 [0.581, 0.651]
(both from one team's entry); Shah et al.'s abstract gives Spearman 0.60 for the RNA score and calls
its grade prediction "pathologist-level" without a kappa, so no task-1 figure of theirs is shown."""

_METRICS = {
    "grade": (("kappa_quadratic", "Quadratic-weighted κ"), ("accuracy", "Accuracy"), ("f1_macro", "Macro F1"),
              ("auroc_micro", "AUROC (micro)")),
    "rna": (("spearman_rho", "Spearman ρ"), ("pearson_r", "Pearson r"), ("mse", "MSE")),
}
TASK_TITLES = {"grade": "Task 1: mitotic score (3 classes)", "rna": "Task 2: PAM50 proliferation score"}


def _kappa_from_counts(counts: np.ndarray) -> np.ndarray:
    """Quadratic kappa of confusion matrices, shape (B, K, K) -> (B,)."""
    k = counts.shape[-1]
    i, j = np.indices((k, k))
    w = (i - j) ** 2 / (k - 1) ** 2
    n = counts.sum(axis=(1, 2), keepdims=True)
    o = counts / n
    e = o.sum(axis=2, keepdims=True) * o.sum(axis=1, keepdims=True)
    den = (w * e).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - (w * o).sum(axis=(1, 2)) / den, np.nan)


def bootstrap_kappa_ci(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 2000, seed: int = 0,
                       classes: Iterable[int] = (1, 2, 3), alpha: float = 0.05) -> tuple[float, float]:
    """Percentile-bootstrap ``(1 - alpha)`` CI of the quadratic-weighted kappa (slides resampled).

    Parameters
    ----------
    y_true, y_pred : ndarray of int, shape (n,)
    n_boot : int
    seed : int
    classes : the ordered grades

    Returns
    -------
    (low, high) : floats (NaN when fewer than 2 slides)
    """
    classes = np.asarray(list(classes))
    t = np.searchsorted(classes, np.asarray(y_true))
    p = np.searchsorted(classes, np.asarray(y_pred))
    n, k = t.size, classes.size
    if n < 2:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    cell = (t[idx] * k + p[idx]) + (np.arange(n_boot)[:, None] * k * k)
    counts = np.bincount(cell.ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k).astype(np.float64)
    kap = _kappa_from_counts(counts)
    lo, hi = np.nanquantile(kap, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_spearman_ci(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 2000, seed: int = 0,
                          alpha: float = 0.05) -> tuple[float, float]:
    """Percentile-bootstrap CI of Spearman's rho (average ranks for ties), vectorized over resamples."""
    from scipy.stats import rankdata

    a, b = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    n = a.size
    if n < 3:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ra, rb = rankdata(a[idx], axis=1), rankdata(b[idx], axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (ra * rb).sum(axis=1) / den, np.nan)
    lo, hi = np.nanquantile(rho, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _first_repeat(pred: pd.DataFrame, task: str, model: str) -> pd.DataFrame:
    sel = pred[(pred["task"] == task) & (pred["model"] == model)]
    return sel[sel["repeat"] == sel["repeat"].min()] if len(sel) else sel


def metric_rows(metrics: Mapping[str, Any], predictions: pd.DataFrame | None, n_boot: int = 2000,
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per (task, metric) of the best model: mean, SD over CV repeats, 95 % CI, published.

    The CI of kappa and Spearman is a percentile bootstrap over slides of the best model's
    out-of-fold predictions in the first CV repeat (the predictions the figures show); the
    accuracy CI is metrics.json's per-repeat bootstrap, averaged over repeats.

    Returns
    -------
    list of dict
        ``task, model, metric, label, mean, sd, ci (low, high) or None, ci_note, published`` (list of
        PUBLISHED entries).
    """
    summary = metrics.get("summary", {})
    best_model = summary.get("best_model", {})
    best = summary.get("best", {})
    rows = []
    for task, items in _METRICS.items():
        model = best_model.get(task)
        m = best.get(task) or {}
        oof = _first_repeat(predictions, task, model) if predictions is not None and model else None
        for key, label in items:
            ci, note = None, ""
            if key == "kappa_quadratic" and oof is not None and len(oof):
                ci = bootstrap_kappa_ci(oof["y_true"].to_numpy(int), oof["y_pred"].to_numpy(int), n_boot, seed)
                note = f"bootstrap over {len(oof)} slides, first CV repeat"
            elif key == "spearman_rho" and oof is not None and len(oof):
                ci = bootstrap_spearman_ci(oof["y_true"].to_numpy(), oof["y_pred"].to_numpy(), n_boot, seed)
                note = f"bootstrap over {len(oof)} slides, first CV repeat"
            elif key == "accuracy" and m.get("accuracy_ci_low_mean") is not None:
                ci = (m["accuracy_ci_low_mean"], m["accuracy_ci_high_mean"])
                note = "bootstrap per repeat, averaged"
            rows.append({
                "task": task, "model": model, "metric": key, "label": label,
                "mean": m.get(f"{key}_mean"), "sd": m.get(f"{key}_sd"), "ci": ci, "ci_note": note,
                "published": [p for p in PUBLISHED if p["task"] == task and p["metric"] == key],
            })
    return rows


def biomarker_rows(table: pd.DataFrame, dictionary: pd.DataFrame | None = None, top: int = 15) -> tuple[pd.DataFrame, dict]:
    """The ``top`` features by smallest p-value (RNA or grade), with their group, and counts.

    Returns
    -------
    (rows, counts)
        ``rows``: feature, group, rna_r, p_rna, q_rna, grade_rho, p_grade, q_grade; ``counts``:
        ``n_features``, ``significant_rna``, ``significant_grade`` (p < the biomarker threshold).
    """
    df = table.copy()
    key = np.fmin(df["p_rna"].to_numpy(np.float64), df["p_grade"].to_numpy(np.float64))
    df = df.iloc[np.argsort(np.where(np.isnan(key), np.inf, key), kind="mergesort")]
    groups = dict(zip(dictionary["name"], dictionary["group"])) if dictionary is not None else {}
    df["group"] = [groups.get(f, "") for f in df["feature"]]
    cols = ["feature", "group", "rna_r", "p_rna", "q_rna", "grade_rho", "p_grade", "q_grade"]
    counts = {
        "n_features": int(len(table)),
        "significant_rna": int(table.get("significant_rna", pd.Series(dtype=bool)).fillna(False).astype(bool).sum()),
        "significant_grade": int(table.get("significant_grade", pd.Series(dtype=bool)).fillna(False).astype(bool).sum()),
    }
    return df[[c for c in cols if c in df.columns]].head(top).reset_index(drop=True), counts


_STAGE_ORDER = ("prepare", "tissue", "stain_fit", "read", "model", "tumor", "regions", "mitosis", "finalize")


def timing_table(records: Mapping[str, Any]) -> pd.DataFrame:
    """Per-slide stage seconds from commit records: one row per slide, one column per stage
    (``*_s`` keys, suffix dropped), plus ``total`` (sum of stages) and ``created`` (commit time)."""
    rows = []
    for sid, rec in records.items():
        row = {"slide_id": sid}
        for k, v in (rec.timings_s or {}).items():
            row[k[:-2] if k.endswith("_s") else k] = float(v)
        row["created"] = rec.created
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["slide_id", "total", "created"])
    df = pd.DataFrame(rows).set_index("slide_id")
    # pipeline order for the stages tupac records; anything else after them, by name
    known = [c for c in _STAGE_ORDER if c in df.columns]
    stages = known + sorted(c for c in df.columns if c not in known and c != "created")
    df = df[[*stages, "created"]]
    df.insert(len(stages), "total", df[stages].sum(axis=1, min_count=1))
    return df


def _span_s(created: Iterable[str]) -> float | None:
    times = sorted(datetime.fromisoformat(c) for c in created if c)
    return (times[-1] - times[0]).total_seconds() if len(times) >= 2 else None


def throughput_rows(timings: pd.DataFrame, summary: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """``(quantity, value, where it comes from)`` rows for the throughput table."""
    rows: list[tuple[str, str, str]] = []
    tp = (summary or {}).get("throughput") or {}
    if tp.get("seconds"):
        rows.append(("Wall time of the last inference job", f"{tp['seconds']:.1f} s", "summary.json"))
    if tp.get("slides_per_h") is not None and tp.get("seconds"):
        rows.append(("Slides per hour (wall)", f"{tp['slides_per_h']:.1f}", "summary.json"))
    if tp.get("tiles_per_s") is not None and tp.get("seconds"):
        rows.append(("Windows per second (wall)", f"{tp['tiles_per_s']:.2f}", f"summary.json, {tp.get('tiles', '?')} windows"))
    n = len(timings)
    if n and "total" in timings and timings["total"].notna().any():
        tot = timings["total"].dropna()
        rows.append(("Stage seconds per slide (mean, sum of recorded stages)", f"{tot.mean():.1f} s",
                     f"commit records of {len(tot)} slide(s)"))
        rows.append(("Slides per hour, one worker, from stage seconds", f"{3600.0 / tot.mean():.1f}" if tot.mean() > 0 else "—",
                     "3600 / mean stage seconds"))
    span = _span_s(timings["created"]) if n and "created" in timings else None
    if span:
        # a rate over a few seconds (slides adopted or committed together) would read as a throughput
        rate = f"; {3600.0 * (n - 1) / span:.1f} slides/h between them" if span >= 60 else ""
        rows.append(("Commit span, first to last slide", f"{span:.1f} s",
                     f"{n} commits{rate} (includes any pause between resumed runs)"))
    return rows
