"""Receptive field, output stride and output offset of a convolutional network, two ways.

``geometry(module)`` walks the layers analytically with the usual recurrences (for a layer of kernel
``k``, stride ``s``, padding ``p`` and dilation ``d`` seen through input jump ``j``):
``rf += (d (k - 1)) j``, ``offset += ((d (k - 1)) / 2 - p) j``, ``j *= s``. It understands
``nn.Sequential`` chains of Conv2d / MaxPool2d / AvgPool2d and pointwise layers, and branch modules
whose branches run in parallel on the same input (torchvision's Inception): the block's receptive
field is that of its widest branch. Anything else (residual blocks, adaptive pooling) is refused
rather than guessed.

``measure_geometry(model, size)`` measures the same quantities empirically from input gradients, on a
copy of the network made linear and positive so that no gradient vanishes by accident (max-pools
become average pools of the same geometry: a max routes its gradient to one input only).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from tupac.errors import ModelError

_POINTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.Sigmoid,
    nn.Softmax,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
    nn.Identity,
)


@dataclass(frozen=True)
class Geometry:
    """Analytic geometry of a network's output grid relative to its input.

    Attributes
    ----------
    receptive_field : int
        Input pixels (per side) that one output cell depends on.
    stride : int
        Input pixels between adjacent output cells.
    offset : float
        Input-pixel center of output cell 0 (negative or small when padding shifts it left).
    padded : bool
        True if any layer pads its input (then outputs near the border see padding, not image).
    """

    receptive_field: int
    stride: int
    offset: float
    padded: bool


def _pair(v) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise ModelError(f"non-square layer parameter {v} is not supported")
        return int(v[0])
    return int(v)


def _layer(m: nn.Module):
    """(kernel_extent, stride, padding) of a spatial layer, or None for pointwise layers."""
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pad = 0
            else:  # "same" (stride 1 only in PyTorch)
                pad = _pair(m.dilation) * (_pair(m.kernel_size) - 1) // 2
        else:
            pad = _pair(m.padding)
        k = _pair(m.dilation) * (_pair(m.kernel_size) - 1) + 1
        return k, _pair(m.stride), pad
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        dil = _pair(getattr(m, "dilation", 1))
        return dil * (_pair(m.kernel_size) - 1) + 1, _pair(m.stride or m.kernel_size), _pair(m.padding)
    return None


def _branches(m: nn.Module) -> list[nn.Module] | None:
    names = sorted(n for n, _ in m.named_children() if n.startswith("branch"))
    return [getattr(m, n) for n in names] if names else None


def _walk(m: nn.Module, rf: float, jump: float, offset: float, padded: bool):
    spatial = _layer(m)
    if spatial is not None:
        k, s, p = spatial
        return rf + (k - 1) * jump, jump * s, offset + ((k - 1) / 2 - p) * jump, padded or p > 0
    if isinstance(m, _POINTWISE):
        return rf, jump, offset, padded
    branches = _branches(m)
    if branches is not None:  # parallel branches over the same input (Inception)
        results = [_walk(b, rf, jump, offset, padded) for b in branches]
        if len({(r[1], r[2]) for r in results}) != 1:
            raise ModelError(f"branches of {type(m).__name__} disagree in stride/offset: {results}")
        widest = max(results, key=lambda r: r[0])
        return widest[0], widest[1], widest[2], any(r[3] for r in results)
    children = list(m.children())
    if isinstance(m, nn.Sequential) or (children and type(m).__name__ == "BasicConv2d"):
        for c in children:
            rf, jump, offset, padded = _walk(c, rf, jump, offset, padded)
        return rf, jump, offset, padded
    raise ModelError(
        f"cannot compute the geometry of {type(m).__name__}: only Sequential chains of "
        "Conv2d/MaxPool2d/AvgPool2d, pointwise layers and Inception-style branches are understood"
    )


def geometry(module: nn.Module) -> Geometry:
    """Analytic receptive field, stride and offset of ``module``'s output grid (see module doc)."""
    rf, jump, offset, padded = _walk(module, 1.0, 1.0, 0.0, False)
    return Geometry(int(rf), int(jump), float(offset), padded)


def output_size(module: nn.Module, size: int) -> int:
    """Spatial output side of ``module`` (same walk as :func:`geometry`) for an input side ``size``."""

    def walk(m: nn.Module, n: int) -> int:
        spatial = _layer(m)
        if spatial is not None:
            k, s, p = spatial
            ceil = bool(getattr(m, "ceil_mode", False))
            q = (n + 2 * p - k) / s
            out = (math.ceil(q) if ceil else math.floor(q)) + 1
            if ceil and (out - 1) * s >= n + p:  # PyTorch: last window must start inside the input
                out -= 1
            return out
        if isinstance(m, _POINTWISE):
            return n
        branches = _branches(m)
        if branches is not None:
            return walk(branches[0], n)
        for c in m.children():
            n = walk(c, n)
        return n

    return walk(module, size)


def _linearized(model: nn.Module) -> nn.Module:
    """Deep copy with positive constant conv weights, average pools in place of max pools."""
    m = copy.deepcopy(model).double().eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(
                    parent,
                    name,
                    nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode),
                )
            else:
                swap(child)

    swap(m)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.fill_(1.0 / fan_in)
                if mod.bias is not None:
                    mod.bias.zero_()
    return m


def measure_geometry(net: nn.Module, size: int, cell: tuple[int, int] | None = None) -> dict:
    """Receptive field and stride measured from gradients of output cells w.r.t. the input.

    Parameters
    ----------
    net : nn.Module
        Maps (1, 3, size, size) to (1, C, h, w); must have at least 2x2 outputs at ``size``.
    size : int
        Input side in pixels.
    cell : (int, int), optional
        Output cell to measure; default the middle one (so padding does not clip its field).

    Returns
    -------
    dict
        ``receptive_field`` (bounding-box side of nonzero input gradient), ``stride`` (shift of that
        box between cell ``i`` and ``i + 1``), ``center`` (box center of ``cell``, input pixels),
        ``cell`` and ``out_shape``.
    """
    m = _linearized(net)
    x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = m(x)
    h, w = out.shape[-2:]
    if h < 2 or w < 2:
        raise ModelError(f"measure_geometry needs >= 2x2 outputs; got {h}x{w} at input {size}")
    i, j = cell if cell is not None else (h // 2 - 1, w // 2 - 1)

    def box(ci: int, cj: int) -> tuple[int, int, int, int]:
        (g,) = torch.autograd.grad(out[0, 0, ci, cj], x, retain_graph=True)
        nz = g[0].abs().sum(0) > 0
        rows = torch.nonzero(nz.any(1)).flatten()
        cols = torch.nonzero(nz.any(0)).flatten()
        return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])

    r0, r1, c0, c1 = box(i, j)
    r0b, _, c0b, _ = box(i + 1, j + 1)
    return {
        "receptive_field": max(r1 - r0 + 1, c1 - c0 + 1),
        "stride": r0b - r0 if c0b - c0 == r0b - r0 else (r0b - r0, c0b - c0),
        "center": ((r0 + r1) / 2, (c0 + c1) / 2),
        "cell": (i, j),
        "out_shape": (int(h), int(w)),
    }
