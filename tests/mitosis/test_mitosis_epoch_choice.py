"""Which epoch the mitosis training keeps: the best validation-image F1, ties broken by validation loss."""

from __future__ import annotations

from types import SimpleNamespace

from tupac.mitosis.training import _epoch_key


def _best(history) -> int:
    """The epoch :func:`_epoch_key` ranks first among ``(epoch, image_f1, metrics)``."""
    return max(history, key=lambda h: _epoch_key(h[1], SimpleNamespace(epoch=h[0], metrics=h[2])))[0]


def test_higher_image_f1_wins_whatever_the_loss():
    assert _best([(1, 0.8, {"val_loss": 0.001}), (2, 0.9, {"val_loss": 0.5})]) == 2


def test_a_saturated_f1_keeps_the_epoch_with_the_lowest_validation_loss():
    # The benchmark's run: F1 1.0 from epoch 1 on; epoch 3 had the lowest validation loss.
    history = [(1, 1.0, {"val_loss": 0.0057}), (2, 0.9, {"val_loss": 0.0215}),
               (3, 1.0, {"val_loss": 0.0020}), (4, 1.0, {"val_loss": 0.0216})]
    assert _best(history) == 3


def test_without_validation_patches_a_tie_goes_to_the_later_epoch():
    assert _best([(1, 1.0, {}), (2, 1.0, {}), (3, 0.5, {})]) == 2
