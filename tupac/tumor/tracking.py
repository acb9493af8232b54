"""Tumor training as an MLflow run: params, per-epoch metrics, artifacts, a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def registered_name(arch: str) -> str:
    """Registry name of a tumor model (``tupac-tumor-locnet``)."""
    return f"tupac-tumor-{arch}"


def tracked_tumor_training(data: Path, out_dir: Path, config, *, tracking_uri: str | None = None,
                           say: Callable[[str], None] | None = None):
    """:func:`tupac.tumor.training.train_tumor` as an MLflow run, registered as :func:`registered_name`."""
    from tupac.train.mlflow_tracker import tracked_training
    from tupac.tumor.training import train_tumor

    return tracked_training("tumor", train_tumor, data, out_dir, config, tracking_uri=tracking_uri, say=say,
                            description=f"{config.arch} tumor localizer (two-stage active learning) trained on {data}")
