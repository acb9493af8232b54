"""The paper's Fig. 2 numbers for registered networks: size, receptive field, layers, speed."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from tupac.models.registry import create_model, list_models

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def layer_counts(model: nn.Module) -> dict[str, int]:
    """Numbers of convolution, pooling and fully connected (Linear) layers in ``model``."""
    mods = list(model.modules())
    return {
        "conv_layers": sum(isinstance(m, nn.Conv2d) for m in mods),
        "pool_layers": sum(isinstance(m, _POOLS) for m in mods),
        "fc_layers": sum(isinstance(m, nn.Linear) for m in mods),
    }


def forward_ms(model: nn.Module, size: int, repeats: int = 5, warmup: int = 2) -> float:
    """Mean wall time in ms of one forward pass on one (1, 3, size, size) input (eval, no grad)."""
    model.eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - t0) / repeats * 1e3


def profile_models(
    names: list[str] | None = None,
    repeats: int = 5,
    on_model: Callable[[str], None] | None = None,
    task: str | None = None,
) -> list[dict]:
    """One row per model: name, architecture, task, mpp, patch_size, params, receptive_field,
    output_stride, fully_convolutional, conv/pool/fc layer counts, forward_ms (this machine, CPU
    threads as configured, one native-size input). ``task`` builds each for that task (default:
    each architecture's usual task)."""
    rows = []
    for name in names or list_models():
        if on_model:
            on_model(name)
        torch.manual_seed(0)
        model = create_model(name, task=task)
        c = model.card
        rows.append(
            {
                "name": name,
                "architecture": c.architecture,
                "task": c.task,
                "mpp": c.mpp,
                "patch_size": c.patch_size,
                "params": sum(p.numel() for p in model.parameters()),
                "receptive_field": c.receptive_field,
                "output_stride": c.output_stride,
                "fully_convolutional": c.fully_convolutional,
                **layer_counts(model),
                "forward_ms": forward_ms(model, c.patch_size, repeats=repeats),
            }
        )
    return rows
