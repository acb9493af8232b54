"""A cohort fit (:class:`tupac.predict.fit.FitResult`) as an MLflow run with two registered models.

:func:`log_fit` makes one MLflow run per fit: the feature-table hash, every config value as a
param, every metric (per CV repeat as steps, and mean/SD), ``RUN/predict/*`` as artifacts, and the
best grade and RNA pipelines as MLflow models with their input signature, in the skops format,
registered as ``tupac-grade-classifier`` / ``tupac-rna-regressor``. The alias ``champion`` moves
to the new version when its cross-validated selection metric (quadratic kappa, Spearman rho)
beats the current champion's.

The store is the run's own (:mod:`tupac.tracking.store`); :mod:`tupac.tracking.loading` loads the
registered versions back, without pickle.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sklearn
import skops

from tupac.predict.fit import SELECTION_METRIC, FitResult
from tupac.tracking.loading import TAG_SHA, TRUSTED_TYPES, file_sha256, skops_file
from tupac.tracking.store import local_artifact_root, open_store, resolve_tracking_uri

__all__ = ["MODEL_NAMES", "CHAMPION_ALIAS", "DEFAULT_EXPERIMENT", "log_fit", "TrackedFit"]

MODEL_NAMES = {"grade": "tupac-grade-classifier", "rna": "tupac-rna-regressor"}
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "tupac"

_TAG_SCORE = "tupac.selection_score"


def _experiment_id(client, name: str, run_dir: Path, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = local_artifact_root(run_dir).as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)


def _metric_key(*parts: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; our model and metric names already do.
    return ".".join(parts)


def _metrics_to_log(result: FitResult) -> list[tuple[str, float, int]]:
    out = []
    for task, by_model in result.metrics["models"].items():
        for model, m in by_model.items():
            for step, rep in enumerate(m["per_repeat"]):
                out += [(_metric_key(task, model, k), float(v), step) for k, v in rep.items() if k != "seed"]
            out += [(_metric_key(task, model, k), float(v), 0) for k, v in m["summary"].items()]
    for task, summ in result.metrics["summary"]["best"].items():
        out += [(_metric_key("best", task, k), float(v), 0) for k, v in summ.items()]
    out += [("cohort.n_slides", float(result.cohort["n_slides"]), 0),
            ("cohort.n_excluded", float(result.cohort["n_excluded"]), 0)]
    return out + _ablation_metrics(result)


def _ablation_metrics(result: FitResult) -> list[tuple[str, float, int]]:
    """``ablation.<group>.<alone|removed>.<task>.<figure>``: the ablation's figures (the table is the
    predict/ablation.json artifact); rows without figures (an absent group) and NaN are left out."""
    if result.ablation is None:
        return []
    out = []
    for g in result.ablation.groups:
        for variant in ("alone", "removed"):
            for task in ("grade", "rna"):
                for k, v in (g[variant].get(task) or {}).items():
                    if not k.startswith("accuracy_ci") and np.isfinite(v):
                        out.append((_metric_key("ablation", g["group"], variant, task, k), float(v), 0))
    return out


def _params(result: FitResult) -> dict[str, str]:
    p = {f"config.{k}": str(v) for k, v in result.config.to_dict().items()}
    p["feature_table_sha256"] = result.feature_hash
    p["n_features"] = str(len(result.feature_names))
    for task in ("grade", "rna"):
        p[f"best_model.{task}"] = result.best[task]
        p |= {f"final.{task}.{k}": str(v) for k, v in result.final_params[task].items()}
    return p


def _pip_requirements() -> list[str]:
    return [f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}", f"numpy=={np.__version__}"]


@dataclass(frozen=True)
class TrackedFit:
    """Where a fit went: the MLflow run and the registered model versions."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    versions: dict[str, str]
    champion: dict[str, bool]


def _log_model(client, result: FitResult, task: str, run_id: str) -> tuple[str, bool]:
    """Log, register, checksum and maybe crown the best pipeline of ``task``."""
    import mlflow  # deferred: mlflow takes ~1 s to import and most commands never track
    import mlflow.sklearn  # deferred with mlflow
    from mlflow.exceptions import MlflowException  # deferred with mlflow
    from mlflow.models import infer_signature  # deferred with mlflow

    model = result.final_models[task]
    example = result.X_example
    info = mlflow.sklearn.log_model(
        model,
        name=f"{task}_model",
        signature=infer_signature(example, model.predict(example)),
        serialization_format="skops",
        skops_trusted_types=list(TRUSTED_TYPES),
        registered_model_name=MODEL_NAMES[task],
        pip_requirements=_pip_requirements(),
        pyfunc_predict_fn="predict",
        metadata={"task": task, "estimator": result.best[task], "feature_table_sha256": result.feature_hash},
    )
    version = str(info.registered_model_version)
    name = MODEL_NAMES[task]
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        sha = file_sha256(local / skops_file(local))
    score = result.metrics["summary"]["best"][task][f"{SELECTION_METRIC[task]}_mean"]
    tags = {
        TAG_SHA: sha,
        _TAG_SCORE: repr(float(score)),
        "tupac.task": task,
        "tupac.estimator": result.best[task],
        "tupac.selection_metric": SELECTION_METRIC[task],
        "tupac.feature_table_sha256": result.feature_hash,
        "tupac.run_id": run_id,
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        current_score = float(current.tags.get(_TAG_SCORE, "-inf"))
    except MlflowException:
        current_score = -np.inf
    crown = bool(np.isfinite(score) and score > current_score) or not np.isfinite(current_score)
    if crown:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return version, crown


def log_fit(
    result: FitResult,
    outputs_dir: str | Path,
    run_dir: str | Path,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tracking_uri: str | None = None,
) -> TrackedFit:
    """Log one fit as an MLflow run and register its two best pipelines.

    Parameters
    ----------
    result : FitResult
    outputs_dir : path-like
        The folder :func:`tupac.predict.fit.write_outputs` wrote (``RUN/predict``); logged as
        artifacts under ``predict/``.
    run_dir : path-like
        ``RUN``; the local store lives here unless ``tracking_uri`` or MLFLOW_TRACKING_URI says otherwise.
    experiment : str
        MLflow experiment name.
    run_name : str, optional
    tracking_uri : str, optional
        Overrides :func:`resolve_tracking_uri`.
    """
    import mlflow  # deferred: mlflow takes ~1 s to import and most commands never track

    run_dir = Path(run_dir)
    uri = tracking_uri or resolve_tracking_uri(run_dir)
    if uri.startswith("sqlite:"):
        run_dir.mkdir(parents=True, exist_ok=True)
    with open_store(uri) as client:
        exp_id = _experiment_id(client, experiment, run_dir, uri)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
            run_id = run.info.run_id
            mlflow.set_tags({"tupac.feature_table_sha256": result.feature_hash, "tupac.component": "predict"})
            mlflow.log_params(_params(result))
            for key, value, step in _metrics_to_log(result):
                client.log_metric(run_id, key, value, step=step)
            mlflow.log_artifacts(str(outputs_dir), artifact_path="predict")
            versions, champion = {}, {}
            for task in ("grade", "rna"):
                versions[task], champion[task] = _log_model(client, result, task, run_id)
            mlflow.set_tags({f"tupac.version.{t}": v for t, v in versions.items()}
                            | {f"tupac.champion.{t}": str(c).lower() for t, c in champion.items()})
    return TrackedFit(uri, exp_id, run_id, versions, champion)
