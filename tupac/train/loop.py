"""One training loop for every task and model in the registry.

``train(model, train_ds, val_ds, config, out_dir)`` trains ``model`` in place with AdamW and
cross-entropy on ``model.logits``, validates every epoch, checkpoints every epoch and resumes from
the newest checkpoint in ``out_dir`` when called again. It writes::

    OUT/checkpoints/epoch_NNNN/   per-epoch weights + optimizer state (see tupac.train.checkpoint)
    OUT/best/                     the validation-chosen epoch as model.safetensors + card.json
    OUT/history.json              per-epoch metrics

Reproducibility: python, numpy and torch are seeded from ``config.seed``; each epoch's shuffle,
augmentation and dropout streams are re-derived from ``(seed, epoch)``, so a run stopped after epoch
k and resumed gives bitwise the same weights as an uninterrupted run (CPU, ``deterministic=True``).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tupac.errors import ConfigError
from tupac.models.base import TupacModel
from tupac.models.card import ModelCard
from tupac.models.io import load_card, save_model
from tupac.train.augment import augment_batch
from tupac.train.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from tupac.train.config import MONITORS, TrainConfig
from tupac.train.data import EpochSampler, PatchSource, collate, derive_seed, fingerprint
from tupac.train.metrics import binary_metrics
from tupac.train.tracking import NullTracker, Tracker

# Config fields a resumed run may change without changing what it computes.
_RESUMABLE_CHANGES = {"epochs", "device", "num_workers", "keep_checkpoints", "patience", "eval_batch_size"}


@dataclass
class EpochState:
    """What a callback sees after each epoch. Return True from the callback to stop training."""

    epoch: int
    metrics: dict[str, float]
    is_best: bool
    model: TupacModel
    out_dir: Path


Callback = Callable[[EpochState], "bool | None"]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`. ``model_dir`` holds the best epoch's weights and card."""

    best_epoch: int
    best_value: float
    monitor: str
    history: list[dict[str, float]]
    model_dir: Path
    last_checkpoint: Path
    epochs_run: int
    stopped_early: bool
    card: ModelCard = field(repr=False)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_input(batch: torch.Tensor, device: torch.device, patch: int) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S) in [0, 1] on ``device`` (no crop yet)."""
    if batch.shape[1] < patch or batch.shape[2] < patch:
        raise ConfigError(f"patches are {tuple(batch.shape[1:3])} px, smaller than the model's {patch} px input")
    return batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def _center_crop(x: torch.Tensor, patch: int) -> torch.Tensor:
    s = x.shape[-1]
    if s == patch:
        return x
    o = (s - patch) // 2
    return x[..., o : o + patch, o : o + patch]


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return cfg.lr


def _autocast(device: torch.device, cfg: TrainConfig):
    enabled = cfg.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def evaluate(
    model: TupacModel,
    ds: PatchSource,
    config: TrainConfig,
    device: torch.device | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Validation metrics (``loss``, ``accuracy``, ``balanced_accuracy``, ``f1``, ``auroc``) and the
    (N, C) float32 probabilities of every patch in ``ds``, in order."""
    device = device or next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=config.eval_batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=config.num_workers,
        generator=torch.Generator(),  # the loader would otherwise draw its worker seed from the global RNG
    )
    weight = torch.tensor(config.class_weights, device=device) if config.class_weights else None
    was_training = model.training
    model.eval()
    probs, labels, loss_sum = [], [], 0.0
    with torch.no_grad():
        for xb, yb in loader:
            x = _center_crop(_to_input(xb, device, model.card.patch_size), model.card.patch_size)
            with _autocast(device, config):
                logits = model.logits(x).float()
            yb = yb.to(device)
            loss_sum += float(F.cross_entropy(logits, yb, weight=weight, reduction="sum"))
            probs.append(torch.softmax(logits, 1).cpu())
            labels.append(yb.cpu())
    model.train(was_training)
    p = torch.cat(probs).numpy()
    y = torch.cat(labels).numpy()
    metrics = {"loss": loss_sum / max(len(y), 1), **binary_metrics(y, p[:, 1])}
    return metrics, p


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


def train(
    model: TupacModel,
    train_ds: PatchSource,
    val_ds: PatchSource | None,
    config: TrainConfig,
    out_dir: str | Path,
    tracker: Tracker | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = True,
) -> TrainResult:
    """Train ``model`` (in place) and keep the validation-chosen epoch.

    Parameters
    ----------
    model : TupacModel
        From :func:`tupac.models.create_model`; trained through ``model.logits``.
    train_ds, val_ds : PatchSource
        ``(patch uint8 (S, S, 3), label)`` items with ``S >= model.card.patch_size``. Without
        ``val_ds`` the monitor must be ``"loss"`` and the training loss chooses the epoch.
    config : TrainConfig
    out_dir : path
        Run directory (see the module docstring).
    tracker : Tracker, optional
        Receives params once, metrics per epoch (step = epoch) and the best model directory.
    callbacks : sequence of callables
        Called with an :class:`EpochState` after each epoch (after its checkpoint is written).
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (default). If False and checkpoints
        exist, raise instead of silently mixing runs.

    Returns
    -------
    TrainResult
        On return ``model`` holds the best epoch's weights and ``model.card`` its training metadata.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = tracker or NullTracker()
    if val_ds is None and config.monitor != "loss":
        raise ConfigError(f"monitor={config.monitor!r} needs a validation set; pass val_ds or monitor='loss'")
    if len(train_ds) == 0:
        raise ConfigError("the training set is empty")
    device = _device(config.device)
    mode = MONITORS[config.monitor]
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_cudnn_det = torch.backends.cudnn.deterministic
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(config.deterministic)
        else:
            torch.backends.cudnn.deterministic = config.deterministic
            torch.backends.cudnn.benchmark = not config.deterministic
        return _run(model, train_ds, val_ds, config, out, tracker, callbacks, resume, device, mode)
    finally:
        # Process-wide flags: leave them as found (an inference actor in the same process must not
        # inherit a training run's cuDNN settings).
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_cudnn_det


@dataclass
class _Progress:
    """Where a run stands between epochs: what a checkpoint restores and :class:`TrainResult` reports.

    Attributes
    ----------
    history : list of dict
        One metrics dict per finished epoch (``{"epoch": k, ...}``), oldest first.
    best_epoch : int
        The epoch chosen so far (0 before any).
    best_value : float or None
        Its monitored value (None before any).
    start : int
        The last epoch finished before this call: the resumed checkpoint's, 0 for a fresh run.
    since_best : int
        Epochs since ``best_epoch``, what ``config.patience`` counts.
    checkpoint : Path or None
        The newest checkpoint written or resumed from.
    epochs_run : int
        Epochs trained by this call (resumed ones not counted).
    stopped_early : bool
        A callback or ``config.patience`` ended the run before ``config.epochs``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    start: int = 0
    since_best: int = 0
    checkpoint: Path | None = None
    epochs_run: int = 0
    stopped_early: bool = False


def _run(model, train_ds, val_ds, config, out, tracker, callbacks, resume, device, mode) -> TrainResult:
    """The body of :func:`train` once the determinism flags are set (same parameters, plus the
    resolved ``device`` and the monitor's ``mode``, ``"min"`` or ``"max"``)."""
    opt = _prepare_model(model, config, device)
    data_hash = fingerprint(train_ds)
    progress = _resume_or_start(out, resume, model, opt, config, data_hash, device)
    _log_run_params(tracker, config, model, train_ds, val_ds, data_hash)
    sampler, loader = _train_loader(train_ds, config, device)
    weight = torch.tensor(config.class_weights, device=device) if config.class_weights else None
    steps_per_epoch = len(loader)
    for epoch in range(progress.start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        metrics = _train_epoch(model, opt, loader, sampler, config, device, weight, epoch, steps_per_epoch)
        value = _validate(model, val_ds, config, device, metrics)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        is_best = _update_best(progress, model, out, data_hash, config, mode, epoch, value)
        _record_epoch(progress, model, opt, out, data_hash, config, tracker, epoch, metrics)
        # Every callback runs (no short-circuit) before patience is looked at.
        stop = _callbacks_stop(callbacks, epoch, metrics, is_best, model, out)
        if config.patience is not None and progress.since_best >= config.patience:
            stop = True
        if stop and epoch < config.epochs:
            progress.stopped_early = True
            break
    return _finish(model, out, data_hash, config, tracker, device, progress)


def _prepare_model(model: TupacModel, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Seed python, numpy and torch from ``config.seed``, move ``model`` to ``device`` and build its
    AdamW optimizer.

    Returns
    -------
    torch.optim.AdamW
    """
    # Seed before anything else of the run, so that any draw from the global RNGs outside the
    # per-epoch streams (a model initialising lazily on ``.to``, say) is reproducible too.
    _seed_all(config.seed)
    model.to(device)
    if device.type == "cuda" and config.channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _resume_or_start(
    out: Path, resume: bool, model: TupacModel, opt, config: TrainConfig, data_hash: str, device: torch.device
) -> _Progress:
    """A fresh :class:`_Progress`, or the one of the newest checkpoint in ``out`` (whose weights and
    optimizer state are loaded into ``model`` and ``opt``).

    Raises
    ------
    ConfigError
        Checkpoints exist but ``resume`` is False, or they were written with another config (beyond
        ``_RESUMABLE_CHANGES``) or other training data.
    """
    progress = _Progress()
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise ConfigError(f"{out} already holds checkpoints ({ckpt.name}); pass resume=True or use a new directory")
    progress.checkpoint = ckpt
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt, device)
        saved = state["config"]
        now = config.to_dict()
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in _RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(f"{ckpt}: cannot resume with a different config; changed: {changed}")
        if state["data_hash"] != data_hash:
            raise ConfigError(f"{ckpt}: cannot resume on different training data")
        progress.history, progress.best_epoch = state["history"], state["best_epoch"]
        progress.best_value, progress.start = state["best_value"], state["epoch"]
    if progress.history:
        # Every finished epoch has a history row, so this is the count since the best one.
        progress.since_best = len(progress.history) - progress.best_epoch
    return progress


def _log_run_params(tracker: Tracker, config: TrainConfig, model: TupacModel, train_ds, val_ds, data_hash: str) -> None:
    """Send the run's params once: the config, the model card (less ``extra``), the data sizes and hash."""
    tracker.log_params(
        {
            **config.to_dict(),
            **{f"card.{k}": v for k, v in model.card.to_dict().items() if k not in ("extra",)},
            "train_size": len(train_ds),
            "val_size": len(val_ds) if val_ds is not None else 0,
            "training_data_hash": data_hash,
        }
    )


def _train_loader(train_ds: PatchSource, config: TrainConfig, device: torch.device):
    """The training set's :class:`EpochSampler` and the DataLoader that batches through it.

    Returns
    -------
    sampler : EpochSampler
        Its shuffle depends only on ``(config.seed, epoch)``; set the epoch before iterating.
    loader : torch.utils.data.DataLoader
    """
    sampler = EpochSampler(len(train_ds), config.seed)
    loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),  # keep the global RNG untouched
        pin_memory=device.type == "cuda",
    )
    return sampler, loader


def _train_epoch(
    model, opt, loader, sampler, config: TrainConfig, device, weight, epoch: int, steps_per_epoch: int
) -> dict[str, float]:
    """One pass over ``loader`` with the learning rate of each step.

    The shuffle, dropout and augmentation streams are re-seeded from ``(config.seed, epoch)`` first,
    so that a resumed epoch draws exactly what it would have drawn in an uninterrupted run.

    Returns
    -------
    dict
        ``train_loss`` (mean over the epoch's patches) and ``lr`` (the last step's).
    """
    sampler.set_epoch(epoch)
    torch.manual_seed(derive_seed(config.seed, epoch, "torch"))  # dropout
    gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, epoch, "augment"))
    total_steps = steps_per_epoch * config.epochs
    patch = model.card.patch_size
    model.train()
    loss_sum, n_seen = 0.0, 0
    for b, (xb, yb) in enumerate(loader):
        step = (epoch - 1) * steps_per_epoch + b
        for g in opt.param_groups:
            g["lr"] = _lr_at(config, step, total_steps)
        loss = _train_step(model, opt, xb, yb, config, device, weight, gen, patch)
        loss_sum += loss * len(yb)
        n_seen += len(yb)
    return {"train_loss": loss_sum / n_seen, "lr": opt.param_groups[0]["lr"]}


def _train_step(model, opt, xb, yb, config: TrainConfig, device, weight, gen: torch.Generator, patch: int) -> float:
    """Augment and crop one uint8 batch, then take one optimizer step on its cross-entropy.

    Returns
    -------
    float
        The batch's mean loss.
    """
    x = _to_input(xb, device, patch)
    x = _center_crop(augment_batch(x, config.augment, gen), patch)
    if device.type == "cuda" and config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    yb = yb.to(device, non_blocking=True)
    with _autocast(device, config):
        logits = model.logits(x)
    loss = F.cross_entropy(logits.float(), yb, weight=weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _validate(model, val_ds, config: TrainConfig, device, metrics: dict[str, float]) -> float:
    """Add the ``val_*`` metrics to ``metrics`` (when there is a validation set) and return the
    monitored value; without ``val_ds`` the training loss is the monitor."""
    if val_ds is None:
        return metrics["train_loss"]
    val, _ = evaluate(model, val_ds, config, device)
    metrics.update({f"val_{k}": v for k, v in val.items()})
    return val[config.monitor]


def _update_best(
    progress: _Progress, model, out: Path, data_hash: str, config: TrainConfig, mode: str, epoch: int, value: float
) -> bool:
    """Make ``epoch`` the best one (and save it to ``out/best``) if ``value`` beats the best so far,
    else count it towards ``config.patience``. Returns whether it was the best."""
    is_best = _is_better(value, progress.best_value, mode)
    if is_best:
        progress.best_epoch, progress.best_value, progress.since_best = epoch, value, 0
        _save_best(model, out, data_hash, config, epoch, value)
    else:
        progress.since_best += 1
    return is_best


def _record_epoch(
    progress: _Progress,
    model,
    opt,
    out: Path,
    data_hash: str,
    config: TrainConfig,
    tracker: Tracker,
    epoch: int,
    metrics: dict[str, float],
) -> None:
    """Append the epoch to the history and persist it: checkpoint (pruned if so configured),
    ``history.json`` and the tracker's per-epoch metrics."""
    progress.history.append({"epoch": epoch, **metrics})
    progress.checkpoint = save_checkpoint(
        out,
        epoch,
        model,
        opt,
        {
            "history": progress.history,
            "best_epoch": progress.best_epoch,
            "best_value": progress.best_value,
            "config": config.to_dict(),
            "data_hash": data_hash,
            "card": model.card.to_dict(),
        },
    )
    if config.keep_checkpoints == "last_and_best":
        prune_checkpoints(out, {epoch, progress.best_epoch})
    (out / "history.json").write_text(json.dumps(progress.history, indent=1))
    tracker.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
    progress.epochs_run += 1


def _callbacks_stop(
    callbacks: Sequence[Callback], epoch: int, metrics: dict[str, float], is_best: bool, model, out: Path
) -> bool:
    """Call every callback with the epoch's :class:`EpochState`; True if any of them asked to stop."""
    stop = False
    for cb in callbacks:
        # A fresh state per callback, so one callback changing a field cannot change what the next sees.
        stop = bool(cb(EpochState(epoch, metrics, is_best, model, out))) or stop
    return stop


def _finish(
    model, out: Path, data_hash: str, config: TrainConfig, tracker: Tracker, device, progress: _Progress
) -> TrainResult:
    """Load the best epoch's weights and card into ``model``, log them and build the result."""
    best_dir = out / "best"
    if not (best_dir / "card.json").is_file():  # resumed after the last epoch, or nothing improved
        _save_best(model, out, data_hash, config, progress.best_epoch, progress.best_value)
    _load_best(model, best_dir, device)
    tracker.log_artifact(best_dir, "model")
    return TrainResult(
        best_epoch=progress.best_epoch,
        best_value=float("nan") if progress.best_value is None else float(progress.best_value),
        monitor=config.monitor,
        history=progress.history,
        model_dir=best_dir,
        last_checkpoint=latest_checkpoint(out) or progress.checkpoint,
        epochs_run=progress.epochs_run,
        stopped_early=progress.stopped_early,
        card=model.card,
    )


def _save_best(model, out: Path, data_hash: str, config: TrainConfig, epoch: int, value) -> None:
    extra: dict[str, Any] = {**model.card.extra, "best_epoch": epoch, "monitor": config.monitor, "monitor_value": value}
    model.update_card(
        training_data_hash=data_hash,
        seed=config.seed,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra=extra,
    )
    save_model(model, model.card, out / "best")


def _load_best(model, best_dir: Path, device) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(best_dir / "model.safetensors"), device=str(device)))
    model.card = load_card(best_dir)
