"""A :class:`tupac.train.tracking.Tracker` that writes one MLflow run, and registration of a trained
model folder (safetensors + card) in the MLflow Model Registry.

Where the run goes is the caller's choice (:mod:`tupac.tracking.store`). The registered version's
source is the run's ``model/`` artifact folder: the same safetensors and JSON card
``tupac.models.load_model`` reads, never a pickle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENT", "MlflowTracker"]

#: The experiment of the networks' trainings (tumor, mitosis, the general-feature grade network).
EXPERIMENT = "tupac-training"


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
        from mlflow import MlflowClient  # deferred: mlflow takes ~1 s to import and most commands never track

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
        from mlflow.exceptions import MlflowException  # deferred with mlflow, as above

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

