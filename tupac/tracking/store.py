"""Where tracked runs go: a folder's own MLflow store, or the server named by ``MLFLOW_TRACKING_URI``.

By default a folder carries its own store: ``sqlite:///DIR/mlflow.db`` for runs and the model
registry, artifacts under ``DIR/mlartifacts``. ``DIR`` is the run directory (``RUN``) for the
features and the cohort fit, the models folder (``MODELS``) for network training.
``MLFLOW_TRACKING_URI`` (e.g. an ``http://`` MLflow server) replaces it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

__all__ = ["local_tracking_uri", "local_artifact_root", "resolve_tracking_uri", "open_store", "store_error",
           "mlflow_ui_command"]


def local_tracking_uri(run_dir: str | Path) -> str:
    """``sqlite:////abs/RUN/mlflow.db``: the run directory's own store."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def local_artifact_root(run_dir: str | Path) -> Path:
    return Path(run_dir).resolve() / "mlartifacts"


def resolve_tracking_uri(run_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else :func:`local_tracking_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(run_dir)


@contextlib.contextmanager
def open_store(uri: str):
    """Point mlflow's fluent API at ``uri`` (runs and registry) for the duration; yields a client of it."""
    import mlflow  # deferred: mlflow takes ~1 s to import and most commands never track

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


def store_error() -> type[Exception]:
    """The exception class a store raises when it refuses a call (MLflow's own, imported on demand),
    for callers that catch it without importing MLflow themselves."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow takes ~1 s to import and most commands never track

    return MlflowException


def mlflow_ui_command(run_dir: str | Path, port: int = 5000, python: str | None = None) -> list[str]:
    """The ``mlflow server`` command line serving the run's local store on 127.0.0.1."""
    run_dir = Path(run_dir).resolve()
    return [
        python or sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", local_tracking_uri(run_dir),
        "--default-artifact-root", local_artifact_root(run_dir).as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
