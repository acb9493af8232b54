"""Run folders whose heatmaps and detections are a phantom cohort's ground truth (for the feature checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from feature_stores import block_mean, write_run_slide

from tupac.synth import generate_cohort, read_truth_mask

TUMOR_MPP = 16.0


def make_cohort(root: Path, n: int = 8, seed: int = 3) -> dict:
    """A phantom cohort of ``n`` tiny slides (1000 x 800 µm); returns ``truth/cohort.json``."""
    generate_cohort(root, n, seed, size_um=(1000.0, 800.0), mitosis_images=0, workers=1)
    return json.loads((root / "truth" / "cohort.json").read_text())


def labelled_phantom(root: Path, labels_name: str, n_train: int) -> tuple[Path, dict, Path]:
    """A phantom cohort in ``root/data``, a labels file ``root/labels_name`` with its first ``n_train``
    slides (the training slides; the rest are new) and random models; returns ``(root, cohort meta, models)``."""
    meta = make_cohort(root / "data")
    lines = (root / "data" / "training_ground_truth.csv").read_text().splitlines()
    (root / labels_name).write_text("\n".join(lines[:n_train]) + "\n")
    return root, meta, random_models(root / "models")


def truth_run(root: Path, run: Path, ids: list[str] | None = None, *, spurious: int = 3, seed: int = 0,
              no_tumor: tuple[str, ...] = (), no_tissue: tuple[str, ...] = ()) -> dict[str, Path]:
    """RUN/slides from the truth: tumor heatmap = the true tumor mask as probabilities at 16 µm/px
    (4 x 4 block means of the 4 µm/px mask), tissue = the true tissue mask, detections = every true
    mitosis (prob 0.6-0.99) plus ``spurious`` low-probability points (prob < 0.3) anywhere on the slide.
    Slides in ``no_tumor`` get an all-zero tumor heatmap and no detections; slides in ``no_tissue``
    also an empty tissue mask and ``no_tissue`` in their commit (what the job commits for a blank slide)."""
    meta = json.loads((root / "truth" / "cohort.json").read_text())
    rng = np.random.default_rng(seed)
    out = {}
    for sid in ids or sorted(meta["slides"]):
        s = meta["slides"][sid]
        tumor4, mpp4 = read_truth_mask(root / "truth" / sid / "tumor.png")
        tissue, tissue_mpp = read_truth_mask(root / "truth" / sid / "tissue.png")
        f = int(round(TUMOR_MPP / mpp4))
        tumor = block_mean(tumor4.astype(np.float32), f).astype(np.float32)
        mit = pd.read_csv(root / "truth" / sid / "mitoses.csv")
        det = pd.DataFrame({"x": mit["x"].to_numpy(float), "y": mit["y"].to_numpy(float),
                            "prob": rng.uniform(0.6, 0.99, len(mit))})
        w, h = s["size_px"]
        fake = pd.DataFrame({"x": rng.uniform(0, w, spurious), "y": rng.uniform(0, h, spurious),
                             "prob": rng.uniform(0.05, 0.3, spurious)})
        det = pd.concat([det, fake], ignore_index=True)
        if sid in no_tumor or sid in no_tissue:
            tumor[:] = 0.0
            det = det.iloc[:0]
        if sid in no_tissue:
            tissue = np.zeros_like(tissue)
        out[sid] = write_run_slide(run, sid, Path(s["path"]), {
            "tumor": (tumor, TUMOR_MPP, None, 16),
            "tissue": (tissue, tissue_mpp, None, 64),
        }, det, extra={"no_tissue": sid in no_tissue})
    return out


def random_models(models: Path, seed: int = 0) -> Path:
    """MODELS/mitosis with a seeded, untrained MitosNet (the feature mechanics do not need a trained one)."""
    import torch

    from tupac.models import create_model, save_model

    torch.manual_seed(seed)
    m = create_model("mitosnet")
    save_model(m, m.card, models / "mitosis")
    return models
