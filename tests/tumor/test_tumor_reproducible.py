"""Same data, config and seed: the same tumor model, bit for bit (CPU)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tupac.tumor.training import TumorTrainConfig, train_tumor

pytestmark = pytest.mark.slow

TINY = dict(
    model_kwargs={"widths": [8, 8, 16, 16, 32], "fc_width": 16},
    positives_per_slide=12,
    negatives_per_slide=12,
    two_stage=False,
    train={"epochs": 1, "batch_size": 16, "lr": 0.003, "monitor": "loss"},
)


def _digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_gives_the_same_model_and_another_seed_does_not(small_cohort, tmp_path):
    import torch

    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        torch.manual_seed(1000 + len(runs))  # whatever the caller did to the global RNG before
        res = train_tumor(small_cohort, tmp_path / name, TumorTrainConfig(seed=seed, **TINY))
        runs[name] = (_digest(res.model_dir), res.threshold)
    assert runs["a"] == runs["b"]
    assert runs["c"][0] != runs["a"][0]
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["seed"] == 5
