"""Analytic receptive field / stride / offset against gradient measurements and real output shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tupac.errors import ModelError
from tupac.models import create_model, geometry, measure_geometry, output_size


def test_geometry_of_a_hand_computed_stack():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 1, 5, dilation=2))
    g = geometry(net)
    # rf: 1+2=3, +1=4 (j=2), +2*2=8, +8*2=24; offset: 1, +0.5, +0, +4*2 -> 9.5
    assert (g.receptive_field, g.stride, g.offset, g.padded) == (24, 2, 9.5, True)


@pytest.mark.parametrize(
    "name, kw, size",
    [
        ("locnet", {}, 140 + 16 * 3),
        ("mitosnet", {}, 79 + 16 * 3),
        ("locnet", {"padding": "same"}, 400),
    ],
)
def test_analytic_geometry_matches_gradient_measurement(name, kw, size):
    model = create_model(name, **kw)
    g = geometry(model.body)
    m = measure_geometry(model.body, size)
    assert m["receptive_field"] == g.receptive_field == model.card.receptive_field
    assert m["stride"] == g.stride == model.card.output_stride
    i, j = m["cell"]
    assert m["center"] == (g.offset + i * g.stride, g.offset + j * g.stride)


@pytest.mark.slow
def test_googlenet_fcn_geometry_matches_measurement():
    model = create_model("googlenet_fcn")
    g = geometry(model.body)
    m = measure_geometry(model.body, 576)
    assert m["receptive_field"] == g.receptive_field and m["stride"] == g.stride == 32
    i, j = m["cell"]
    assert m["center"] == (g.offset + i * 32, g.offset + j * 32)


@pytest.mark.parametrize("name", ["locnet", "mitosnet", "googlenet_fcn"])
@pytest.mark.parametrize("extra", [0, 1, 15, 16, 37])
def test_output_size_matches_torch(name, extra):
    model = create_model(name).eval()
    size = model.card.patch_size + extra
    with torch.no_grad():
        out = model.body(torch.zeros(1, 3, size, size))
    assert out.shape[-1] == output_size(model.body, size)


def test_residual_blocks_are_refused_rather_than_guessed():
    model = create_model("resnet18")
    with pytest.raises(ModelError, match="cannot compute the geometry"):
        geometry(model.net)
