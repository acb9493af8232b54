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


def _run(model, train_ds, val_ds, config, out, tracker, callbacks, resume, device, mode) -> TrainResult:
    _seed_all(config.seed)
    model.to(device)
    if device.type == "cuda" and config.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data_hash = fingerprint(train_ds)

    history: list[dict[str, float]] = []
    best_epoch, best_value, start = 0, None, 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise ConfigError(f"{out} already holds checkpoints ({ckpt.name}); pass resume=True or use a new directory")
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt, device)
        saved = state["config"]
        now = config.to_dict()
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in _RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(f"{ckpt}: cannot resume with a different config; changed: {changed}")
        if state["data_hash"] != data_hash:
            raise ConfigError(f"{ckpt}: cannot resume on different training data")
        history, best_epoch, best_value, start = state["history"], state["best_epoch"], state["best_value"], state["epoch"]

    tracker.log_params(
        {
            **config.to_dict(),
            **{f"card.{k}": v for k, v in model.card.to_dict().items() if k not in ("extra",)},
            "train_size": len(train_ds),
            "val_size": len(val_ds) if val_ds is not None else 0,
            "training_data_hash": data_hash,
        }
    )
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
    weight = torch.tensor(config.class_weights, device=device) if config.class_weights else None
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    patch = model.card.patch_size
    stopped_early, epochs_run, since_best = False, 0, 0
    if history:
        since_best = len(history) - best_epoch

    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(derive_seed(config.seed, epoch, "torch"))  # dropout
        gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, epoch, "augment"))
        model.train()
        loss_sum, n_seen = 0.0, 0
        for b, (xb, yb) in enumerate(loader):
            step = (epoch - 1) * steps_per_epoch + b
            for g in opt.param_groups:
                g["lr"] = _lr_at(config, step, total_steps)
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
            loss_sum += float(loss.detach()) * len(yb)
            n_seen += len(yb)

        metrics: dict[str, float] = {"train_loss": loss_sum / n_seen, "lr": opt.param_groups[0]["lr"]}
        if val_ds is not None:
            val, _ = evaluate(model, val_ds, config, device)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            value = val[config.monitor]
        else:
            value = metrics["train_loss"]
        metrics["epoch_seconds"] = time.perf_counter() - t0
        is_best = _is_better(value, best_value, mode)
        if is_best:
            best_epoch, best_value, since_best = epoch, value, 0
            _save_best(model, out, data_hash, config, best_epoch, best_value)
        else:
            since_best += 1
        history.append({"epoch": epoch, **metrics})
        ckpt = save_checkpoint(
            out,
            epoch,
            model,
            opt,
            {
                "history": history,
                "best_epoch": best_epoch,
                "best_value": best_value,
                "config": config.to_dict(),
                "data_hash": data_hash,
                "card": model.card.to_dict(),
            },
        )
        if config.keep_checkpoints == "last_and_best":
            prune_checkpoints(out, {epoch, best_epoch})
        (out / "history.json").write_text(json.dumps(history, indent=1))
        tracker.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
        epochs_run += 1
        stop = False
        for cb in callbacks:
            stop = bool(cb(EpochState(epoch, metrics, is_best, model, out))) or stop
        if config.patience is not None and since_best >= config.patience:
            stop = True
        if stop and epoch < config.epochs:
            stopped_early = True
            break

    best_dir = out / "best"
    if not (best_dir / "card.json").is_file():  # resumed after the last epoch, or nothing improved
        _save_best(model, out, data_hash, config, best_epoch, best_value)
    _load_best(model, best_dir, device)
    tracker.log_artifact(best_dir, "model")
    return TrainResult(
        best_epoch=best_epoch,
        best_value=float("nan") if best_value is None else float(best_value),
        monitor=config.monitor,
        history=history,
        model_dir=best_dir,
        last_checkpoint=latest_checkpoint(out) or ckpt,
        epochs_run=epochs_run,
        stopped_early=stopped_early,
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
