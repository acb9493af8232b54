"""Inference helpers run where the network's weights are (a network left on its training GPU gets
its inputs there), unless a device is named. The 'meta' device stands in for a GPU here: a helper
that sent its inputs to the CPU regardless would show it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tupac.heatmaps.engine import predict_windows, window_probabilities
from tupac.mitosis.inference import mitosis_heatmap
from tupac.models import create_model, model_device


class _Reached(Exception):
    """Raised by the spy with the device the model's input was on."""


def _spied(arch: str, task: str, method: str):
    model = create_model(arch, task=task, seed=0).to("meta")

    def spy(x, *args, **kwargs):
        raise _Reached(x.device)

    setattr(model, method, spy)
    return model


def test_model_device_is_the_weights_device_unless_named() -> None:
    model = create_model("mitosnet", task="mitosis", seed=0)
    assert model_device(model) == torch.device("cpu")
    assert model_device(model.to("meta")) == torch.device("meta")
    assert model_device(model, "cpu") == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no weights: CPU


@pytest.mark.parametrize(
    "call",
    [
        lambda m: predict_windows(m, np.zeros((2, 200, 200, 3), np.uint8)),
        lambda m: window_probabilities(m, np.zeros((200, 200, 3), np.uint8)),
        lambda m: mitosis_heatmap(m, np.zeros((120, 120, 3), np.uint8)),
    ],
    ids=["predict_windows", "window_probabilities", "mitosis_heatmap"],
)
def test_heatmap_inputs_go_to_the_weights_device(call) -> None:
    model = _spied("mitosnet", "mitosis", "heatmap")
    with pytest.raises(_Reached) as seen:
        call(model)
    assert seen.value.args[0] == torch.device("meta")


def test_tumor_validation_scores_run_on_the_weights_device() -> None:
    from tupac.tumor.training import _validation_scores

    model = _spied("locnet", "tumor", "forward")
    p = model.card.patch_size

    class _Val:
        images = np.zeros((3, p, p, 3), np.uint8)
        labels = np.array([0, 1, 0])

        def __len__(self) -> int:
            return len(self.labels)

    with pytest.raises(_Reached) as seen:
        _validation_scores(model, _Val())
    assert seen.value.args[0] == torch.device("meta")
