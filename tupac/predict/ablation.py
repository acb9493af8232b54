"""Feature-group ablation: which group of features carries the grade and RNA signal.

For each feature group of the catalog (:data:`tupac.features.catalog.GROUPS`) the best model of
each task is cross-validated twice more, once on the group's columns alone and once on every column
but the group's, and the figures the fit reports (grade accuracy and quadratic kappa, RNA Spearman
rho) are set beside the full-set figures. Everything but the columns stays as in the fit: the
same candidate (the task's best model, its grid and its univariate selection of ``k_features``),
the same outer and inner folds (seed ``config.seed``, the fit's first repeat), so a difference is
due to the features. The full-set row *is* the fit's first repeat of the best model, so it costs
nothing; each group costs two nested CVs per task (``4 x n_groups`` in all, one repeat each).

A group none of whose columns is in the table is reported as ``absent`` (no figures), "all but
G" is ``empty`` when G holds every column, and a set none of whose columns varies (on some CV
training part) is ``constant``: the pipelines drop constant columns, so nothing is left to fit. Columns that are in no catalog group (a hand-made
table) form a last pseudo-group, :data:`OTHER`, ablated like the others, so no column is unaccounted.

Cost, measured on 60 synthetic slides with 4 columns in each of the six groups (2 shared CPU
cores, so +-30 %): with the tests' light candidates (two per task, 3 repeats) the fit took 42 s and
the ablation 25 s more (0.6x); with every candidate (``FitConfig()``, 3 repeats; the best were a
random forest and the elastic net) 248 s and about 170 s (0.7x); with the demo's fit (one repeat,
2 x 2 folds, two candidates per task) 15-24 s and 69-75 s more (3-5x). Hence
:attr:`~tupac.predict.fit.FitConfig.ablation` is on by default and off in the demo configuration
(:data:`tupac.pipeline.DEMO_CONFIG`); ``tupac fit --no-ablation`` skips it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tupac.predict.cohort import GRADES
from tupac.predict.cv import nested_cv
from tupac.predict.estimators import make_candidate
from tupac.predict.metrics import bootstrap_accuracy_ci, quadratic_weighted_kappa

__all__ = ["GROUP_TITLES", "OTHER", "FIGURES", "Ablation", "column_groups", "ablation_figures", "run_ablation",
           "ablation_document", "ablation_frame"]

OTHER = "uncatalogued"
GROUP_TITLES = {
    "tumor": "Tumor",
    "fringe": "Tumor fringe",
    "mitosis_bio": "Biological (mitosis)",
    "mitosis_arch": "Architectural (mitosis)",
    "deep_hist": "Deep histogram",
    "general": "General",
    OTHER: "Not in the feature catalog",
}
FIGURES = {"grade": ("accuracy", "kappa_quadratic"), "rna": ("spearman_rho",)}
"""The figures of each task an ablation row holds (the TUPAC16 metrics and the grade accuracy)."""
VARIANTS = ("alone", "removed")

# deep_hist_dictionary(n) pads the bin index to max(3, digits of n - 1): the names for n = 1000
# (width 3) and n = 10000 (width 4) include those of every n <= 10000, whatever k-means the
# features stage used, so the group of a deep-histogram column never depends on the cluster count.
_DEEP_HIST_SIZES = (1000, 10000)


def _catalog_names() -> dict[str, set[str]]:
    # Deferred: the catalog imports every feature module; a fit without ablation needs none of them.
    from tupac.features.catalog import GROUPS, feature_list

    names = {g: {f.name for f in feature_list([g])} for g in GROUPS}
    for n in _DEEP_HIST_SIZES:
        names["deep_hist"] |= {f.name for f in feature_list(["deep_hist"], n_clusters=n)}
    return names


def column_groups(columns: Iterable[str]) -> dict[str, list[str]]:
    """The table's columns by catalog group, in table order.

    Each catalog group's flag columns (``tumor_missing``, ``deep_hist_missing``, ...) count with
    their group, as the catalog lists them. (The row flag ``no_tissue`` never reaches a fit:
    :func:`tupac.predict.cohort.build_cohort` drops it.)

    Parameters
    ----------
    columns : iterable of str
        The feature table's columns.

    Returns
    -------
    dict of group -> list of str
        Every catalog group in catalog order (an empty list for a group absent from the table),
        then :data:`OTHER` when some column is in no group.
    """
    columns = list(columns)
    catalog = _catalog_names()
    out = {g: [c for c in columns if c in names] for g, names in catalog.items()}
    known = set().union(*catalog.values())
    other = [c for c in columns if c not in known]
    if other:
        out[OTHER] = other
    return out


def ablation_figures(task: str, predictions: pd.DataFrame, *, n_boot: int, seed: int) -> dict[str, float]:
    """The figures of one set of out-of-fold predictions.

    Parameters
    ----------
    task : {"grade", "rna"}
    predictions : DataFrame
        :attr:`tupac.predict.cv.NestedCVResult.predictions` (``y_true``, ``y_pred``).
    n_boot, seed : int
        Bootstrap of the accuracy CI (grade only).

    Returns
    -------
    dict
        Grade: ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high``, ``kappa_quadratic``;
        RNA: ``spearman_rho``. NaN where undefined (a constant prediction).
    """
    y_true = predictions["y_true"].to_numpy()
    y_pred = predictions["y_pred"].to_numpy()
    if task == "grade":
        low, high = bootstrap_accuracy_ci(y_true, y_pred, n_boot=n_boot, seed=seed)
        return {"accuracy": float((y_true == y_pred).mean()), "accuracy_ci_low": low, "accuracy_ci_high": high,
                "kappa_quadratic": quadratic_weighted_kappa(y_true.astype(int), y_pred.astype(int), GRADES)}
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return {"spearman_rho": math.nan}
    # Spearman as in regression_metrics (scipy), without its p-value: the same number the fit reports.
    rt, rp = pd.Series(y_true).rank().to_numpy(), pd.Series(y_pred).rank().to_numpy()
    return {"spearman_rho": float(np.corrcoef(rt, rp)[0, 1])}


@dataclass
class Ablation:
    """The ablation of one fit.

    Attributes
    ----------
    models : dict of task -> str
        The candidate cross-validated per task (the fit's best).
    reference : dict of task -> dict
        Figures of the full feature set (the fit's first repeat of that model).
    groups : list of dict
        One per group: ``group``, ``title``, ``n_features``, ``status`` (``ok``, ``absent``) and,
        per variant ``alone`` / ``removed``, a dict ``status`` (``ok``; ``absent``: no column of
        the group in the table; ``empty``: no column left; ``constant``: no column varies on some
        CV training part, so nothing can be fitted), ``n_features`` and, when ``ok``, the figures of
        each task (``grade``, ``rna``).
    settings : dict
        ``seed``, ``n_splits``, ``inner_splits``, ``k_features``, ``n_boot``, ``repeats`` (1).
    """

    models: dict[str, str]
    reference: dict[str, dict[str, float]]
    groups: list[dict]
    settings: dict


def _cv_figures(task: str, model: str, X: pd.DataFrame, y: np.ndarray, settings: dict) -> dict[str, float]:
    cand = make_candidate(task, model, seed=settings["seed"], k_features=settings["k_features"], n_features=X.shape[1])
    res = nested_cv(cand, X, y, n_splits=settings["n_splits"], inner_splits=settings["inner_splits"],
                    seed=settings["seed"], repeat=0)
    return ablation_figures(task, res.predictions, n_boot=settings["n_boot"], seed=settings["seed"])


def _no_varying_column(err: ValueError) -> bool:
    # The pipelines' VarianceThreshold(0) says so when it would drop every column.
    return "variance threshold" in str(err)


def run_ablation(
    X: pd.DataFrame,
    targets: dict[str, np.ndarray],
    models: dict[str, str],
    reference_predictions: dict[str, pd.DataFrame],
    *,
    seed: int,
    n_splits: int,
    inner_splits: int,
    k_features: int,
    n_boot: int,
    progress: Callable[[str], None] | None = None,
) -> Ablation:
    """Cross-validate each task's model on each feature group alone and on all but each group.

    Parameters
    ----------
    X : DataFrame
        The cohort's feature table (slides x features).
    targets : dict of task -> ndarray
        ``grade`` and ``rna``, row-aligned with ``X``.
    models : dict of task -> str
        The candidate of each task (the fit's best).
    reference_predictions : dict of task -> DataFrame
        The fit's out-of-fold predictions of that candidate with seed ``seed`` on every column.
    seed, n_splits, inner_splits, k_features : int
        As in the fit (:class:`tupac.predict.fit.FitConfig`), so only the columns differ.
    n_boot : int
        Bootstrap resamples of the accuracy CI of each row (fewer than the fit's: the CI here only
        orients, and the rows are many).
    progress : callable(str), optional
        Called once per task when its rows are done.

    Returns
    -------
    Ablation
    """
    tick = progress or (lambda _msg: None)
    settings = {"seed": seed, "n_splits": n_splits, "inner_splits": inner_splits, "k_features": k_features,
                "n_boot": n_boot, "repeats": 1}
    by_group = column_groups(X.columns)
    reference = {t: ablation_figures(t, reference_predictions[t], n_boot=n_boot, seed=seed) for t in models}
    groups = []
    for g, cols in by_group.items():
        rest = [c for c in X.columns if c not in set(cols)]
        groups.append({
            "group": g, "title": GROUP_TITLES.get(g, g), "n_features": len(cols),
            "status": "ok" if cols else "absent",
            "alone": {"status": "ok" if cols else "absent", "n_features": len(cols)},
            "removed": {"status": ("ok" if rest else "empty") if cols else "absent", "n_features": len(rest)},
        })
    for task, model in models.items():
        for row in groups:
            for variant in VARIANTS:
                if row[variant]["status"] != "ok":
                    continue
                cols = by_group[row["group"]]
                use = cols if variant == "alone" else [c for c in X.columns if c not in set(cols)]
                if len(use) == X.shape[1]:  # the full set again (one group only): the reference, no refit
                    row[variant][task] = dict(reference[task])
                    continue
                try:
                    row[variant][task] = _cv_figures(task, model, X[use], targets[task], settings)
                except ValueError as e:
                    if not _no_varying_column(e):
                        raise
                    # Every column constant on some training part (a group of zeros, a flag never
                    # raised): no model can be fitted on it, which is chance by construction.
                    row[variant] = {"status": "constant", "n_features": len(use)}
        tick(f"{task}: ablation ({sum(r['status'] == 'ok' for r in groups)} feature groups)")
    return Ablation(dict(models), reference, groups, settings)


def ablation_document(ab: Ablation) -> dict:
    """The content of ablation.json (figures NaN stay NaN here; the writer maps them to null)."""
    return {"settings": ab.settings, "models": ab.models, "figures": {t: list(FIGURES[t]) for t in FIGURES},
            "reference": ab.reference, "groups": ab.groups}


def ablation_frame(doc: dict, tasks: Sequence[str] = ("grade", "rna")) -> pd.DataFrame:
    """ablation.json as a flat table: one row for the full set, then two per group.

    Parameters
    ----------
    doc : dict
        :func:`ablation_document` (or ablation.json read back).

    Returns
    -------
    DataFrame
        ``group, title, variant (all, alone, removed), status, n_features`` and per figure
        ``<task>_<figure>`` and ``delta_<task>_<figure>`` (the row minus the full set; NaN where
        the row has no figures).
    """
    ref = doc.get("reference", {})
    figs = [(t, f) for t in tasks for f in FIGURES[t]]

    def values(d: dict) -> dict:
        out = {}
        for t, f in figs:
            v = (d.get(t) or {}).get(f)
            r = (ref.get(t) or {}).get(f)
            v = math.nan if v is None else float(v)
            out[f"{t}_{f}"] = v
            out[f"delta_{t}_{f}"] = v - float(r) if r is not None else math.nan
        return out

    n_all = sum(g.get("n_features", 0) for g in doc.get("groups", []))
    rows = [{"group": "all", "title": "All features", "variant": "all", "status": "ok", "n_features": n_all}
            | values(ref)]
    for g in doc.get("groups", []):
        for variant in VARIANTS:
            v = g.get(variant, {})
            rows.append({"group": g["group"], "title": g.get("title", g["group"]), "variant": variant,
                         "status": v.get("status", "absent"), "n_features": v.get("n_features", 0)} | values(v))
    return pd.DataFrame(rows)
