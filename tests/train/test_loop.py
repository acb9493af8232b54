"""The training loop: it learns, it is reproducible, it resumes bitwise, it keeps the best epoch."""

from __future__ import annotations

import json

import pytest
import torch

from tupac.errors import ConfigError
from tupac.models import create_model, load_model
from tupac.train import MemoryTracker, TrainConfig, evaluate, train

# Quarter-width LocNet: the same layers, geometry and 140 px patch, 1/16 of the compute.
SMALL_LOCNET = {"widths": [8, 16, 24, 32, 64], "fc_width": 64}


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name, kw, lr", [("mitosnet", {}, 2e-3), ("locnet", SMALL_LOCNET, 1e-3)])
def test_the_loop_learns_a_blob_detector(name, kw, lr, blobs, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, **kw)
    p = model.card.patch_size
    cfg = TrainConfig(epochs=4, batch_size=16, lr=lr, seed=0, monitor="accuracy", patience=2)
    result = train(model, blobs(64, p, seed=1), blobs(48, p, seed=2), cfg, tmp_path)
    assert result.best_value >= 0.9, result.history
    # The returned model holds the best epoch; a fresh validation agrees with the history.
    again, _ = evaluate(model, blobs(48, p, seed=2), cfg)
    assert again["accuracy"] == result.history[result.best_epoch - 1]["val_accuracy"]
    # ... and generalizes to patches it never saw, at the same operating point.
    held_out, _ = evaluate(model, blobs(48, p, seed=3), cfg)
    assert held_out["accuracy"] >= 0.85


def _tiny(seed_model=0):
    torch.manual_seed(seed_model)
    return create_model("mitosnet", dropout=0.3)  # dropout exercises the torch RNG stream


CFG = TrainConfig(epochs=4, batch_size=8, lr=2e-3, seed=7, monitor="auroc", keep_checkpoints="all")


def test_same_seed_same_weights_and_other_seed_differs(blobs, tmp_path):
    tr, va = blobs(24, 79, 1), blobs(8, 79, 2)
    cfg = CFG.replace(epochs=2)
    a, b, c = _tiny(), _tiny(), _tiny()
    train(a, tr, va, cfg, tmp_path / "a")
    train(b, tr, va, cfg, tmp_path / "b")
    train(c, tr, va, cfg.replace(seed=8), tmp_path / "c")
    assert _equal(_weights(a), _weights(b))
    assert not _equal(_weights(a), _weights(c))


class _Crash(RuntimeError):
    pass


@pytest.mark.slow
def test_resume_after_a_crash_equals_an_uninterrupted_run(blobs, tmp_path):
    tr, va = blobs(24, 79, 1), blobs(8, 79, 2)
    straight = _tiny()
    r_straight = train(straight, tr, va, CFG, tmp_path / "straight")

    def crash_after_2(state):
        if state.epoch == 2:
            raise _Crash("simulated crash")

    interrupted = _tiny()
    with pytest.raises(_Crash):
        train(interrupted, tr, va, CFG, tmp_path / "resumed", callbacks=[crash_after_2])
    resumed = _tiny(seed_model=123)  # a new process: fresh (different) init, weights come from disk
    r_resumed = train(resumed, tr, va, CFG, tmp_path / "resumed")
    assert r_resumed.epochs_run == 2
    def timeless(history):
        return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]

    assert timeless(r_resumed.history) == timeless(r_straight.history)
    assert r_resumed.best_epoch == r_straight.best_epoch
    # The last checkpoints are bitwise identical, and so are the returned (best) models.
    from safetensors.torch import load_file

    for f in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "straight/checkpoints/epoch_0004" / f))
        b = load_file(str(tmp_path / "resumed/checkpoints/epoch_0004" / f))
        assert _equal(a, b), f
    assert _equal(_weights(straight), _weights(resumed))
    # Calling again after completion trains nothing and returns the same best model.
    again = train(_tiny(), tr, va, CFG, tmp_path / "resumed")
    assert again.epochs_run == 0 and again.best_epoch == r_straight.best_epoch


def test_outputs_best_model_card_and_tracking(blobs, tmp_path):
    tr, va = blobs(16, 85, 1), blobs(8, 85, 2)  # larger than 79 px: center-cropped
    tracker = MemoryTracker()
    model = _tiny()
    cfg = CFG.replace(epochs=3, keep_checkpoints="last_and_best", monitor="loss")
    result = train(model, tr, va, cfg, tmp_path, tracker=tracker)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    losses = [h["val_loss"] for h in history]
    assert result.best_epoch == 1 + losses.index(min(losses))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == sorted({f"epoch_{e:04d}" for e in (3, result.best_epoch)})
    loaded = load_model(result.model_dir)
    assert _equal(_weights(loaded), _weights(model))
    card = loaded.card
    assert card.seed == 7 and card.training_data_hash == tr.fingerprint() and card.created
    assert card.extra["best_epoch"] == result.best_epoch and card.extra["monitor"] == "loss"
    assert tracker.params["lr"] == cfg.lr and tracker.params["card.name"] == "mitosnet"
    assert [s for s, _ in tracker.metrics] == [1, 2, 3] and "val_auroc" in tracker.metrics[0][1]
    assert tracker.artifacts == [(result.model_dir, "model")]


def test_refuses_to_mix_runs(blobs, tmp_path):
    tr, va = blobs(16, 79, 1), blobs(8, 79, 2)
    train(_tiny(), tr, va, CFG.replace(epochs=1), tmp_path)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(_tiny(), tr, va, CFG.replace(epochs=2), tmp_path, resume=False)
    with pytest.raises(ConfigError, match=r"changed: \['lr'\]"):
        train(_tiny(), tr, va, CFG.replace(epochs=2, lr=0.1), tmp_path)
    with pytest.raises(ConfigError, match="different training data"):
        train(_tiny(), blobs(16, 79, 5), va, CFG.replace(epochs=2), tmp_path)


def test_patience_stops_early_and_bad_inputs_fail_clearly(blobs, tmp_path):
    tr, va = blobs(16, 79, 1), blobs(8, 79, 2)
    # lr so small nothing improves after epoch 1 in accuracy terms (ties do not count as better).
    r = train(_tiny(), tr, va, CFG.replace(epochs=5, lr=1e-9, monitor="accuracy", patience=1), tmp_path / "p")
    assert r.stopped_early and r.epochs_run == 2 and r.best_epoch == 1
    with pytest.raises(ConfigError, match="smaller than the model's 79 px"):
        train(_tiny(), blobs(8, 64, 1), None, CFG.replace(epochs=1, monitor="loss"), tmp_path / "small")
    with pytest.raises(ConfigError, match="needs a validation set"):
        train(_tiny(), tr, None, CFG, tmp_path / "noval")
    with pytest.raises(ConfigError, match="monitor='acc'"):
        TrainConfig(monitor="acc")
    assert TrainConfig.from_dict(CFG.to_dict()) == CFG
