"""The tracking hook the training loop reports to (MLflow plugs in through ``tupac.tracking.runs.MlflowTracker``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """Receives a run's parameters, per-epoch metrics and files."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """Tracks nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


class MemoryTracker:
    """Keeps everything in lists (for tests and notebooks)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))


class StageTracker:
    """Forwards to a tracker with names prefixed by the training stage (``stage1.val_loss``), so the
    two stages of a two-stage training share one run without their curves or params colliding."""

    def __init__(self, tracker: Tracker, stage: int) -> None:
        self.tracker, self.prefix = tracker, f"stage{stage}."

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker.log_params({self.prefix + k: v for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(path, f"{self.prefix.rstrip('.')}/{artifact_path or ''}".rstrip("/"))


def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> flat ``{"train.lr": 0.003, ...}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def is_number(v: Any) -> bool:
    """A real number worth logging as a metric (not a bool)."""
    import numpy as np

    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
