"""Saving and loading models as ``model.safetensors`` + ``card.json``; never pickle.

``load_model`` rebuilds the network from the card through the registry, then fills in the weights
from the safetensors file (a flat tensor container that cannot execute code on load).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tupac.errors import ModelError, ModelFileError
from tupac.models.card import ModelCard
from tupac.models.registry import create_model

WEIGHTS = "model.safetensors"
CARD = "card.json"
#: Card fields that must agree between the saved card and a network rebuilt from it.
_GEOMETRY = ("architecture", "patch_size", "output_stride", "output_offset", "receptive_field", "num_classes")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors (channels_last weights are made contiguous)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_model(model: torch.nn.Module, card: ModelCard | None, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/card.json``; returns ``out_dir``.

    ``card`` defaults to ``model.card``. The card is written last, so a directory with a card
    always has complete weights.
    """
    from safetensors.torch import save_file

    card = card or model.card
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = state_tensors(model)
    _atomic_write(out / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"tupac_model": card.name}))
    _atomic_write(out / CARD, lambda p: p.write_text(card.to_json() + "\n"))
    return out


def load_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / CARD
    if not path.is_file():
        raise ModelFileError(path, "no model card (card.json) here; expected a directory written by save_model")
    try:
        return ModelCard.from_json(path.read_text())
    except ModelError as e:
        raise ModelFileError(path, str(e)) from None


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model described by ``model_dir/card.json`` and load its safetensors weights.

    Returns the model in eval mode on ``device`` with ``model.card`` equal to the saved card.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    card = load_card(model_dir)
    try:
        model = create_model(card.name, task=card.task, **card.model_kwargs)
    except ModelError as e:
        raise ModelFileError(model_dir / CARD, f"cannot rebuild the network: {e}") from None
    for f in _GEOMETRY:
        if getattr(model.card, f) != getattr(card, f):
            raise ModelFileError(
                model_dir / CARD,
                f"card says {f}={getattr(card, f)!r} but the rebuilt network has {getattr(model.card, f)!r}",
            )
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise ModelFileError(weights, "weights file is missing")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(weights, f"cannot read safetensors weights: {e}") from None
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ModelFileError(
            weights, f"weights do not match {card.name}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatch
        raise ModelFileError(weights, f"weights do not fit {card.name}: {e}") from None
    model.card = card
    return model.to(device).eval()
