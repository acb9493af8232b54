"""Tumor localizer quality and training time on phantom cohorts (train on one seed, test on another).

Trains each requested network with the two-stage active learning of ``tupac train tumor`` on a
phantom cohort (seed ``--train-seed``), then maps every slide of a cohort generated with another
seed (``--test-seed``) with each stage's selected weights and scores the map against the true tumor
mask: pooled pixel AUROC, Dice at the stage's validation-chosen threshold (the one its card would
carry) and the false-positive area. Records the wall and CPU time of training with the machine load,
and (``--throughput``) the training patches/s of a network configuration. Writes one JSON file.

    # LocNet as the demo trains it (narrow widths), 12 training slides, 6 held-out slides
    .venv/bin/python benchmarks/tumor_train.py --arch locnet --out benchmarks/results/tumor_train.json
    # sliding-window baselines on a stated CPU budget: fewer patches and epochs, stride 32 px maps
    .venv/bin/python benchmarks/tumor_train.py --arch resnet18 --preset budget \\
        --out benchmarks/results/tumor_train_resnet18.json

Presets (``--config`` JSON overrides any :class:`tupac.tumor.training.TumorTrainConfig` field):

- ``demo``: ``tupac.pipeline.DEMO_CONFIG``'s tumor section (narrow LocNet ``widths [8,16,24,32,64]``,
  ``fc_width 64``, 120 + 120 patches per slide, 6 epochs per stage). Its ``model_kwargs`` apply to
  LocNet only.
- ``default``: ``TumorTrainConfig()`` (full-width LocNet, 200 + 200 patches, 8 epochs).
- ``budget``: the CPU budget of the sliding-window baselines: 60 + 60 patches per slide, 3 epochs
  per stage, and the sliding window at a 32 px stride (default 16) both for the stage-2 mapping and
  for the held-out maps (4x fewer patches to classify per slide).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

PRESETS = {
    "default": {},
    "budget": {
        "positives_per_slide": 60,
        "negatives_per_slide": 60,
        "model_kwargs": {"stride": 32},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.003, "lr_schedule": "cosine", "monitor": "loss"},
    },
}


from bench_common import cpu_seconds as _cpu_seconds  # noqa: E402  (benchmarks/ is on sys.path)
from bench_common import load_avg as _load  # noqa: E402


def ensure_cohort(root: Path, seed: int, n: int, size_um: tuple[float, float]) -> Path:
    """A phantom cohort of ``n`` slides at ``root`` (generated once, no mitosis images)."""
    from tupac.synth import generate_cohort

    if not (root / "training_image_data").is_dir():
        generate_cohort(root, n_slides=n, seed=seed, size_um=size_um, mitosis_images=0, workers=1)
    return root


def preset_config(name: str, arch: str, overrides: dict, seed: int):
    """The :class:`TumorTrainConfig` of a preset for ``arch``, with ``overrides`` applied on top."""
    from tupac.pipeline import DEMO_CONFIG
    from tupac.tumor.training import TumorTrainConfig

    if name == "demo":
        values = dict(DEMO_CONFIG.tumor)
        if arch != "locnet":
            values.pop("model_kwargs", None)  # the narrow widths are LocNet options
    else:
        values = json.loads(json.dumps(PRESETS[name]))
    train = {**values.pop("train", {}), **overrides.pop("train", {})}
    values.update(overrides)
    if train:
        values["train"] = {**TumorTrainConfig().train, **train}
    return TumorTrainConfig(arch=arch, seed=seed, **values)


def training_throughput(arch: str, model_kwargs: dict, batch: int = 32, steps: int = 6) -> dict:
    """Training patches/s of one network (forward, backward, Adam step on random patches)."""
    import torch

    from tupac.models import create_model

    model = create_model(arch, task="tumor", **model_kwargs)
    model.train()
    p = model.card.patch_size
    x = torch.rand(batch, 3, p, p)
    y = torch.randint(0, 2, (batch,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model.logits(x), y).backward()
        opt.step()

    step()  # warm-up (allocations, one-time kernels)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"arch": arch, "model_kwargs": model_kwargs, "patch_size": p, "batch": batch,
            "parameters": int(sum(q.numel() for q in model.parameters())),
            "patches_per_s": round(batch * steps / dt, 1), "load": _load()}


def stage_model(out_dir: Path, stage: dict, reference_path: Path):
    """Stage ``stage['stage']``'s selected weights with the threshold its card would carry."""
    from tupac.models.trained import TrainedModel
    from tupac.models import load_model
    from tupac.preprocess.stain import StainReference

    best = out_dir / f"stage{stage['stage']}" / "best"
    model = load_model(best)
    model.eval()
    return TrainedModel(model, StainReference.load(reference_path), float(stage["threshold"]), "", best)


def run(arch: str, cfg, train_root: Path, test_root: Path, out_dir: Path) -> dict:
    import torch

    from tupac.train import MemoryTracker
    from tupac.synth.tumor_quality import evaluate_cohort
    from tupac.tumor.training import STAIN_REFERENCE_FILE, train_tumor

    load0, cpu0, t0 = _load(), _cpu_seconds(), time.perf_counter()
    result = train_tumor(train_root, out_dir, cfg, tracker=MemoryTracker(),
                         progress=lambda m: print(f"  [{arch} {time.perf_counter() - t0:.0f}s] {m}", flush=True))
    wall, cpu, load1 = time.perf_counter() - t0, _cpu_seconds() - cpu0, _load()
    row = {"arch": arch, "config": cfg.to_dict(), "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
           "load_before": load0, "load_after": load1, "torch_threads": torch.get_num_threads(),
           "chosen_stage": result.chosen_stage, "threshold": result.threshold, "stages": result.stages,
           "train_slides": result.train_slides, "val_slides": result.val_slides}
    for st in result.stages:
        trained = stage_model(out_dir, st, out_dir / STAIN_REFERENCE_FILE)
        e0, c0 = time.perf_counter(), _cpu_seconds()
        table, pooled = evaluate_cohort(trained, test_root)
        row[f"test_stage{st['stage']}"] = {
            **pooled, "threshold": trained.threshold, "cell_um": float(trained.model.card.output_stride),
            "eval_wall_s": round(time.perf_counter() - e0, 1), "eval_cpu_s": round(_cpu_seconds() - c0, 1),
            "eval_load": _load(), "per_slide": table.to_dict(orient="records"),
        }
        print(f"  [{arch}] stage {st['stage']} held-out: auroc {pooled['auroc']:.4f} dice {pooled['dice']:.4f} "
              f"fp {pooled['fp_area_mm2']:.4f} mm2", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["locnet"])
    ap.add_argument("--preset", choices=["demo", "default", "budget"], default="demo")
    ap.add_argument("--config", type=str, default="{}", help="JSON of TumorTrainConfig fields over the preset")
    ap.add_argument("--slides", type=int, default=12)
    ap.add_argument("--test-slides", type=int, default=6)
    ap.add_argument("--size-um", type=float, nargs=2, default=(1500.0, 1200.0), metavar=("W", "H"))
    ap.add_argument("--train-seed", type=int, default=11)
    ap.add_argument("--test-seed", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="training seed (split, sampling, initialization)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core box)")
    ap.add_argument("--throughput", type=str, nargs="*", default=[],
                    help="also measure training patches/s of these JSON model_kwargs of LocNet, e.g. '{}'")
    ap.add_argument("--no-train", action="store_true", help="only the throughput measurements")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tupac-tumor-bench"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tumor_train.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    size = (float(args.size_um[0]), float(args.size_um[1]))
    doc = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "torch_threads": args.threads,
           "train_slides": args.slides, "test_slides": args.test_slides, "size_um": list(size),
           "train_seed": args.train_seed, "test_seed": args.test_seed, "preset": args.preset,
           "overrides": json.loads(args.config), "throughput": [], "results": []}
    for kw in args.throughput:
        doc["throughput"].append(training_throughput("locnet", json.loads(kw)))
        print(json.dumps(doc["throughput"][-1]), flush=True)
    if not args.no_train:
        tag = f"{int(size[0])}x{int(size[1])}"
        train_root = ensure_cohort(args.work / f"train_s{args.train_seed}_{args.slides}_{tag}", args.train_seed,
                                   args.slides, size)
        test_root = ensure_cohort(args.work / f"test_s{args.test_seed}_{args.test_slides}_{tag}", args.test_seed,
                                  args.test_slides, size)
        for arch in args.arch:
            cfg = preset_config(args.preset, arch, json.loads(args.config), args.seed)
            doc["results"].append(run(arch, cfg, train_root, test_root, args.work / "models" / args.preset / arch))
            print(json.dumps({k: v for k, v in doc["results"][-1].items() if k not in ("stages", "config")},
                             default=float)[:2000], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
