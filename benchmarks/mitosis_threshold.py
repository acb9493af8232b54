"""How much the mitosis detection threshold moves with the training seed, per threshold rule (issue 17).

Trains a small mitosis detector (one stage, few epochs) on a phantom auxiliary set once per seed
(the seed draws the train/validation split, the patch sample and the network's initialisation),
then reads back every threshold rule's choice on that seed's validation images
(``tupac.mitosis.training.rule_thresholds``, recorded in the stage summary as
``val_threshold_<rule>``), the Platt calibration, and the F1 / precision / recall each rule's
threshold gives on a held-out phantom set generated with another seed (detected once down to
probability 0.05, then cut at each threshold).

Each seed is one run (about 2-3 min on 2 shared cores); results accumulate in the JSON file, so
seeds can be run one command at a time::

    .venv/bin/python benchmarks/mitosis_threshold.py --seeds 0
    .venv/bin/python benchmarks/mitosis_threshold.py --seeds 1 2

Writes ``benchmarks/results/mitosis_threshold.json`` with, per rule, the spread (min, max, standard
deviation) over the seeds of the raw threshold, of the threshold on the calibrated scale, and of
the held-out F1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "mitosis_threshold.json"
RULES = ("best_f1", "calibrated_half", "f1_plateau")
CONFIG = {"epochs": 3, "two_stage": False, "negatives_per_image": 80, "background_per_image": 20,
          "positive_copies": 12}


def ensure_set(root: Path, seed: int, n: int) -> Path:
    """A phantom auxiliary set of ``n`` images at ``root`` (generated once; one tiny slide)."""
    from tupac.synth import generate_cohort

    if not (root / "mitoses" / "mitoses_image_data").is_dir():
        generate_cohort(root, n_slides=1, seed=seed, size_um=(256.0, 256.0), mitosis_images=n, workers=1)
    return root


def test_detections(model_dir: Path, test_root: Path, floor: float = 0.05):
    """Detections (down to ``floor``) and truths of every image of the test set."""
    from tupac.data import Tupac16Dataset
    from tupac.mitosis.inference import detect_mitoses, read_image
    from tupac.mitosis.training import _truth_frame
    from tupac.models.trained import load_trained

    trained = load_trained(model_dir)
    extra = trained.card.extra
    dets, truths = [], []
    for m in Tupac16Dataset(test_root).mitosis_images:
        dets.append(detect_mitoses(trained.model, read_image(m.path), threshold=floor, reference=trained.reference,
                                   sigma_px=extra["sigma_px"], nms_radius_px=extra["nms_radius_px"]))
        truths.append(_truth_frame(m.points_rc))
    return dets, truths


def scores_at(dets, truths, thr: float) -> dict:
    """Pooled TUPAC16 counts and F1 of the detections with ``prob >= thr``."""
    from tupac.mitosis.scoring import score_images

    pooled, _ = score_images((str(i), d[d["prob"] >= thr], t) for i, (d, t) in enumerate(zip(dets, truths)))
    return pooled.to_dict()


def run_seed(seed: int, train_root: Path, test_root: Path, work: Path, epochs: int) -> dict:
    """Train with ``seed``; every rule's validation threshold and held-out scores."""
    from tupac.mitosis.calibration import PlattCalibration
    from tupac.mitosis.training import MitosisTrainConfig, train_mitosis

    cfg = {k: v for k, v in CONFIG.items() if k != "epochs"}
    config = MitosisTrainConfig(seed=seed, train={"epochs": epochs, "batch_size": 64, "lr": 2e-3, "monitor": "auroc"},
                                **cfg)
    t0 = time.time()
    res = train_mitosis(train_root, work / f"seed{seed}" / "mitosis", config, progress=lambda m: print(f"[seed {seed}] {m}", flush=True))
    train_s = time.time() - t0
    summary = res.stages[res.chosen_stage - 1]
    cal = PlattCalibration(summary["val_cal_a"], summary["val_cal_b"], summary["val_cal_n"], summary["val_cal_n_pos"])
    dets, truths = test_detections(res.model_dir, test_root)
    rules = {}
    for rule in RULES:
        thr = float(summary[f"val_threshold_{rule}"])
        rules[rule] = {"threshold": thr, "calibrated_threshold": float(cal.apply(thr)), "test": scores_at(dets, truths, thr)}
    return {"seed": seed, "train_seconds": round(train_s, 1), "val_images": res.val_images,
            "val_max_f1": summary["val_max_f1"], "calibration": cal.to_dict(), "rules": rules}


def spread(rows: list[dict]) -> dict:
    """Per rule: min, max and standard deviation over seeds of the raw and calibrated thresholds and test F1."""
    out = {}
    for rule in RULES:
        vals = {"threshold": [r["rules"][rule]["threshold"] for r in rows],
                "calibrated_threshold": [r["rules"][rule]["calibrated_threshold"] for r in rows],
                "test_f1": [r["rules"][rule]["test"]["f1"] or 0.0 for r in rows]}
        out[rule] = {k: {"min": float(np.min(v)), "max": float(np.max(v)), "std": float(np.std(v)), "values": v}
                     for k, v in vals.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mitosis_threshold"))
    ap.add_argument("--train-images", type=int, default=15)
    ap.add_argument("--test-images", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=CONFIG["epochs"])
    ap.add_argument("--result", type=Path, default=RESULT)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    train_root = ensure_set(a.work / "train", 31, a.train_images)
    test_root = ensure_set(a.work / "test", 32, a.test_images)
    old = json.loads(a.result.read_text()) if a.result.exists() else {}
    rows = {r["seed"]: r for r in old.get("seeds", [])}
    for seed in a.seeds:
        rows[seed] = run_seed(seed, train_root, test_root, a.work, a.epochs)
    ordered = [rows[s] for s in sorted(rows)]
    result = {
        "command": "python benchmarks/mitosis_threshold.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load": [round(v, 2) for v in os.getloadavg()]},
        "train_set": {"seed": 31, "images": a.train_images}, "test_set": {"seed": 32, "images": a.test_images},
        "config": {**CONFIG, "epochs": a.epochs},
        "seeds": ordered,
        "spread": spread(ordered),
    }
    a.result.parent.mkdir(parents=True, exist_ok=True)
    a.result.write_text(json.dumps(result, indent=1, default=float))
    for rule, s in result["spread"].items():
        print(f"{rule:16s} raw thr {np.round(s['threshold']['values'], 3)} calibrated {np.round(s['calibrated_threshold']['values'], 3)} "
              f"test F1 {np.round(s['test_f1']['values'], 3)}")
    print(f"wrote {a.result}")


if __name__ == "__main__":
    main()
