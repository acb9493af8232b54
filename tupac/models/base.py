"""The interface every registered model implements, and its two heatmap strategies.

Input contract: float tensors ``(N, 3, H, W)``, RGB scaled to [0, 1], at the card's ``mpp``. The model
applies the card's mean/std itself, so callers never re-type the normalization.

- ``model.logits(x)``: ``(N, C)`` raw scores for native-size patches (``H == W == patch_size``); what
  the training loss uses.
- ``model(x)``: ``(N, C)`` class probabilities (softmax of the logits) for native-size patches.
- ``model.heatmap(x, stride=None)``: ``(N, C, h, w)`` probabilities for an input of any size
  ``>= patch_size``, with the geometry described in :mod:`tupac.models.card`.

Two strategies implement ``heatmap``: :class:`FCNModel` runs its body once over the whole input;
:class:`PatchClassifier` unfolds the input into patches (a strided view, copied one batch at a time so
memory stays bounded) and classifies each, assigning the result to the patch center.
"""

from __future__ import annotations

import torch
from torch import nn

from tupac.errors import ModelError
from tupac.models.card import ModelCard


def to_input(patches: "torch.Tensor") -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (numpy or torch) -> float32 ``(N, 3, H, W)`` in [0, 1]."""
    t = torch.as_tensor(patches)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ModelError(f"expected uint8 patches of shape (N, H, W, 3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def model_device(model: nn.Module, device: "str | torch.device | None" = None) -> torch.device:
    """``device`` if given, else the device the model's weights are on (CPU for a model without any).

    Inference helpers take ``device=None`` and resolve it here, so that a network still on the GPU
    it was trained on (training's validation heatmaps, stage-2 mining) gets its inputs there too.
    """
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def to_device_input(pixels, device: "str | torch.device") -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [0, 1] on ``device`` (as :func:`to_input`).

    The uint8 pixels cross to the device and are converted there: a quarter of the bytes of a
    float32 copy, and no host-side float pass. On an H200 (``benchmarks/gpu_check.py``, batches
    of 8 windows) this gave 188 vs 98 windows/s for LocNet and 803 vs 237 for MitosNet against
    converting on the host. Off the CPU the result is channels_last (cuDNN's fast layout for
    these convolutions); values are identical to ``to_input(pixels).to(device)``.
    """
    device = torch.device(device)
    t = torch.as_tensor(pixels)
    if device.type == "cpu":
        return to_input(t)
    x = to_input(t.to(device))
    return x.contiguous(memory_format=torch.channels_last)


class TupacModel(nn.Module):
    """Base class: holds the card and the normalization; subclasses define ``logits``/``heatmap``."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        self.card = card
        # Not persistent: the card is the single source of truth for normalization.
        self.register_buffer("_mean", torch.tensor(card.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(card.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def update_card(self, **metadata) -> ModelCard:
        """Set training metadata on the card (see :meth:`ModelCard.with_metadata`); returns it."""
        self.card = self.card.with_metadata(**metadata)
        return self.card

    def _check(self, x: torch.Tensor, native: bool) -> None:
        p = self.card.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ModelError(f"{self.card.name}: expected input (N, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if native and (h != p or w != p):
            raise ModelError(
                f"{self.card.name}: logits() takes native {p}x{p} patches, got {h}x{w}; use heatmap() "
                "for larger inputs"
            )
        if h < p or w < p:
            raise ModelError(f"{self.card.name}: input {h}x{w} is smaller than the {p}x{p} patch")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)

    def heatmap(self, x: torch.Tensor, stride: int | None = None, batch_size: int = 256) -> torch.Tensor:
        raise NotImplementedError


def init_vgg_style(body: nn.Sequential) -> None:
    """He-normal convolutions (fan-in, ReLU gain) and zero biases; small final classifier.

    Plain stacks without batch normalization trained from scratch need this: PyTorch's default
    (uniform, gain 1/sqrt(3)) shrinks activations layer by layer and a 12-layer LocNet then barely
    moves in the first epochs.
    """
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    for m in convs:
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    nn.init.normal_(convs[-1].weight, std=0.01)


class FCNModel(TupacModel):
    """A fully convolutional model: ``body`` maps (N, 3, H, W) to (N, C, h, w) logits.

    When the body has no padding (``exact=True``) every output cell is exactly the patch classifier
    applied to its ``patch_size`` window, and the heatmap keeps only cells whose window lies inside
    the input (a ceil-mode pool may emit one more cell computed from a partial window; it is dropped).
    """

    body: nn.Module

    def __init__(self, card: ModelCard, exact: bool) -> None:
        super().__init__(card)
        self.exact = exact

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, native=True)
        out = self.body(self.normalize(x))
        if out.shape[-2:] != (1, 1):
            raise ModelError(f"{self.card.name}: native patch gave a {tuple(out.shape[-2:])} output, expected 1x1")
        return out.flatten(1)

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) logits over an input of any size >= patch_size (exact cells only)."""
        self._check(x, native=False)
        out = self.body(self.normalize(x))
        if self.exact:
            h, w = self.card.heatmap_shape(x.shape[-2], x.shape[-1])
            out = out[..., :h, :w]
        return out

    def heatmap(self, x: torch.Tensor, stride: int | None = None, batch_size: int = 256) -> torch.Tensor:
        s0 = self.card.output_stride
        if stride is not None and stride % s0:
            raise ModelError(f"{self.card.name}: heatmap stride must be a multiple of {s0}, got {stride}")
        step = (stride or s0) // s0
        with torch.no_grad():
            probs = torch.softmax(self.dense_logits(x), dim=1)
        return probs[..., ::step, ::step]


class PatchClassifier(TupacModel):
    """A patch classifier (``net``: (N, 3, P, P) -> (N, C) logits) run as a sliding window."""

    net: nn.Module

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, native=True)
        return self.net(self.normalize(x))

    def heatmap(self, x: torch.Tensor, stride: int | None = None, batch_size: int = 256) -> torch.Tensor:
        self._check(x, native=False)
        p, s = self.card.patch_size, int(stride or self.card.output_stride)
        n = x.shape[0]
        h, w = self.card.heatmap_shape(x.shape[-2], x.shape[-1], s)
        # A view (N, 3, h, w, P, P): no copy until a batch of windows is gathered.
        windows = x.unfold(2, p, s).unfold(3, p, s)[:, :, :h, :w]
        out = torch.empty(n, self.card.num_classes, h * w, dtype=torch.float32, device=x.device)
        flat = torch.arange(h * w, device=x.device)
        with torch.no_grad():
            for b in range(n):
                for start in range(0, h * w, batch_size):
                    idx = flat[start : start + batch_size]
                    rows, cols = idx // w, idx % w
                    batch = windows[b, :, rows, cols].permute(1, 0, 2, 3).contiguous()
                    out[b, :, start : start + len(idx)] = torch.softmax(self.logits(batch), dim=1).float().T
        return out.view(n, self.card.num_classes, h, w)
