"""Per-epoch checkpoints without pickle: safetensors for tensors, JSON for everything else.

Layout of ``OUT/checkpoints/epoch_0003/``::

    model.safetensors       model state dict
    optimizer.safetensors   optimizer per-parameter tensors, keys "<param index>/<name>"
    state.json              written last: epoch, history, best epoch, config, optimizer scalars

A checkpoint counts only once ``state.json`` exists, so a crash mid-write leaves the previous one as
the latest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tupac.errors import ModelFileError
from tupac.models.io import state_tensors

STATE = "state.json"


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into flat tensors and JSON scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}/{name}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer state dict from :func:`optimizer_to_flat` output."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def epoch_dir(out_dir: Path, epoch: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"epoch_{epoch:04d}"


def save_checkpoint(out_dir: Path, epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> Path:
    """Write the checkpoint of a finished ``epoch`` (1-based); ``state`` must be JSON."""
    from safetensors.torch import save_file

    d = epoch_dir(out_dir, epoch)
    if d.exists():
        shutil.rmtree(d)
    tmp = d.with_name(d.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(state_tensors(model), str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / STATE).write_text(json.dumps({**state, "epoch": epoch, "optimizer": opt_meta}, indent=1))
    os.replace(tmp, d)
    return d


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir``, or None."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("epoch_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE).is_file())
    return done[-1] if done else None


def load_checkpoint(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device) -> dict:
    """Restore model and optimizer from ``ckpt``; returns its JSON state."""
    from safetensors.torch import load_file

    try:
        state = json.loads((ckpt / STATE).read_text())
        model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(device)))
        opt_tensors = load_file(str(ckpt / "optimizer.safetensors"), device=str(device))
        opt.load_state_dict(optimizer_from_flat(opt_tensors, state["optimizer"]))
    except Exception as e:  # any unreadable piece means this checkpoint cannot be resumed
        raise ModelFileError(ckpt, f"cannot resume from this checkpoint: {e}") from None
    return state


def prune_checkpoints(out_dir: Path, keep: set[int]) -> None:
    """Delete epoch checkpoints not in ``keep``."""
    root = Path(out_dir) / "checkpoints"
    for p in root.glob("epoch_*"):
        try:
            e = int(p.name.split("_")[1].split(".")[0])
        except ValueError:
            continue
        if e not in keep:
            shutil.rmtree(p, ignore_errors=True)
