"""Training: one loop for every task, patch datasets, augmentation, checkpoints, tracking hooks.

>>> from tupac.models import create_model
>>> from tupac.train import PatchDataset, TrainConfig, train
>>> model = create_model("mitosnet")
>>> result = train(model, PatchDataset(x_tr, y_tr), PatchDataset(x_va, y_va), TrainConfig(epochs=5), "RUN/")
>>> result.model_dir        # RUN/best: model.safetensors + card.json, loadable with load_model

MLflow is not imported here (nor anywhere in ``tupac.train``); ``tupac.tracking.runs.MlflowTracker`` is the
Tracker that writes to it.
"""

from tupac.train.augment import augment_batch, hed_to_rgb, rgb_to_hed, stain_jitter
from tupac.train.config import AugmentConfig, TrainConfig
from tupac.train.data import PatchDataset, PatchSource, fingerprint
from tupac.train.loop import EpochState, TrainResult, evaluate, train
from tupac.train.metrics import auroc, binary_metrics
from tupac.train.tracking import MemoryTracker, NullTracker, Tracker

__all__ = [
    "AugmentConfig",
    "EpochState",
    "MemoryTracker",
    "NullTracker",
    "PatchDataset",
    "PatchSource",
    "Tracker",
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "auroc",
    "binary_metrics",
    "evaluate",
    "fingerprint",
    "hed_to_rgb",
    "rgb_to_hed",
    "stain_jitter",
    "train",
]
