"""MLflow tracking of fits and safe loading of registered models (the only module that imports mlflow).

Store
-----
By default a run directory carries its own store: ``sqlite:///RUN/mlflow.db`` for runs and the
model registry, artifacts under ``RUN/mlartifacts``. ``MLFLOW_TRACKING_URI`` (e.g. an
``http://`` MLflow server) replaces it.

Logging
-------
:func:`log_fit` makes one MLflow run per fit: the feature-table hash, every config value as a
param, every metric (per CV repeat as steps, and mean/SD), ``RUN/predict/*`` as artifacts, and the
best grade and RNA pipelines as MLflow models with their input signature, in the skops format,
registered as ``tupac-grade-classifier`` / ``tupac-rna-regressor``. The alias ``champion`` moves
to the new version when its cross-validated selection metric (quadratic kappa, Spearman rho)
beats the current champion's.

Loading safely
--------------
Neither pickle nor cloudpickle is ever used, and ``mlflow.sklearn.load_model`` is not either: it
takes the skops allow-list from the model's own MLmodel file, so a crafted model could trust
anything. :func:`load_registered_model` instead

1. accepts only ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URIs, resolved in the run's
   own tracking store (local SQLite, or the server named by MLFLOW_TRACKING_URI);
2. requires the model's artifacts to lie inside that store (``RUN/mlartifacts`` for the local
   store; the server's own ``mlflow-artifacts:`` proxy for a server);
3. requires ``serialization_format: skops`` in MLmodel (read with ``yaml.safe_load``);
4. checks the SHA-256 of ``model.skops`` against the one recorded on the model version at
   logging time;
5. lists the file's types with ``skops.io.get_untrusted_types`` and refuses any type outside
   tupac's fixed :data:`TRUSTED_TYPES` (beyond skops' own defaults), then loads with exactly that
   list.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import yaml

from tupac.errors import ModelFileError, UntrustedModelError
from tupac.predict.fit import SELECTION_METRIC, FitResult

__all__ = [
    "MODEL_NAMES",
    "CHAMPION_ALIAS",
    "TRUSTED_TYPES",
    "local_tracking_uri",
    "resolve_tracking_uri",
    "log_fit",
    "TrackedFit",
    "LoadedModel",
    "load_registered_model",
    "mlflow_ui_command",
]

MODEL_NAMES = {"grade": "tupac-grade-classifier", "rna": "tupac-rna-regressor"}
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "tupac"

#: Types beyond skops' defaults that tupac's pipelines contain (see tupac.predict.estimators).
#: A model file referencing anything else is refused.
TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.tree._tree.Tree",
)

_TAG_SHA = "tupac.model_sha256"
_TAG_SCORE = "tupac.selection_score"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def local_tracking_uri(run_dir: str | Path) -> str:
    """``sqlite:////abs/RUN/mlflow.db``: the run directory's own store."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def local_artifact_root(run_dir: str | Path) -> Path:
    return Path(run_dir).resolve() / "mlartifacts"


def resolve_tracking_uri(run_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else :func:`local_tracking_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(run_dir)


@contextlib.contextmanager
def _store(uri: str):
    """Point mlflow's fluent API at ``uri`` (runs and registry) for the duration."""
    import mlflow

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses); put the
    # environment back exactly, or a later resolve_tracking_uri() would see our store (or
    # mlflow's ./mlflow.db default) as if the user had set it.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    import sklearn
    import skops

    return [f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}", f"numpy=={np.__version__}"]


@dataclass(frozen=True)
class TrackedFit:
    """Where a fit went: the MLflow run and the registered model versions."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    versions: dict[str, str]
    champion: dict[str, bool]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _log_model(client, result: FitResult, task: str, run_id: str) -> tuple[str, bool]:
    """Log, register, checksum and maybe crown the best pipeline of ``task``."""
    import mlflow
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

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
        sha = _file_sha256(local / _skops_file(local))
    score = result.metrics["summary"]["best"][task][f"{SELECTION_METRIC[task]}_mean"]
    tags = {
        _TAG_SHA: sha,
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
    import mlflow

    run_dir = Path(run_dir)
    uri = tracking_uri or resolve_tracking_uri(run_dir)
    if uri.startswith("sqlite:"):
        run_dir.mkdir(parents=True, exist_ok=True)
    with _store(uri) as client:
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


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline loaded by :func:`load_registered_model` and where it came from."""

    model: object
    name: str
    version: str
    run_id: str
    task: str


def _skops_file(model_dir: Path) -> str:
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ModelFileError(model_dir, "no MLmodel file: not an MLflow model")
    conf = yaml.safe_load(mlmodel.read_text()) or {}
    sk = (conf.get("flavors") or {}).get("sklearn")
    if not sk:
        raise UntrustedModelError(f"{mlmodel}: not a scikit-learn MLflow model")
    if sk.get("serialization_format") != "skops":
        raise UntrustedModelError(
            f"{mlmodel}: serialization format {sk.get('serialization_format')!r}; only 'skops' models are loaded "
            "(pickle and cloudpickle can run arbitrary code)"
        )
    name = str(sk.get("pickled_model", ""))
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UntrustedModelError(f"{mlmodel}: suspicious model file name {name!r}")
    return name


def _check_location(artifact_location: str, uri: str, run_dir: Path | None) -> None:
    parsed = urlparse(artifact_location)
    if uri.startswith("sqlite:"):
        root = local_artifact_root(run_dir) if run_dir is not None else None
        if parsed.scheme not in ("file", "") or root is None:
            raise UntrustedModelError(f"model artifacts at {artifact_location} are not in the run's local store")
        path = Path(url2pathname(parsed.path) if parsed.scheme else artifact_location).resolve()
        if not path.is_relative_to(root):
            raise UntrustedModelError(f"model artifacts at {path} lie outside the run's store {root}")
    elif parsed.scheme != "mlflow-artifacts":
        raise UntrustedModelError(
            f"model artifacts at {artifact_location} are not served by the tracking server {uri} (mlflow-artifacts:)"
        )


def load_registered_model(model_uri: str, run_dir: str | Path | None = None, *, tracking_uri: str | None = None) -> LoadedModel:
    """Load a registered tupac pipeline without pickle, from the run's own store only.

    Parameters
    ----------
    model_uri : str
        ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
    run_dir : path-like, optional
        ``RUN``, whose ``mlflow.db`` is the store (unless MLFLOW_TRACKING_URI or ``tracking_uri``).
    tracking_uri : str, optional

    Raises
    ------
    UntrustedModelError
        Any check in the module docstring fails.
    ModelFileError
        The model or its store cannot be found.
    """
    import mlflow
    import skops.io
    from mlflow.exceptions import MlflowException

    m = _MODEL_URI.match(model_uri)
    if not m:
        raise UntrustedModelError(
            f"{model_uri}: only models:/NAME@ALIAS or models:/NAME/VERSION URIs of the run's own store are loaded"
        )
    if tracking_uri is None and run_dir is None:
        raise ModelFileError(".", "give the run directory (or a tracking URI) whose store holds the model")
    uri = tracking_uri or resolve_tracking_uri(run_dir)
    if uri.startswith("sqlite:") and not (Path(run_dir or ".") / "mlflow.db").is_file():
        raise ModelFileError(Path(run_dir or ".") / "mlflow.db", "no MLflow store in the run directory (run `tupac fit` first)")
    run_dir = Path(run_dir).resolve() if run_dir is not None else None
    with _store(uri) as client:
        try:
            mv = (client.get_model_version_by_alias(m["name"], m["alias"]) if m["alias"]
                  else client.get_model_version(m["name"], m["version"]))
            # over REST the version may carry its logged model only in ``source`` (models:/m-...)
            src = re.match(r"^models:/(m-[0-9a-f]+)$", mv.source or "")
            model_id = mv.model_id or (src.group(1) if src else None)
            location = client.get_logged_model(model_id).artifact_location if model_id else None
            if location is None:
                location = client.get_run(mv.run_id).info.artifact_uri
        except MlflowException as e:
            raise ModelFileError(model_uri, f"not found in the tracking store {uri}: {e.message}") from e
        _check_location(location, uri, run_dir)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=tmp))
            path = local / _skops_file(local)
            expected = mv.tags.get(_TAG_SHA)
            if expected is None:
                raise UntrustedModelError(f"{model_uri}: version {mv.version} has no recorded checksum; not logged by tupac")
            if _file_sha256(path) != expected:
                raise UntrustedModelError(f"{model_uri}: {path.name} does not match its recorded SHA-256")
            types = skops.io.get_untrusted_types(file=path)
            unknown = sorted(set(types) - set(TRUSTED_TYPES))
            if unknown:
                raise UntrustedModelError(f"{model_uri}: model references types outside tupac's allow-list: {unknown}")
            model = skops.io.load(path, trusted=list(types))
    if not hasattr(model, "predict"):
        raise UntrustedModelError(f"{model_uri}: loaded object {type(model).__name__} is not an estimator")
    return LoadedModel(model, mv.name, str(mv.version), mv.run_id, mv.tags.get("tupac.task", ""))


def mlflow_ui_command(run_dir: str | Path, port: int = 5000, python: str | None = None) -> list[str]:
    """The ``mlflow server`` command line serving the run's local store on 127.0.0.1."""
    import sys

    run_dir = Path(run_dir).resolve()
    return [
        python or sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", local_tracking_uri(run_dir),
        "--default-artifact-root", local_artifact_root(run_dir).as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
