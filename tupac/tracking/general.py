"""The general-feature grade network's training as MLflow runs, in the run's own store.

One ``tupac features --labels`` invocation fits the grade network ``n_splits + 1`` times (one network per
cross-fitting fold, whose held-out fold gets its out-of-fold features, and one on every training slide,
which scores new slides). They are logged as one parent run with a nested run per fit::

    general-grade                              params of the whole fit, out-of-fold accuracy / log loss
    ├── general-grade fold 0 .. fold k-1       per-epoch train_loss, heldout_loss, heldout_accuracy; model/
    └── general-grade all training slides      per-epoch train_loss; model/ -> registered tupac-general-grade

Nested runs rather than one run with per-fold metric keys: in the MLflow UI the fold runs are rows of
one table and their curves overlay in one chart per metric (``train_loss`` of every fold, not a chart
per ``fold3.train_loss`` key), and the registered version's source run holds just the network it
registers (its ``model/`` folder), not every fold's weights.

The fits are recorded in memory while they run (:class:`GeneralFitRecord`, one
:class:`tupac.train.tracking.MemoryTracker` per fit) and sent to MLflow afterwards, once the features
are written: a fit takes seconds, so nothing is lost by not streaming it, MLflow can neither interrupt
nor alter the fit, and each run's metrics go in a few batched writes instead of one per value.

The store is the one ``tupac fit`` uses for the same run (:func:`tupac.tracking.store.resolve_tracking_uri`:
``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///RUN/mlflow.db`` with artifacts in ``RUN/mlartifacts``);
the experiment is the networks' one (``tupac-training``, as for the tumor and mitosis networks).
Weights are logged as safetensors with their JSON card (``general.safetensors`` + ``general.json``, what
:func:`tupac.features.general.load_grade_net` reads); nothing is pickled.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tupac.features.general import WEIGHTS_FILE, folds_hash, ids_hash, save_grade_net
from tupac.tracking.loading import file_sha256
from tupac.tracking.runs import MlflowTracker
from tupac.tracking.store import local_artifact_root, resolve_tracking_uri
from tupac.train.tracking import MemoryTracker

__all__ = ["REGISTERED_NAME", "GeneralFitRecord", "TrackedGeneral", "fit_params", "log_general_fit"]

REGISTERED_NAME = "tupac-general-grade"
RUN_NAME = "general-grade"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class _TimedTracker(MemoryTracker):
    """A MemoryTracker that also keeps when each epoch was reported (ms since the epoch, as MLflow
    stamps metrics), so the curves logged afterwards carry the fit's own times."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[int] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        self.times.append(int(time.time() * 1000))


class GeneralFitRecord:
    """``tracker_for`` of :func:`tupac.features.general.cross_fit`: keeps each fit's params and
    per-epoch metrics (with their times) in memory, by fit name (``fold0`` .., ``all``), in the order they ran."""

    def __init__(self) -> None:
        self.fits: dict[str, _TimedTracker] = {}

    def __call__(self, name: str) -> MemoryTracker:
        self.fits[name] = _TimedTracker()
        return self.fits[name]


@dataclass(frozen=True)
class TrackedGeneral:
    """Where the fit went: the store, the parent run, each fit's run and the registered version."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_ids: dict[str, str]
    registered_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "run_ids": dict(self.run_ids),
                "registered_model": REGISTERED_NAME, "registered_version": self.registered_version}


def fit_params(gcfg, *, in_channels: int, frozen_model: str, frozen_arch: str, frozen_sha256: str,
               n_patches: int, patch_px: int, n_splits: int, train_ids: Sequence[str], folds: Sequence[int],
               volumes_sha256: str) -> dict[str, Any]:
    """Params shared by every run of one cross-fit (architecture, frozen network, patches, training, data)."""
    return {
        # The config's width says which design ran: 0 = 1x1 conv straight to `dim` channels, pooled
        # (the feature layer); > 0 = the earlier bottleneck of `width` channels, pooled, then Linear to `dim`.
        "architecture": ("GradeNet (channel standardization, 1x1 conv to dim channels + ReLU, global average pool "
                         "= the feature layer, dropout, 3-way head)" if not getattr(gcfg, "width", 0) else
                         "GradeNet (channel standardization, 1x1 conv to width channels + ReLU, global average "
                         "pool, dim-unit layer + ReLU, 3-way head)"),
        "in_channels": in_channels,
        **asdict(gcfg),
        "optimizer": "Adam, full batch",
        "frozen_model": frozen_model,
        "frozen_model_arch": frozen_arch,
        "frozen_model_sha256": frozen_sha256,
        "patches_per_slide": n_patches,
        "patch_px": patch_px,
        "n_splits": n_splits,
        "n_train_slides": len(train_ids),
        "train_ids_sha256": ids_hash(list(train_ids)),
        "folds_sha256": folds_hash(list(train_ids), folds),
        "volumes_sha256": volumes_sha256,
    }


def _oof_metrics(cf, grades: np.ndarray) -> dict[str, float]:
    """Accuracy and log loss of the out-of-fold grade probabilities (the last three columns)."""
    p = np.clip(cf.train[:, -3:], 1e-15, 1.0)
    y = np.asarray(grades, dtype=np.int64) - 1
    return {"oof_accuracy": float((p.argmax(axis=1) == y).mean()),
            "oof_log_loss": float(-np.log(p[np.arange(len(y)), y]).mean())}


def _log_batch(client, run_id: str, params: dict[str, Any], metrics: list[tuple[int, dict[str, float]]],
               times: Sequence[int] | None = None) -> None:
    """Params and metrics ``[(step, {key: value})]`` (stamped ``times``, default now) in batched writes;
    non-finite values are left out, as :class:`tupac.tracking.runs.MlflowTracker` does."""
    from mlflow.entities import Metric, Param  # deferred: mlflow takes ~1 s to import and most commands never track

    now = int(time.time() * 1000)
    stamps = list(times) if times is not None else [now] * len(metrics)
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    ms = [Metric(k, float(v), t, int(step)) for (step, d), t in zip(metrics, stamps)
          for k, v in d.items() if np.isfinite(v)]
    for i in range(0, len(ms), _BATCH):
        client.log_batch(run_id, metrics=ms[i : i + _BATCH])


class _Runs:
    """The MLflow runs one :func:`log_general_fit` opens, kept in the order opened so that they can be
    closed together: all FINISHED on success, or all FAILED (newest first) when anything raised."""

    def __init__(self, uri: str, artifact_root: Path, run_dir: Path) -> None:
        self.uri, self.artifact_root, self.run_dir = uri, artifact_root, run_dir
        self.opened: list[MlflowTracker] = []

    def open(self, name: str, parent: str | None) -> MlflowTracker:
        """Start run ``name`` with the general-features tags, nested under run ``parent`` if given."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # deferred: mlflow takes ~1 s to import

        t = MlflowTracker(self.uri, run_name=name, artifact_root=self.artifact_root)
        self.opened.append(t)
        tags = {"tupac.component": "general", "tupac.run": str(self.run_dir.resolve())}
        if parent is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent
        t.set_tags(tags)
        return t

    def fail(self) -> None:
        """Mark every opened run FAILED, ignoring errors (the caller re-raises the first one)."""
        for t in reversed(self.opened):
            try:
                t.finish("FAILED")
            except Exception:  # the store that just failed may refuse this too; the first error is the one to see
                pass

    def finish(self) -> None:
        """Mark every opened run FINISHED, in the order they were opened."""
        for t in self.opened:
            t.finish()


def log_general_fit(
    run_dir: str | Path,
    cf,
    record: GeneralFitRecord,
    *,
    train_ids: Sequence[str],
    grades: Sequence[int],
    params: dict[str, Any],
    meta: dict[str, Any],
    net_dir: str | Path,
    tracking_uri: str | None = None,
) -> TrackedGeneral:
    """Log one cross-fit of the grade network and register its all-training-slides network.

    Parameters
    ----------
    run_dir : path
        ``RUN``: its ``mlflow.db`` is the store unless ``tracking_uri`` or ``MLFLOW_TRACKING_URI`` says otherwise.
    cf : tupac.features.general.CrossFit
        The fit (``fold_nets``, ``net``, ``folds``, out-of-fold rows).
    record : GeneralFitRecord
        What the fits reported while they ran.
    train_ids, grades
        The training slides (label-file order) and their grades.
    params : dict
        :func:`fit_params`, logged on every run.
    meta : dict
        The card of the saved networks (what ``general.json`` holds besides the shape).
    net_dir : path
        The folder :func:`tupac.features.general.save_grade_net` wrote the final network to
        (``RUN/features/general``): logged as the registered version's ``model/``.
    tracking_uri : str, optional

    Returns
    -------
    TrackedGeneral

    A failure marks the runs already opened FAILED and re-raises.
    """
    run_dir = Path(run_dir)
    uri = tracking_uri or resolve_tracking_uri(run_dir)
    runs = _Runs(uri, local_artifact_root(run_dir), run_dir)
    ids = list(train_ids)
    try:
        parent = runs.open(RUN_NAME, None)
        _log_batch(parent.client, parent.run_id, params, [(0, _oof_metrics(cf, np.asarray(grades)))])
        run_ids = _log_fold_runs(runs, parent.run_id, cf, record, ids, params, meta)
        fit = record.fits["all"]
        final = runs.open(f"{RUN_NAME} all training slides", parent.run_id)
        _log_batch(final.client, final.run_id, {**params, **fit.params}, fit.metrics, fit.times)
        version = _register_final(final, Path(net_dir), params, len(ids), run_dir)
        parent.set_tags({"tupac.registered_version": version})
        run_ids["all"] = final.run_id
    except BaseException:
        runs.fail()
        raise
    runs.finish()
    return TrackedGeneral(uri, parent.experiment_id, parent.run_id, run_ids, version)


def _log_fold_runs(runs: _Runs, parent_id: str, cf, record: GeneralFitRecord, ids: list[str],
                   params: dict[str, Any], meta: dict[str, Any]) -> dict[str, str]:
    """One nested run per cross-fitting fold: its params (with its held-out slides), its per-epoch
    metrics and its network as ``model/``. Returns ``{"fold0": run_id, ..}``."""
    run_ids: dict[str, str] = {}
    # The fold networks exist only in memory: saved to a scratch folder just long enough to log them.
    with tempfile.TemporaryDirectory() as tmp:
        for k, net in enumerate(cf.fold_nets):
            fit = record.fits[f"fold{k}"]
            held = [s for s, f in zip(ids, cf.folds) if f == k]
            child = runs.open(f"{RUN_NAME} fold {k}", parent_id)
            _log_batch(child.client, child.run_id,
                       {**params, **fit.params, "heldout_ids": ",".join(held)}, fit.metrics, fit.times)
            d = save_grade_net(net, Path(tmp) / f"fold{k}", dict(meta, fold=k, heldout_ids=held))
            child.log_artifact(d, "model")
            run_ids[f"fold{k}"] = child.run_id
    return run_ids


def _register_final(final: MlflowTracker, net_dir: Path, params: dict[str, Any], n_slides: int, run_dir: Path) -> str:
    """Register ``net_dir`` (the all-training-slides network) from run ``final`` as a new version of
    :data:`REGISTERED_NAME`, tag the version with its provenance and the run with the version.

    Returns
    -------
    str
        The registered version.
    """
    version = final.register_model_dir(
        net_dir, REGISTERED_NAME,
        description=f"grade network of the general features on the {params.get('frozen_model')} network, "
                    f"fitted on {n_slides} training slides of {run_dir.resolve()}")
    client = final.client
    for k, v in {"tupac.weights_sha256": file_sha256(net_dir / WEIGHTS_FILE),
                 "tupac.frozen_model_sha256": params.get("frozen_model_sha256", ""),
                 "tupac.train_ids_sha256": params.get("train_ids_sha256", ""),
                 "tupac.run_id": final.run_id}.items():
        client.set_model_version_tag(REGISTERED_NAME, version, k, str(v))
    final.set_tags({"tupac.registered_version": version})
    return version
