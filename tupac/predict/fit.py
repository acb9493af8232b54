"""Fit and evaluate the grade classifiers and RNA regressors on a cohort; write the results.

:func:`fit_cohort` runs, per task and candidate model, the nested five-fold CV once per seed,
computes every metric per repeat (mean and SD over repeats), picks the best model per task by
the TUPAC16 metric (quadratic kappa; Spearman rho), refits it with its grid search on the whole
cohort (the model that is logged and registered), and computes the biomarker tables.
:func:`write_outputs` writes them under ``RUN/predict``. No file or MLflow access happens in
:func:`fit_cohort`; :mod:`tupac.tracking.fits` logs a :class:`FitResult`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tupac.config_check import option
from tupac.errors import ConfigError
from tupac.predict.ablation import Ablation, ablation_document, ablation_frame, run_ablation
from tupac.predict.biomarkers import oof_permutation_importance, significant_features, univariate_associations
from tupac.predict.cohort import GRADES, Cohort, feature_table_hash
from tupac.predict.cv import NestedCVResult, _kappa, _spearman, check_class_sizes, grid_search, nested_cv
from tupac.predict.estimators import GRADE_MODELS, RNA_MODELS, make_candidate
from tupac.predict.figures import plot_roc, plot_rna_scatter
from tupac.predict.metrics import classification_metrics, regression_metrics

__all__ = ["FitConfig", "FitResult", "fit_cohort", "write_outputs", "SELECTION_METRIC", "OUTPUT_FILES"]

SELECTION_METRIC = {"grade": "kappa_quadratic", "rna": "spearman_rho"}
OUTPUT_FILES = {
    "metrics": "metrics.json",
    "predictions": "predictions.csv",
    "roc": "roc_grade.png",
    "scatter": "rna_scatter.png",
    "biomarkers": "biomarkers.csv",
    "significant": "biomarkers_significant.csv",
    "importance_grade": "importance_grade.csv",
    "importance_rna": "importance_rna.csv",
}
ABLATION_FILES = {"ablation": "ablation.json", "ablation_table": "ablation.csv"}



@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit; all of them go to MLflow as params. Each field's description is its
    ``help`` (:func:`tupac.config_check.option`)."""

    seed: int = option(0, help="First CV seed; repeat r uses seed + r for its outer split.")
    repeats: int = option(3, help="Repetitions of the 5-fold CV (outer CV, a different seed each).")
    n_splits: int = option(5, help="Outer CV folds (the estimate).")
    inner_splits: int = option(3, help="Inner CV folds (the grid search).")
    k_features: int = option(50, help="Features kept by univariate selection in each pipeline.")
    grade_models: tuple[str, ...] = option(tuple(GRADE_MODELS), help="Candidate grade classifiers (keys of GRADE_MODELS).")
    rna_models: tuple[str, ...] = option(tuple(RNA_MODELS), help="Candidate RNA regressors (keys of RNA_MODELS).")
    n_boot: int = option(2000, help="Bootstrap resamples for the accuracy CI.")
    importance_repeats: int = option(5, help="Shuffles per feature for permutation importance.")
    strict: bool = option(False, help="Fail instead of excluding unmatched or unlabelled slides.")
    ablation: bool = option(True, help="Also cross-validate each task's best model on each feature group alone and "
                                        "on all but each group (RUN/predict/ablation.json); 4 nested CVs per group, "
                                        "about 0.6-0.7x the default fit's time.")
    ablation_n_boot: int = option(200, help="Bootstrap resamples for the accuracy CI of each ablation row.")

    def __post_init__(self) -> None:
        if self.seed < 0:  # numpy's generators and scikit-learn's random_state refuse negative seeds
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for name in ("repeats", "k_features", "n_boot", "importance_repeats", "ablation_n_boot"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_splits < 2 or self.inner_splits < 2:
            raise ConfigError(f"n_splits and inner_splits must be >= 2, got {self.n_splits}, {self.inner_splits}")
        if not self.grade_models or not self.rna_models:
            raise ConfigError("give at least one grade model and one RNA model")
        for name in self.grade_models:
            if name not in GRADE_MODELS:
                raise ConfigError(f"unknown grade model {name!r}; expected one of {sorted(GRADE_MODELS)}")
        for name in self.rna_models:
            if name not in RNA_MODELS:
                raise ConfigError(f"unknown RNA model {name!r}; expected one of {sorted(RNA_MODELS)}")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + r for r in range(self.repeats)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grade_models"] = ",".join(self.grade_models)
        d["rna_models"] = ",".join(self.rna_models)
        d["seeds"] = ",".join(map(str, self.seeds))
        return d


@dataclass
class FitResult:
    """Everything a fit produced; :func:`write_outputs` and the tracking module consume it."""

    config: FitConfig
    cohort: dict
    feature_hash: str
    feature_names: list[str]
    predictions: pd.DataFrame
    metrics: dict
    best: dict[str, str]
    final_models: dict[str, object]
    final_params: dict[str, dict]
    biomarkers: pd.DataFrame
    importances: dict[str, pd.DataFrame]
    X_example: pd.DataFrame = field(repr=False, default=None)
    ablation: Ablation | None = None


def _metrics_of(task: str, df: pd.DataFrame, config: FitConfig, seed: int) -> dict[str, float]:
    if task == "grade":
        proba = np.nan_to_num(df[[f"p_{g}" for g in GRADES]].to_numpy(), nan=0.0)
        return classification_metrics(df["y_true"], df["y_pred"], proba, n_boot=config.n_boot, seed=seed)
    return regression_metrics(df["y_true"], df["y_pred"])


def _summarize(per_repeat: list[dict[str, float]]) -> dict[str, float]:
    keys = per_repeat[0].keys()
    out = {}
    for k in keys:
        v = np.array([m[k] for m in per_repeat], np.float64)
        out[f"{k}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
        out[f"{k}_sd"] = float(np.nanstd(v)) if np.isfinite(v).any() else math.nan
    return out


def fit_cohort(
    cohort: Cohort, config: FitConfig = FitConfig(), progress: Callable[[str], None] | None = None
) -> FitResult:
    """Cross-validate every candidate, pick and refit the best per task, analyse the features.

    Parameters
    ----------
    cohort : Cohort
        From :func:`tupac.predict.cohort.build_cohort`.
    config : FitConfig
    progress : callable(str), optional
        Called once per finished unit of work (see :func:`n_steps`) with a description.

    Returns
    -------
    FitResult
    """
    tick = progress or (lambda _msg: None)
    check_class_sizes(cohort.grade, config.n_splits, config.inner_splits)
    X = cohort.X
    targets = {"grade": cohort.grade, "rna": cohort.rna}
    models = {"grade": config.grade_models, "rna": config.rna_models}
    preds, metrics, first_repeat = [], {"grade": {}, "rna": {}}, {}
    for task in ("grade", "rna"):
        for name in models[task]:
            per_repeat = []
            for r, seed in enumerate(config.seeds):
                cand = make_candidate(task, name, seed=seed, k_features=config.k_features, n_features=X.shape[1])
                res: NestedCVResult = nested_cv(
                    cand, X, targets[task], n_splits=config.n_splits, inner_splits=config.inner_splits,
                    seed=seed, repeat=r,
                )
                preds.append(res.predictions)
                per_repeat.append(_metrics_of(task, res.predictions, config, seed))
                if r == 0:
                    first_repeat[(task, name)] = res
                tick(f"{task}/{name} repeat {r + 1}/{config.repeats}")
            metrics[task][name] = {
                "per_repeat": [dict(m, seed=s) for m, s in zip(per_repeat, config.seeds)],
                "summary": _summarize(per_repeat),
                "hyperparameters_by_fold": [f.params for f in first_repeat[(task, name)].folds],
            }

    best, final_models, final_params, importances = {}, {}, {}, {}
    scorers = {"grade": _kappa, "rna": _spearman}
    for task in ("grade", "rna"):
        key = f"{SELECTION_METRIC[task]}_mean"
        scores = {n: metrics[task][n]["summary"][key] for n in models[task]}
        best[task] = max(scores, key=lambda n: -np.inf if np.isnan(scores[n]) else scores[n])
        cand = make_candidate(task, best[task], seed=config.seed, k_features=config.k_features, n_features=X.shape[1])
        gs = grid_search(cand, X, targets[task], inner_splits=config.inner_splits, seed=config.seed)
        final_models[task] = gs.best_estimator_
        final_params[task] = dict(gs.best_params_)
        tick(f"{task}: refit {best[task]} on all slides")
        importances[task] = oof_permutation_importance(
            first_repeat[(task, best[task])].folds, X, targets[task], scorers[task],
            n_repeats=config.importance_repeats, seed=config.seed,
        )
        tick(f"{task}: permutation importance")

    biomarkers = univariate_associations(X, cohort.grade, cohort.rna)
    tick("biomarkers")
    ablation = _ablation(X, targets, best, first_repeat, config, tick) if config.ablation else None
    summary = {
        "selection_metric": SELECTION_METRIC,
        "best_model": best,
        "best": {t: metrics[t][best[t]]["summary"] for t in ("grade", "rna")},
        "final_hyperparameters": final_params,
    }
    return FitResult(
        config=config,
        cohort=cohort.summary(),
        feature_hash=feature_table_hash(X),
        feature_names=list(X.columns),
        predictions=pd.concat(preds, ignore_index=True),
        metrics={"summary": summary, "models": metrics},
        best=best,
        final_models=final_models,
        final_params=final_params,
        biomarkers=biomarkers,
        importances=importances,
        X_example=X.iloc[: min(5, len(X))],
        ablation=ablation,
    )


def _ablation(X, targets, best, first_repeat, config: FitConfig, tick) -> Ablation:
    # The full-set row is the best model's first repeat, which used seed config.seed: the
    # ablation rows use the same seed, hence the same folds.
    return run_ablation(
        X, targets, best, {t: first_repeat[(t, best[t])].predictions for t in best},
        seed=config.seed, n_splits=config.n_splits, inner_splits=config.inner_splits,
        k_features=config.k_features, n_boot=config.ablation_n_boot, progress=tick,
    )


def n_steps(config: FitConfig) -> int:
    """How many times :func:`fit_cohort` calls ``progress``."""
    return (len(config.grade_models) + len(config.rna_models)) * config.repeats + 2 * 2 + 1 + 2 * config.ablation


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    return obj


def metrics_document(result: FitResult) -> dict:
    """The content of metrics.json (NaN written as null)."""
    return _json_safe(
        {
            "feature_table_sha256": result.feature_hash,
            "config": result.config.to_dict(),
            "cohort": result.cohort,
            **result.metrics,
        }
    )


def _first_repeat(result: FitResult, task: str) -> pd.DataFrame:
    p = result.predictions
    return p[(p["task"] == task) & (p["model"] == result.best[task]) & (p["repeat"] == 0)]


def write_outputs(result: FitResult, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, predictions.csv, the two figures and the biomarker CSVs.

    The figures show the best model of each task in the first CV repeat (seed ``config.seed``),
    so their AUCs and correlations equal that repeat's entries in metrics.json.

    Returns
    -------
    dict of name -> Path
        Keys of :data:`OUTPUT_FILES`, and of :data:`ABLATION_FILES` when the fit ran the ablation.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in OUTPUT_FILES.items()}
    paths["metrics"].write_text(json.dumps(metrics_document(result), indent=2, allow_nan=False) + "\n")
    result.predictions.to_csv(paths["predictions"], index=False)
    g = _first_repeat(result, "grade")
    plot_roc(g["y_true"].to_numpy(), g[[f"p_{c}" for c in GRADES]].fillna(0.0).to_numpy(), paths["roc"],
             title=f"Grade, {result.best['grade']} ({result.config.n_splits}-fold CV, seed {result.config.seed})")
    r = _first_repeat(result, "rna")
    plot_rna_scatter(r["y_true"].to_numpy(), r["y_pred"].to_numpy(), paths["scatter"],
                     title=f"RNA score, {result.best['rna']} ({result.config.n_splits}-fold CV, seed {result.config.seed})")
    result.biomarkers.to_csv(paths["biomarkers"], index=False)
    significant_features(result.biomarkers).to_csv(paths["significant"], index=False)
    result.importances["grade"].to_csv(paths["importance_grade"], index=False)
    result.importances["rna"].to_csv(paths["importance_rna"], index=False)
    if result.ablation is not None:
        paths |= _write_ablation(result.ablation, out)
    else:  # an earlier fit's ablation would otherwise be reported as this fit's
        for name in ABLATION_FILES.values():
            (out / name).unlink(missing_ok=True)
    return paths


def _write_ablation(ab: Ablation, out: Path) -> dict[str, Path]:
    paths = {k: out / v for k, v in ABLATION_FILES.items()}
    doc = _json_safe(ablation_document(ab))
    paths["ablation"].write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    ablation_frame(doc).to_csv(paths["ablation_table"], index=False)
    return paths
