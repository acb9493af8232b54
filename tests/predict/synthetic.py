"""A seeded synthetic feature table whose labels follow a few features (the rest is noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LIGHT = ["--grade-models", "logreg_enet,svm", "--rna-models", "elastic_net,svr", "--k-features", "10"]
INFORMATIVE = ["mitotic_density", "mitosis_count_log", "ki67_like_texture", "nuclear_atypia"]


def synthetic_cohort(n: int = 75, n_noise: int = 30, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(features, labels)`` for ``n`` slides TUPAC-TR-001...

    A latent mitotic density ``z ~ N(0, 1)`` sets the grade (tertiles -> 1, 2, 3) and the RNA
    score (``0.8 z + N(0, 0.25)``); the four informative features are noisy monotone functions of
    ``z``; ``n_noise`` columns are independent N(0, 1). A few NaNs are sprinkled in.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    grade = np.digitize(z, np.quantile(z, [1 / 3, 2 / 3])) + 1
    rna = 0.8 * z + rng.normal(0.0, 0.25, n)
    feats = {
        "mitotic_density": z + rng.normal(0, 0.15, n),
        "mitosis_count_log": np.log1p(np.exp(1.5 + z + rng.normal(0, 0.2, n))),
        "ki67_like_texture": 2.0 * z + rng.normal(0, 0.4, n),
        "nuclear_atypia": 0.5 * z + rng.normal(0, 0.12, n),
    }
    for j in range(n_noise):
        feats[f"noise_{j:02d}"] = rng.normal(size=n)
    X = pd.DataFrame(feats)
    X.loc[rng.choice(n, 3, replace=False), "noise_00"] = np.nan
    X.loc[rng.choice(n, 2, replace=False), "nuclear_atypia"] = np.nan
    ids = [f"TUPAC-TR-{i:03d}" for i in range(1, n + 1)]
    X.insert(0, "slide_id", ids)
    labels = pd.DataFrame({"slide_id": ids, "mitosis_score": grade.astype(np.int64), "proliferation_score": rna})
    return X, labels


def write_ground_truth(labels: pd.DataFrame, path) -> None:
    """The TUPAC16 header-less ``training_ground_truth.csv`` (row i = TUPAC-TR-i)."""
    lines = [f"{int(g)},{r:.6f}" for g, r in zip(labels["mitosis_score"], labels["proliferation_score"])]
    path.write_text("\n".join(lines) + "\n")


def make_run(root: Path, n: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """A run directory with features.parquet and a TUPAC16 ground-truth CSV beside it."""
    features, labels = synthetic_cohort(n=n, seed=seed)
    run = root / "run"
    run.mkdir(parents=True)
    features.to_parquet(run / "features.parquet", index=False)
    gt = root / "training_ground_truth.csv"
    write_ground_truth(labels, gt)
    return run, gt
