"""A fully convolutional pass over a large image equals the patch classifier at every lattice center."""

from __future__ import annotations

import pytest
import torch

from tupac.models import create_model


def _windows(img: torch.Tensor, p: int, s: int, h: int, w: int) -> torch.Tensor:
    return torch.cat([img[:, :, i * s : i * s + p, j * s : j * s + p] for i in range(h) for j in range(w)])


@pytest.mark.parametrize(
    "name, kw",
    [
        ("locnet", {}),
        ("locnet", {"task": "mitosis"}),
        ("mitosnet", {}),  # ceil-mode pools (reference)
        ("mitosnet", {"ceil_mode": False}),
    ],
)
def test_fcn_heatmap_equals_patch_classifier_at_lattice_centers(name, kw):
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    p, s = model.card.patch_size, model.card.output_stride
    # Odd, non-aligned size: a ceil-mode pool meets partial windows at the far edges.
    img = torch.rand(1, 3, p + 3 * s + 9, p + 4 * s + 3, generator=torch.Generator().manual_seed(5))
    heat = model.heatmap(img)
    h, w = heat.shape[-2:]
    assert (h, w) == (4, 5)
    with torch.no_grad():
        patch_probs = model(_windows(img, p, s, h, w))  # (h*w, 2), cell order row-major
    dense = heat[0].permute(1, 2, 0).reshape(-1, 2)
    torch.testing.assert_close(dense, patch_probs, atol=2e-6, rtol=1e-5)
    # The geometry in the card names each cell's window center.
    assert model.card.cell_centers(2) == [(p - 1) / 2, (p - 1) / 2 + s]


def test_reference_padded_locnet_is_not_equivalent():
    """The measurement behind LocNet's valid convolutions: with padding 1 the FCN cells see real
    neighbors where the 100 px patch saw zeros, and the two disagree."""
    torch.manual_seed(0)
    model = create_model("locnet", padding="same").eval()
    assert model.card.patch_size == 100 and model.card.receptive_field == 236
    img = torch.rand(1, 3, 100 + 16 * 6, 100 + 16 * 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        dense = model.dense_logits(img)[0]  # (2, h, w)
        # Cell (3, 3) is centered at offset + 3 * 16; its 100 px patch is centered there too.
        c = model.card.output_offset + 3 * 16
        top = int(c - 49.5)
        patch = model.logits(img[:, :, top : top + 100, top : top + 100])[0]
    gap = (dense[:, 3, 3] - patch).abs().max().item()
    assert gap > 1e-3 * dense.abs().max().item()


def test_sliding_window_heatmap_equals_patchwise_forward():
    torch.manual_seed(0)
    model = create_model("resnet18", task="mitosis", stride=24).eval()
    p, s = model.card.patch_size, 24
    img = torch.rand(2, 3, p + 2 * s + 7, p + s, generator=torch.Generator().manual_seed(1))
    heat = model.heatmap(img, batch_size=4)  # several batches per image
    assert heat.shape == (2, 2, 3, 2)
    with torch.no_grad():
        for b in range(2):
            ref = model(_windows(img[b : b + 1], p, s, 3, 2))
            torch.testing.assert_close(heat[b].permute(1, 2, 0).reshape(-1, 2), ref, atol=1e-6, rtol=1e-5)
    # A coarser stride on request.
    assert model.heatmap(img, stride=48).shape == (2, 2, 2, 1)
