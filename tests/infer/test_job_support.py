"""Helpers shared by the cohort-job tests (no tests here): tiny models, phantom cohorts, run checks.

Correctness of the job does not need good weights, so the models are untrained (seeded) tiny
LocNet / MitosNet with a Reinhard stain reference fitted on a real H&E image.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "fixtures" / "real"
PY = sys.executable


def make_models(out: Path, mitosis: bool = True, tumor_threshold: float = 0.5, detection_threshold: float = 0.5) -> Path:
    """``out/tumor`` (+ ``out/mitosis``): seeded untrained tiny models with a stain reference."""
    import torch
    from PIL import Image

    from tupac.models import create_model, save_model
    from tupac.preprocess import stain

    template = np.asarray(Image.open(REAL / "he-tumor-target.png").convert("RGB"))[:400, :400]
    ref = stain.fit(template, method="reinhard")
    tasks = [("tumor", "locnet", {"widths": [8, 16, 16, 32, 32], "fc_width": 32})]
    if mitosis:
        tasks.append(("mitosis", "mitosnet", {"width": 8, "fc_width": 16}))
    for seed, (task, name, kw) in enumerate(tasks):
        torch.manual_seed(seed)
        model = create_model(name, task=task, **kw)
        d = out / task
        d.mkdir(parents=True, exist_ok=True)
        ref.save(d / "stain_reference.json")
        meta = {"stain_reference": "stain_reference.json", "stain_method": "reinhard"}
        if task == "tumor":
            meta["extra"] = {"threshold": tumor_threshold}
        else:
            meta["detection_threshold"] = detection_threshold
        model.update_card(**meta)
        save_model(model, model.card, d)
    return out


def make_cohort(root: Path, n: int = 3, seed: int = 3, size_um=(1000.0, 800.0)) -> Path:
    from tupac.synth import generate_cohort

    generate_cohort(root, n_slides=n, seed=seed, size_um=size_um, mitosis_images=0, workers=1)
    return root


def slides_of(root: Path) -> list[Path]:
    return sorted((root / "training_image_data").glob("*.svs"))


def write_manifest(path: Path, rows: list[tuple[str, Path | str, float | None]]) -> Path:
    lines = ["slide_id,path,mpp"] + [f"{sid},{p},{'' if m is None else m}" for sid, p, m in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def output_digests(run: Path) -> dict[str, str]:
    """SHA-256 of every heatmap chunk and detections file of a run (commit records excluded:
    they hold timings), keyed by path relative to ``run/slides``."""
    out = {}
    base = run / "slides"
    for p in sorted(base.rglob("*")):
        if p.is_file() and p.name != "commit.json" and not p.name.startswith("."):
            out[str(p.relative_to(base))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def infer_cli(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``tupac infer`` in a child process (its own local Ray unless --address is given)."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([PY, "-m", "tupac", "infer", *args], capture_output=True, text=True, env=e, **kw)


def local_args(models: Path, out: Path, *, data: Path | None = None, manifest: Path | None = None) -> list[str]:
    src = ["--data", str(data)] if data is not None else ["--manifest", str(manifest)]
    return [*src, "--models", str(models), "--out", str(out), "--actors", "1", "--local-cpus", "2",
            "--object-store-mb", "200", "--no-dashboard", "--tumor-chunk", "16", "--mitosis-chunk", "32",
            "--batch-size", "2"]


def cluster_args(models: Path, out: Path, data: Path, address: str) -> list[str]:
    """:func:`local_args` for a run against the cluster at ``address``: without the options of a local Ray
    (CPUs, object store, dashboard) and of the actor count, so the job plans its actors on the cluster."""
    args = local_args(models, out, data=data)
    for opt in ("--local-cpus", "--object-store-mb", "--actors"):
        i = args.index(opt)
        del args[i : i + 2]
    args.remove("--no-dashboard")
    # The clean local run's one CPU actor runs torch on 2 threads; a convolution's float sums can differ in
    # their last bits with the thread count (seen on some CPUs), so the cluster's actors use as many.
    return [*args, "--address", address, "--threads-per-actor", "2"]


def clean_digests(models: Path, data: Path, run: Path, timeout: float = 900) -> dict[str, str]:
    """:func:`output_digests` of a clean local ``tupac infer`` run: the reference every cluster run must equal."""
    proc = infer_cli(local_args(models, run, data=data), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output_digests(run)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())
