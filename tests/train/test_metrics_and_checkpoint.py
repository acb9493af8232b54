"""Validation metrics against scikit-learn; optimizer state through safetensors + JSON."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from tupac.train import auroc, binary_metrics
from tupac.train.checkpoint import optimizer_from_flat, optimizer_to_flat


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # rounding creates many ties
    assert abs(auroc(y, s) - roc_auc_score(y, s)) < 1e-12
    assert np.isnan(auroc(np.ones(4), np.arange(4.0)))


def test_binary_metrics_on_a_hand_example():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.3, 0.4])  # TP 2, FN 1, FP 1, TN 4
    m = binary_metrics(y, p)
    assert m["accuracy"] == 6 / 8
    assert m["balanced_accuracy"] == (2 / 3 + 4 / 5) / 2
    assert m["f1"] == 4 / 6


def test_optimizer_state_survives_the_flat_round_trip():
    import json

    net = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    meta = json.loads(json.dumps(meta))  # what state.json stores
    opt2 = torch.optim.AdamW(net.parameters(), lr=0.5)
    opt2.load_state_dict(optimizer_from_flat(tensors, meta))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 0.01
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k])
