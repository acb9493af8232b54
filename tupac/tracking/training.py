"""A tumor or mitosis network's training as one MLflow run: params, per-epoch metrics, artifacts, and
the trained model folder registered as ``tupac-<task>-<arch>`` (``tupac-tumor-locnet``,
``tupac-mitosis-mitosnet``).

The store defaults to ``MODELS/mlflow.db`` beside all the models (artifacts in ``MODELS/mlartifacts``)
unless ``tracking_uri`` or ``MLFLOW_TRACKING_URI`` says otherwise (:mod:`tupac.tracking.store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tupac.mitosis.training import train_mitosis
from tupac.tracking.runs import MlflowTracker
from tupac.tracking.store import local_artifact_root, resolve_tracking_uri
from tupac.tumor.training import train_tumor

__all__ = ["TASKS", "registered_name", "tracked_training"]

#: Each task's training function and the description of its registered versions.
TASKS = {
    "tumor": (train_tumor, "{arch} tumor localizer (two-stage active learning) trained on {data}"),
    "mitosis": (train_mitosis, "{arch} mitosis detector (two-stage, hard negatives) trained on {data}"),
}


def registered_name(task: str, arch: str) -> str:
    """Registry name of a task's model (``tupac-tumor-locnet``, ``tupac-mitosis-mitosnet``)."""
    return f"tupac-{task}-{arch}"


def tracked_training(task: str, data: Path, out_dir: Path, config, *, tracking_uri: str | None = None,
                     say: Callable[[str], None] | None = None):
    """Train ``task``'s network (:func:`tupac.tumor.training.train_tumor` or
    :func:`tupac.mitosis.training.train_mitosis`, called as ``train(data, out_dir, config, tracker=,
    progress=)``) as one MLflow run, and register the model folder it returns as :func:`registered_name`.

    The store defaults to ``<out_dir>/../mlflow.db`` (beside all the models) unless ``tracking_uri``
    or ``MLFLOW_TRACKING_URI`` says otherwise. A failed training marks the run FAILED and re-raises.
    """
    train_fn, description = TASKS[task]
    models_dir = Path(out_dir).parent
    models_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or resolve_tracking_uri(models_dir)
    tracker = MlflowTracker(uri, run_name=f"{task}-{config.arch}", artifact_root=local_artifact_root(models_dir))
    tracker.set_tags({"tupac.component": task, "tupac.data": str(Path(data).resolve())})
    try:
        result = train_fn(data, out_dir, config, tracker=tracker, progress=say)
        version = tracker.register_model_dir(result.model_dir, registered_name(task, config.arch),
                                             description=description.format(arch=config.arch, data=data))
        tracker.set_tags({"tupac.registered_version": version})
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return result
