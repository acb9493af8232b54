"""Safe loading of the registered cohort models (the grade classifier and RNA regressor :mod:`tupac.tracking.fits`
registers).

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

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml

from tupac.errors import ModelFileError, UntrustedModelError
from tupac.heatmaps.commit import file_sha256 as fingerprint
from tupac.tracking.store import local_artifact_root, open_store, resolve_tracking_uri

__all__ = ["TRUSTED_TYPES", "TAG_SHA", "LoadedModel", "load_registered_model", "file_sha256", "skops_file"]

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

#: The model-version tag holding the SHA-256 of its ``model.skops``, set at logging time.
TAG_SHA = "tupac.model_sha256"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, streamed (the run format's :func:`tupac.heatmaps.commit.file_sha256`)."""
    return fingerprint(path).sha256


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline loaded by :func:`load_registered_model` and where it came from."""

    model: object
    name: str
    version: str
    run_id: str
    task: str


def skops_file(model_dir: Path) -> str:
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
    import mlflow  # deferred: mlflow takes ~1 s to import and most commands never track
    import skops.io  # deferred: seconds to import, needed only when a model is loaded
    from mlflow.exceptions import MlflowException  # deferred with mlflow

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
    with open_store(uri) as client:
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
            path = local / skops_file(local)
            expected = mv.tags.get(TAG_SHA)
            if expected is None:
                raise UntrustedModelError(f"{model_uri}: version {mv.version} has no recorded checksum; not logged by tupac")
            if file_sha256(path) != expected:
                raise UntrustedModelError(f"{model_uri}: {path.name} does not match its recorded SHA-256")
            types = skops.io.get_untrusted_types(file=path)
            unknown = sorted(set(types) - set(TRUSTED_TYPES))
            if unknown:
                raise UntrustedModelError(f"{model_uri}: model references types outside tupac's allow-list: {unknown}")
            model = skops.io.load(path, trusted=list(types))
    if not hasattr(model, "predict"):
        raise UntrustedModelError(f"{model_uri}: loaded object {type(model).__name__} is not an estimator")
    return LoadedModel(model, mv.name, str(mv.version), mv.run_id, mv.tags.get("tupac.task", ""))
