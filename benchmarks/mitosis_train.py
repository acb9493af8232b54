"""Mitosis detector quality and training time on phantom auxiliary sets.

Trains each requested network on a phantom auxiliary set (seed ``--train-seed``), then detects on a
set generated with a different seed (``--test-seed``) and scores it as TUPAC16 does. Reports, per
network and stage, the held-out F1, precision, recall and false positives, and the wall and CPU
time of training together with the machine load. Writes one JSON file.

    .venv/bin/python benchmarks/mitosis_train.py --images 30 --arch mitosnet --out benchmarks/results/mitosis_train.json

A reduced CPU budget for the slower networks: ``--config '{"max_images": 15, "epoch_selection": "patch",
"model_kwargs": {"stride": 32}}' --epochs 3 --test-limit 10`` trains on the first 15 images, selects the
epoch on validation patches instead of per-epoch detection F1, runs the sliding window at a 32 px stride
and scores the first 10 test images. ``--rescore`` scores models already trained in ``--work`` (for
example MitosNet on the same first 10 test images) without training again.

Both stages are scored on the test set: training keeps each stage's selected weights and its own
validation-chosen threshold in ``MODELS/mitosis/stageN/selected``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


from bench_common import cpu_seconds as _cpu_seconds  # noqa: E402  (benchmarks/ is on sys.path)
from bench_common import load_avg as _load  # noqa: E402


def ensure_set(root: Path, seed: int, n: int) -> Path:
    """A phantom auxiliary set of ``n`` images at ``root`` (generated once; one tiny slide)."""
    from tupac.synth import generate_cohort

    if not (root / "mitoses" / "mitoses_image_data").is_dir():
        generate_cohort(root, n_slides=1, seed=seed, size_um=(256.0, 256.0), mitosis_images=n, workers=2)
    return root


def score_model(model, reference, threshold: float, sigma: float, nms: float, test_root: Path,
                limit: int | None = None) -> dict:
    """TUPAC16 scores of a model on the images of a test auxiliary set (the first ``limit`` when given)."""
    from tupac.data import Tupac16Dataset
    from tupac.mitosis.inference import detect_mitoses, read_image
    from tupac.mitosis.scoring import score_images
    from tupac.mitosis.training import _truth_frame

    images = list(Tupac16Dataset(test_root).mitosis_images)[:limit]

    def pairs():
        for m in images:
            det = detect_mitoses(model, read_image(m.path), threshold=threshold, reference=reference,
                                 sigma_px=sigma, nms_radius_px=nms)
            yield m.key, det, _truth_frame(m.points_rc)

    pooled, _ = score_images(pairs())
    return {"f1": pooled.f1, "precision": pooled.precision, "recall": pooled.recall,
            "tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn, "n_images": len(images)}


def run(arch: str, train_root: Path, test_root: Path, out_dir: Path, train_cfg: dict, extra: dict,
        test_limit: int | None = None, rescore: bool = False) -> dict:
    import torch

    from tupac.models.trained import load_trained
    from tupac.mitosis.training import MitosisTrainConfig, train_mitosis
    from tupac.train import MemoryTracker

    if rescore:  # score a model trained earlier in out_dir / arch; its training record says what it was
        record = json.loads((out_dir / arch / "training.json").read_text())
        row = {"arch": arch, "rescored": True, "config": record["config"], "chosen_stage": record["chosen_stage"],
               "threshold": record["threshold"], "stages": record["stages"]}
    else:
        cfg = MitosisTrainConfig(arch=arch, train=train_cfg, **extra)
        load0, cpu0, t0 = _load(), _cpu_seconds(), time.perf_counter()
        result = train_mitosis(train_root, out_dir / arch, cfg, tracker=MemoryTracker(),
                               progress=lambda m: print(f"  [{arch} {time.perf_counter() - t0:.0f}s] {m}", flush=True))
        wall, cpu, load1 = time.perf_counter() - t0, _cpu_seconds() - cpu0, _load()
        row = {"arch": arch, "config": cfg.to_dict(), "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
               "load_before": load0, "load_after": load1, "torch_threads": torch.get_num_threads(),
               "chosen_stage": result.chosen_stage, "threshold": result.threshold, "stages": result.stages}
    card = load_trained(out_dir / arch).card
    for st in row["stages"]:
        sel = load_trained(out_dir / arch / f"stage{st['stage']}" / "selected")
        e0, c0 = time.perf_counter(), _cpu_seconds()
        scores = score_model(sel.model, sel.reference, sel.threshold, card.extra["sigma_px"],
                             card.extra["nms_radius_px"], test_root, test_limit)
        key = f"test_stage{st['stage']}"
        row[key] = {**scores, "threshold": sel.threshold, "eval_wall_s": round(time.perf_counter() - e0, 1),
                    "eval_cpu_s": round(_cpu_seconds() - c0, 1), "eval_load": _load()}
        print(f"  [{arch}] {key}: {json.dumps(row[key])}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["mitosnet"])
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--test-images", type=int, default=30)
    ap.add_argument("--train-seed", type=int, default=1)
    ap.add_argument("--test-seed", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test images")
    ap.add_argument("--rescore", action="store_true", help="score models already trained in --work, no training")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core box)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tupac-mitosis-bench"))
    ap.add_argument("--config", type=str, default="{}", help="JSON of extra MitosisTrainConfig fields")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/mitosis_train.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    train_root = ensure_set(args.work / f"train_s{args.train_seed}_{args.images}", args.train_seed, args.images)
    test_root = ensure_set(args.work / f"test_s{args.test_seed}_{args.test_images}", args.test_seed, args.test_images)
    extra = json.loads(args.config)
    train_cfg = {"epochs": args.epochs, "batch_size": 64, "lr": 2e-3, "monitor": "auroc", **extra.pop("train", {})}
    rows = []
    for arch in args.arch:
        rows.append(run(arch, train_root, test_root, args.work / "models", train_cfg, extra,
                        test_limit=args.test_limit, rescore=args.rescore))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stages"}, default=float), flush=True)
    doc = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "train_images": args.images, "test_images": args.test_images,
           "train_seed": args.train_seed, "test_seed": args.test_seed,
           "epochs_per_stage": None if args.rescore else args.epochs,  # a rescored row's "config" says
           "test_limit": args.test_limit, "torch_threads": args.threads,
           "config": extra, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
