"""Models by name, timm-style: ``@register_model`` on a factory, ``create_model(name, **kw)``.

A factory is ``fn(task: str, **kw) -> TupacModel`` and returns a model whose ``card`` is filled in.
Names are per architecture; the task is a keyword (``create_model("locnet", task="mitosis")``), because
the same network serves both tasks and only the card (magnification, patch size defaults) changes.
``create_model`` records the keyword arguments in the card (``model_kwargs``), so that
:func:`tupac.models.io.load_model` can rebuild the exact network from ``card.json`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tupac.errors import ModelError
from tupac.models.card import TASK_MPP, TASKS, ModelCard
from tupac.models.receptive import Geometry

#: Default input normalization: RGB in [0, 1] mapped to about [-2, 2]. Stain-standardized H&E has
#: no reason to use ImageNet statistics, and a fixed value keeps cards comparable across runs.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class _Entry:
    name: str
    fn: Callable[..., Any]
    tasks: tuple[str, ...]
    default_task: str
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str | None = None, *, tasks: tuple[str, ...] = TASKS, default_task: str = "tumor"):
    """Decorator registering a factory ``fn(task, **kw) -> TupacModel`` under ``name``."""

    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ModelError(f"model name {key!r} is already registered")
        if default_task not in tasks:
            raise ModelError(f"{key}: default_task {default_task!r} not in tasks {tasks}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = _Entry(key, fn, tuple(tasks), default_task, doc[0] if doc else "")
        return fn

    return deco


def list_models(task: str | None = None) -> list[str]:
    """Registered names (sorted), optionally only those that support ``task``."""
    return sorted(n for n, e in _REGISTRY.items() if task is None or task in e.tasks)


def model_description(name: str) -> str:
    return _entry(name).description


def default_task(name: str) -> str:
    return _entry(name).default_task


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; registered: {sorted(_REGISTRY)}") from None


def create_model(name: str, task: str | None = None, *, seed: int | None = None, **kwargs: Any):
    """Build a registered model with freshly initialized weights (no downloads, ever).

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    task : {"tumor", "mitosis"}, optional
        Default: the architecture's usual task (mitosis for mitosnet/googlenet_fcn, else tumor).
    seed : int, optional
        Draw the initial weights from a generator seeded with this, without touching the global
        torch RNG. Training code passes it: torch seeds its global generator randomly in every
        process, so unseeded weights differ from run to run.
    **kwargs
        Architecture options (JSON values), recorded in ``model.card.model_kwargs``.
    """
    entry = _entry(name)
    task = task or entry.default_task
    if task not in entry.tasks:
        raise ModelError(f"model {name!r} supports tasks {entry.tasks}, not {task!r}")
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ModelError(f"{name}: model options must be JSON values so the card can rebuild it ({e})") from None
    try:
        model = _build(entry, task, seed, kwargs)
    except TypeError as e:  # unknown keyword
        raise ModelError(f"{name}: {e}") from None
    if model.card.model_kwargs != json.loads(json.dumps(kwargs)):
        raise ModelError(f"{name}: factory did not record its kwargs in the card")
    return model


def _build(entry: _Entry, task: str, seed: int | None, kwargs: dict[str, Any]):
    if seed is None:
        return entry.fn(task=task, **kwargs)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return entry.fn(task=task, **kwargs)


def make_card(
    *,
    name: str,
    architecture: str,
    task: str,
    patch_size: int,
    geometry: Geometry,
    fully_convolutional: bool,
    model_kwargs: dict[str, Any],
    mean=DEFAULT_MEAN,
    std=DEFAULT_STD,
    num_classes: int = 2,
) -> ModelCard:
    """Card for a freshly built network (helper for factories)."""
    return ModelCard(
        name=name,
        architecture=architecture,
        task=task,
        mpp=TASK_MPP[task],
        patch_size=int(patch_size),
        mean=tuple(mean),
        std=tuple(std),
        output_stride=geometry.stride,
        output_offset=geometry.offset,
        receptive_field=geometry.receptive_field,
        num_classes=num_classes,
        fully_convolutional=fully_convolutional,
        model_kwargs=dict(model_kwargs),
    )


def parse_options(name: str, kwargs: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``kwargs``; unknown keys are an error naming the known ones."""
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ModelError(f"{name}: unknown options {unknown}; known: {sorted(defaults)}")
    return {**defaults, **kwargs}
