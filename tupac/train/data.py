"""Patch datasets: the one interface the training loop reads, and an in-memory implementation.

The loop accepts any :class:`PatchSource`: ``len(ds)`` and ``ds[i] -> (patch, label)`` with ``patch``
a ``(S, S, 3)`` uint8 RGB array at the model's MPP and ``label`` an int class (1 = positive). Patches
may be larger than the model's native size; the loop center-crops them after augmentation (so
sources can sample with a margin). Sources that read from slides implement the same two methods
(and, optionally, ``fingerprint()`` so that the training-data hash need not read every pixel).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from tupac.errors import ConfigError


@runtime_checkable
class PatchSource(Protocol):
    """What the training loop reads: indexable (patch uint8 (S, S, 3), int label) pairs."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]: ...


class PatchDataset:
    """Patches held in memory.

    Parameters
    ----------
    images : ndarray, shape (N, S, S, 3), uint8
        RGB patches at the model's magnification.
    labels : ndarray, shape (N,), int
        Class of each patch (0 background, 1 positive).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ConfigError(f"PatchDataset images must be (N, S, S, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise ConfigError(f"PatchDataset images must be uint8, got {images.dtype}")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"PatchDataset labels must be ({len(images)},) integers, got {labels.shape} {labels.dtype}")
        self.images = images
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])

    def concat(self, other: PatchDataset) -> PatchDataset:
        """A new dataset with ``other``'s patches appended (e.g. stage-2 positives or hard negatives)."""
        return PatchDataset(np.concatenate([self.images, other.images]), np.concatenate([self.labels, other.labels]))

    def class_counts(self, num_classes: int = 2) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.tobytes())
        return "sha256:" + h.hexdigest()


def fingerprint(ds: PatchSource) -> str:
    """Content hash of a patch source (its own ``fingerprint()`` when it has one; else every item)."""
    own = getattr(ds, "fingerprint", None)
    if callable(own):
        return own()
    h = hashlib.sha256()
    for i in range(len(ds)):
        patch, label = ds[i]
        h.update(np.ascontiguousarray(patch).tobytes())
        h.update(int(label).to_bytes(8, "little", signed=True))
    return "sha256:" + h.hexdigest()


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``, so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, "shuffle"))
        return iter(torch.randperm(self.n, generator=g).tolist())


def collate(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(patch, label)`` pairs into uint8 (N, S, S, 3) and int64 (N,) tensors."""
    sizes = {p.shape for p, _ in items}
    if len(sizes) != 1:
        raise ConfigError(f"patches in one batch must share a shape, got {sorted(sizes)}")
    patches = torch.from_numpy(np.stack([np.asarray(p, dtype=np.uint8) for p, _ in items]))
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
    return patches, labels


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for one random stream of one epoch (stable across processes and runs)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def training_set_hash(names: list[str], root) -> str:
    """Short fingerprint of a training set given as item names (slide IDs, ``NN/MM`` image keys)
    under a dataset root, for the model card's ``training_data_hash``."""
    from pathlib import Path

    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
    h.update(str(Path(root).resolve()).encode())
    return h.hexdigest()[:16]
