"""Mitosis training as an MLflow run: params, per-epoch metrics, artifacts, a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def registered_name(arch: str) -> str:
    """Registry name of a mitosis model (``tupac-mitosis-mitosnet``)."""
    return f"tupac-mitosis-{arch}"


def tracked_mitosis_training(
    data: Path,
    out_dir: Path,
    config,
    *,
    tracking_uri: str | None = None,
    say: Callable[[str], None] | None = None,
):
    """Run :func:`tupac.mitosis.training.train_mitosis` inside an MLflow run and register the model.

    The store defaults to ``sqlite:///<out_dir>/../mlflow.db`` (beside all the models) unless
    ``tracking_uri`` or ``MLFLOW_TRACKING_URI`` says otherwise. The run is marked FAILED (and the
    error re-raised) when training fails.
    """
    from tupac.mitosis.training import train_mitosis
    from tupac.train.mlflow_tracker import MlflowTracker, default_tracking_uri

    models_dir = Path(out_dir).parent
    models_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(models_dir)
    tracker = MlflowTracker(uri, run_name=f"mitosis-{config.arch}", artifact_root=models_dir / "mlartifacts")
    tracker.set_tags({"tupac.component": "mitosis", "tupac.data": str(Path(data).resolve())})
    try:
        result = train_mitosis(data, out_dir, config, tracker=tracker, progress=say)
        version = tracker.register_model_dir(
            result.model_dir, registered_name(config.arch),
            description=f"{config.arch} mitosis detector (two-stage, hard negatives) trained on {data}",
        )
        tracker.set_tags({"tupac.registered_version": version})
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return result
