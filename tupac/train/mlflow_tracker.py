"""MLflow tracking for network training: a :class:`tupac.train.Tracker` that writes to MLflow, and
registration of a trained model folder (safetensors + card) in the MLflow Model Registry.

The default store is a local SQLite file beside the models (``MODELS/mlflow.db``, artifacts in
``MODELS/mlartifacts``), the embedded default; ``MLFLOW_TRACKING_URI`` (or an explicit URI) points
at a tracking server instead. The registered version's source is the run's ``model/`` artifact
folder: the same safetensors and JSON card ``tupac.models.load_model`` reads, never a pickle.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

EXPERIMENT = "tupac-training"


def default_tracking_uri(models_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<models_dir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(models_dir).resolve() / 'mlflow.db'}"


class MlflowTracker:
    """Logs one training run to MLflow (params, per-epoch metrics, artifacts).

    Parameters
    ----------
    tracking_uri : str
        Where runs go (``sqlite:///...`` or ``http://host:port``).
    run_name : str
        Shown in the MLflow UI.
    artifact_root : path, optional
        Artifact location of a newly created experiment (local stores only).
    experiment : str
        Experiment name.
    """

    def __init__(self, tracking_uri: str, run_name: str, artifact_root: Path | None = None, experiment: str = EXPERIMENT) -> None:
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = artifact_root.resolve().as_uri() if (artifact_root and tracking_uri.startswith("sqlite:")) else None
            exp_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.experiment_id = exp_id

    def log_params(self, params: dict[str, Any]) -> None:
        for k, v in params.items():
            self.client.log_param(self.run_id, k, str(v)[:6000])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            if v is not None and math.isfinite(float(v)):
                self.client.log_metric(self.run_id, k, float(v), step=int(step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def register_model_dir(self, model_dir: Path, name: str, description: str = "") -> str:
        """Log ``model_dir`` (weights, card, stain reference) as ``model/`` and register it as ``name``.

        Returns the new model version (a string, as MLflow numbers them).
        """
        from mlflow.exceptions import MlflowException

        files = [p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in (".safetensors", ".json")]
        for p in files:
            self.client.log_artifact(self.run_id, str(p), "model")
        try:
            self.client.create_registered_model(name, description=description)
        except MlflowException:
            pass  # already registered: add a version
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/model"
        mv = self.client.create_model_version(name, source=source, run_id=self.run_id, description=description)
        return str(mv.version)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def tracked_training(
    task: str,
    train_fn,
    data: Path,
    out_dir: Path,
    config,
    *,
    description: str,
    tracking_uri: str | None = None,
    say=None,
):
    """Run ``train_fn(data, out_dir, config, tracker=, progress=)`` as one MLflow run and register
    the model folder it returns as ``tupac-<task>-<arch>``.

    The store defaults to ``<out_dir>/../mlflow.db`` (beside all the models) unless ``tracking_uri``
    or ``MLFLOW_TRACKING_URI`` says otherwise. A failed training marks the run FAILED and re-raises.
    """
    models_dir = Path(out_dir).parent
    models_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(models_dir)
    tracker = MlflowTracker(uri, run_name=f"{task}-{config.arch}", artifact_root=models_dir / "mlartifacts")
    tracker.set_tags({"tupac.component": task, "tupac.data": str(Path(data).resolve())})
    try:
        result = train_fn(data, out_dir, config, tracker=tracker, progress=say)
        version = tracker.register_model_dir(result.model_dir, f"tupac-{task}-{config.arch}", description=description)
        tracker.set_tags({"tupac.registered_version": version})
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return result
