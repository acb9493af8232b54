"""Mitosis training as an MLflow run: params, per-epoch metrics, artifacts, a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def registered_name(arch: str) -> str:
    """Registry name of a mitosis model (``tupac-mitosis-mitosnet``)."""
    return f"tupac-mitosis-{arch}"


def tracked_mitosis_training(data: Path, out_dir: Path, config, *, tracking_uri: str | None = None,
                             say: Callable[[str], None] | None = None):
    """:func:`tupac.mitosis.training.train_mitosis` as an MLflow run, registered as :func:`registered_name`."""
    from tupac.mitosis.training import train_mitosis
    from tupac.train.mlflow_tracker import tracked_training

    return tracked_training("mitosis", train_mitosis, data, out_dir, config, tracking_uri=tracking_uri, say=say,
                            description=f"{config.arch} mitosis detector (two-stage, hard negatives) trained on {data}")
