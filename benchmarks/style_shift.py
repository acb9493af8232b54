"""Style shift: train on some phantom styles and centers, test on a style the models never saw.

Every quality figure of the 60-slide benchmark (``cohort_pipeline.py``) is measured on the look the
models were trained on. This benchmark holds a whole visual style out (nucleus and mitosis shapes,
look-alikes, stain strength, focus, JPEG quality, folds and pen marks: :mod:`tupac.synth.style`),
which is what a lab sees when it brings models trained elsewhere.

What it does:

1. Generates, once per ``--root`` (a stamp records the arguments; later runs reuse the data):

   - a training cohort: ``--train-slides`` slides and ``--train-fields`` mitosis fields of each of the
     ``--train-styles``, merged into one TUPAC16-layout folder (slide IDs and field folders
     renumbered; the truth follows);
   - a test cohort of the held-out ``--test-style``: ``--test-slides`` slides cycling over
     ``--test-centers`` (one of them, ``D``, the dark-hematoxylin center), and ``--test-fields``
     mitosis fields of the same style.

2. Trains the tumor and the mitosis networks on the training cohort (``tracked_training``, the
   pipeline's own training stage), with the variant's config (``--variant``: the benchmark config of
   ``cohort_pipeline.py`` plus the variant's overrides, listed in :data:`VARIANTS`).
3. Runs ``tupac run`` on the test cohort with those models (``--models``): inference, features, the
   cross-validated fit (grade and RNA models fitted on the test cohort's features, so the figures show
   what the networks' outputs still carry on the unseen look), report.
4. Reads back, against the test cohort's exact truth, and writes ``benchmarks/results/style_shift.json``
   (one entry per variant, each naming its overrides):

   - tumor: pooled pixel AUROC and Dice of the tumor heatmap inside tissue (at the tumor card's
     threshold), tumor area error per slide (``tumor_area_mm2`` of the feature table against the true
     mask) with its median absolute value and the share of slides within 10 %;
   - mitosis on the slides: pooled precision / recall / F1 of every detection against every true
     mitosis (TUPAC16 matching, 30 px), false positives per mm^2 of true tumor by center, and the
     per-slide count of detected mitoses in tumor against the true count (Spearman);
   - mitosis on the held-out fields of the unseen style: pooled precision / recall / F1;
   - grade accuracy, quadratic kappa and RNA Spearman of the fit's best model;
   - stain: per center, the hematoxylin density in true tumor before and after standardization
     towards the mitosis network's reference, and the residual spread between centers;
   - the out-of-distribution flags the run raised, where the pipeline has the check;
   - the issue's targets, each marked met or not.

Usage (about 15-25 min per variant on 2 cores the first time; a variant whose models exist only
reruns what changed)::

    nice -n 10 .venv/bin/python benchmarks/style_shift.py [--root /tmp/style_shift] [--variant baseline]
        [--train-styles default,lab2,lab3] [--test-style lab4] [--test-centers D,A,P]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "style_shift.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

import cohort_pipeline as cp  # noqa: E402

TARGETS = {
    "mitosis_precision": 0.85,
    "mitosis_recall": 0.85,
    "fp_per_mm2_ratio_across_centers": 2.0,
    "count_spearman": 0.9,
    "median_abs_tumor_area_error": 0.10,
    "grade_kappa": 0.8,
}
"""Issue 17's targets on the unseen style (ratios and errors are upper bounds, the rest lower bounds)."""

VARIANTS: dict[str, dict[str, dict]] = {
    # The benchmark config as it was before issue 17's changes (run on the commit that added the styles).
    "baseline": {},
    # The paper's features in substance (MitosNet's 4,096-wide conv3 descriptors clustered on the fringe
    # patches' mitoses, a 1,024-wide general-feature layer) and the feature-group ablation in the fit.
    "paper_features": {"fit": {"ablation": True}},
    # Each of the following changes one thing against paper_features.
    "tissue_dilated": {"fit": {"ablation": True}, "infer": {"tissue_dilation_um": 8.0}},
    "threshold_calibrated": {"fit": {"ablation": True}, "mitosis": {"threshold_rule": "calibrated_half"}},
    "mitosis_two_stage": {"fit": {"ablation": True}, "mitosis": {"two_stage": True}},
    "stain_jitter_measured": {"fit": {"ablation": True}, "tumor": {"train": {"augment": {"stain_sigma": 0.10}}},
                              "mitosis": {"train": {"augment": {"stain_sigma": 0.10}}}},
    # Focus blur in training: the styles blur by sigma 0.4-2.2 level-0 px; the mitosis network reads
    # level 0 (0.25 um/px), the tumor network 4x coarser, so its largest sigma is a quarter.
    "blur_augment": {"fit": {"ablation": True}, "tumor": {"train": {"augment": {"blur_sigma": 0.6}}},
                     "mitosis": {"train": {"augment": {"blur_sigma": 2.4}}}},
    # JPEG re-encoding in training: the mitosis fields are lossless TIFFs, the slides JPEG-tiled (Q60-92).
    "jpeg_augment": {"fit": {"ablation": True}, "tumor": {"train": {"augment": {"jpeg_min_quality": 50}}},
                     "mitosis": {"train": {"augment": {"jpeg_min_quality": 50}}}},
    "blur_jpeg_augment": {"fit": {"ablation": True},
                          "tumor": {"train": {"augment": {"blur_sigma": 0.6, "jpeg_min_quality": 50}}},
                          "mitosis": {"train": {"augment": {"blur_sigma": 2.4, "jpeg_min_quality": 50}}}},
}
"""Config overrides per variant, by pipeline section (merged into ``cohort_pipeline.bench_config``)."""


# --- data -----------------------------------------------------------------------------------------


def _generate(out: Path, want: dict) -> None:
    """One styled cohort, reused when its stamp matches ``want``."""
    from tupac.synth import generate_cohort

    stamp = out / "bench.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("want") == want:
        return
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    generate_cohort(out, n_slides=want["slides"], seed=want["seed"], size_um=tuple(want["size_um"]),
                    mitosis_images=want["fields"], style=want["style"], centers=want.get("centers"))
    stamp.write_text(json.dumps({"want": want, "seconds": round(time.perf_counter() - t0, 1)}))
    print(f"generated {out.name}: {want} in {time.perf_counter() - t0:.0f} s", flush=True)


def merge_cohorts(parts: list[Path], out: Path) -> Path:
    """One TUPAC16-layout folder holding the slides and mitosis fields of every part, renumbered.

    Slides become ``TUPAC-TR-001...`` in part order (symlinks to the parts' files), the labels file
    and ROI files follow, mitosis field folders are renumbered after the previous part's last case,
    and ``truth/`` (masks, mitoses, ``cohort.json``) is carried over under the new IDs.
    """
    from tupac.synth.cohort import slide_id

    if out.exists():
        shutil.rmtree(out)
    for d in ("training_image_data", "ROI", "truth", "mitoses/mitoses_image_data", "mitoses/mitoses_ground_truth"):
        (out / d).mkdir(parents=True, exist_ok=True)
    labels: list[str] = []
    slides: dict[str, dict] = {}
    fields: list[dict] = []
    n, case0 = 0, 0
    for part in parts:
        meta = json.loads((part / "truth" / "cohort.json").read_text())
        rows = (part / "training_ground_truth.csv").read_text().splitlines()
        for old in sorted(meta["slides"]):
            n += 1
            new = slide_id(n)
            (out / "training_image_data" / f"{new}.svs").symlink_to((part / "training_image_data" / f"{old}.svs").resolve())
            roi = part / "ROI" / f"{old}-ROI.csv"
            if roi.is_file():
                shutil.copy(roi, out / "ROI" / f"{new}-ROI.csv")
            shutil.copytree(part / "truth" / old, out / "truth" / new)
            labels.append(rows[int(old.rsplit("-", 1)[1]) - 1])
            slides[new] = {**meta["slides"][old], "slide_id": new, "from": f"{part.name}/{old}",
                           "path": str(out / "training_image_data" / f"{new}.svs")}
        cases = sorted(p.name for p in (part / "mitoses" / "mitoses_image_data").iterdir())
        for k, case in enumerate(cases):
            new_case = f"{case0 + k + 1:02d}"
            for sub in ("mitoses_image_data", "mitoses_ground_truth"):
                shutil.copytree(part / "mitoses" / sub / case, out / "mitoses" / sub / new_case)
        fields += [{**f, "case": f"{case0 + cases.index(f['case']) + 1:02d}", "from": part.name}
                   for f in meta["mitosis_images"]]
        case0 += len(cases)
    (out / "training_ground_truth.csv").write_text("".join(f"{r}\n" for r in labels))
    (out / "truth" / "cohort.json").write_text(json.dumps({**meta, "slides": slides, "mitosis_images": fields,
                                                           "merged_from": [p.name for p in parts]}, indent=1))
    return out


def make_data(root: Path, args) -> tuple[Path, Path]:
    """(training root, test root); see the module docstring."""
    size = [float(v) for v in args.size_um]
    parts = []
    for k, style in enumerate(args.train_styles):
        part = root / f"train_{style}"
        _generate(part, {"style": style, "slides": args.train_slides, "fields": args.train_fields,
                         "seed": args.seed + 10 * (k + 1), "size_um": size})
        parts.append(part)
    train = root / "train"
    stamp = train / "merged.json"
    want = [str(p) for p in parts]
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want
            and all((p / "bench.json").stat().st_mtime < stamp.stat().st_mtime for p in parts)):
        merge_cohorts(parts, train)
        stamp.write_text(json.dumps(want))
    test = root / f"test_{args.test_style}"
    _generate(test, {"style": args.test_style, "slides": args.test_slides, "fields": args.test_fields,
                     "seed": args.seed + 1000, "size_um": size, "centers": args.test_centers})
    return train, test


# --- runs -----------------------------------------------------------------------------------------


def variant_config(name: str, seed: int):
    """The benchmark config with the variant's overrides merged per section."""
    base = cp.bench_config(seed)
    changes = {}
    for section, over in VARIANTS[name].items():
        current = getattr(base, section)
        changes[section] = _merge(current, over) if isinstance(current, dict) else over
    return dataclasses.replace(base, **changes)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train(train_root: Path, root: Path, models: Path, cfg) -> dict:
    """Tumor and mitosis networks on the training cohort, each kept by its own config.

    A network is trained once per config, in ``ROOT/nets/<task>_<config hash>/<task>`` (with its
    own tracking store beside it), and ``models/<task>`` links to it: variants that change only
    one network's training, or none, reuse the other network as it is.
    """
    from tupac.tracking.training import tracked_training

    seconds = {}
    for task, task_cfg in (("tumor", cfg.tumor_config()), ("mitosis", cfg.mitosis_config())):
        key = json.dumps(task_cfg.to_dict(), sort_keys=True, default=str)
        net = root / "nets" / f"{task}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        stamp = net / "bench.json"
        if not (stamp.is_file() and (net / task / "card.json").is_file()):
            shutil.rmtree(net, ignore_errors=True)
            net.mkdir(parents=True)
            t0 = time.perf_counter()
            tracked_training(task, train_root, net / task, task_cfg, say=lambda m: print(f"[train {task}] {m}", flush=True))
            stamp.write_text(json.dumps({"key": key, "seconds": round(time.perf_counter() - t0, 1)}))
        seconds[task] = {"seconds": json.loads(stamp.read_text())["seconds"], "net": str(net)}
        link = models / task
        if link.is_symlink() or link.exists():
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(net / task, target_is_directory=True)
    return seconds


def run_test(test_root: Path, out: Path, models: Path, cfg) -> dict:
    from tupac.pipeline import run_pipeline

    clock = cp.StageClock()
    t0 = time.perf_counter()
    summary = run_pipeline(test_root, out, cfg, models, clock)
    return {"ran": summary["ran"], "seconds": round(time.perf_counter() - t0, 1)}


# --- read-back ------------------------------------------------------------------------------------


def tumor_maps(out: Path, data: Path, models: Path) -> dict:
    """Pooled pixel AUROC and Dice of the runs' tumor heatmaps inside tissue, at the card's threshold."""
    from tupac.heatmaps.store import HeatmapStore, store_path
    from tupac.models.card import ModelCard
    from tupac.synth.truth import read_truth_mask
    from tupac.tumor.regions import dice, heatmap_on_grid, pixel_auroc

    threshold = ModelCard.from_json((models / "tumor" / "card.json").read_text()).decision_threshold
    scores, truths, preds = [], [], []
    per_slide = {}
    truth_slides = json.loads((data / "truth" / "cohort.json").read_text())["slides"]
    for sid in sorted(truth_slides):
        path = store_path(out, sid)
        if not (path / "commit.json").is_file():
            continue
        store = HeatmapStore.open(path, mode="r")
        spec = store.spec("tumor")
        tumor, mpp = read_truth_mask(data / "truth" / sid / "tumor.png")
        tissue, _ = read_truth_mask(data / "truth" / sid / "tissue.png")
        prob = heatmap_on_grid(store.read("tumor"), spec.mpp, spec.offset_um[1], tumor.shape, mpp)
        inside = tissue | tumor
        scores.append(prob[inside])
        truths.append(tumor[inside])
        preds.append(prob[inside] > threshold)
        per_slide[sid] = {"dice": round(dice(prob[inside] > threshold, tumor[inside]), 4)}
    s, t, p = (np.concatenate(v) for v in (scores, truths, preds))
    return {"threshold": threshold, "pixel_auroc": pixel_auroc(s, t), "dice": dice(p, t), "per_slide": per_slide}


def slide_mitoses_by_center(out: Path, data: Path) -> dict:
    """Pooled slide detection counts per center, with false positives per mm^2 of true tumor."""
    import pandas as pd

    from tupac.mitosis.scoring import match_points

    truth = json.loads((data / "truth" / "cohort.json").read_text())["slides"]
    by: dict[str, dict] = {}
    for sid, t in sorted(truth.items()):
        csv = out / "slides" / f"{sid}.mitoses.csv"
        if not csv.is_file():
            continue
        det, true = pd.read_csv(csv), pd.read_csv(data / "truth" / sid / "mitoses.csv")
        tp = len(match_points(det[["x", "y"]].to_numpy(float), true[["x", "y"]].to_numpy(float))[0])
        c = by.setdefault(t["center"], {"slides": 0, "tp": 0, "fp": 0, "fn": 0, "tumor_mm2": 0.0})
        c["slides"] += 1
        c["tp"] += tp
        c["fp"] += len(det) - tp
        c["fn"] += len(true) - tp
        c["tumor_mm2"] += t["tumor_area_mm2"]
    for c in by.values():
        c["precision"] = c["tp"] / max(c["tp"] + c["fp"], 1)
        c["recall"] = c["tp"] / max(c["tp"] + c["fn"], 1)
        c["fp_per_mm2_tumor"] = c["fp"] / max(c["tumor_mm2"], 1e-9)
    rates = [c["fp_per_mm2_tumor"] for c in by.values()]
    ratio = max(rates) / max(min(rates), 1e-9) if rates and max(rates) > 0 else 1.0
    return {"by_center": by, "fp_per_mm2_ratio_across_centers": ratio}


def held_out_fields(data: Path, models: Path) -> dict:
    """The mitosis network on the unseen style's fields (at its card threshold): pooled P / R / F1."""
    from tupac.data.layout import Tupac16Dataset
    from tupac.mitosis.inference import MitosisDetector, read_image
    from tupac.mitosis.scoring import score_images

    ds = Tupac16Dataset(data)
    detector = MitosisDetector(models / "mitosis")

    def pairs():
        for img in ds.mitosis_images:
            det = detector(read_image(img.path))
            yield img.key, det[["x", "y"]].to_numpy(), img.points_rc[:, ::-1]

    pooled, _ = score_images(pairs())
    return {"n_fields": len(ds.mitosis_images), "tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn,
            "precision": pooled.precision, "recall": pooled.recall, "f1": pooled.f1}


def tumor_fields(data: Path, sid: str, n: int, size: int = 512) -> list[np.ndarray]:
    """Up to ``n`` level-0 fields of ``size`` px lying wholly in true tumor, spread over the slide."""
    from tupac.slide.factory import open_slide
    from tupac.synth.truth import read_truth_mask

    tumor, mask_mpp = read_truth_mask(data / "truth" / sid / "tumor.png")
    step = int(round(size * 0.25 / mask_mpp))  # mask pixels per field (slides are 0.25 um/px)
    rows, cols = tumor.shape[0] // step, tumor.shape[1] // step
    full = tumor[: rows * step, : cols * step].reshape(rows, step, cols, step).all(axis=(1, 3))
    cells = np.argwhere(full)
    if not len(cells):
        return []
    pick = cells[np.linspace(0, len(cells) - 1, min(n, len(cells))).astype(int)]
    with open_slide(data / "training_image_data" / f"{sid}.svs") as reader:
        return [reader.read_region((int(c * size), int(r * size)), 0, (size, size)) for r, c in pick]


def stain_agreement(data: Path, models: Path, fields_per_slide: int = 3) -> dict:
    """Do the centers' hematoxylin densities in tumor agree once standardized?

    For each test slide, up to ``fields_per_slide`` 512 px fields wholly inside true tumor are read,
    standardized towards the mitosis network's stain reference with each field's own statistics
    (:func:`tupac.mitosis.inference.standardize_image`; the job fits one set of statistics per slide,
    on its tumor regions), and the hematoxylin channel of the Ruifrok-Johnston deconvolution
    (``skimage.color.rgb2hed``) is pooled per center. Reported per center before and after: the
    median and 90th percentile; overall: the largest difference between two centers' medians (and
    90th percentiles), and that difference after as a fraction of before (the residual).
    """
    from skimage.color import rgb2hed

    from tupac.mitosis.inference import standardize_image
    from tupac.models.trained import load_trained

    reference = load_trained(models / "mitosis", device="cpu").reference
    truth = json.loads((data / "truth" / "cohort.json").read_text())["slides"]
    pooled: dict[str, dict[str, list]] = {}
    for sid, t in sorted(truth.items()):
        for field in tumor_fields(data, sid, fields_per_slide):
            c = pooled.setdefault(t["center"], {"raw": [], "std": []})
            c["raw"].append(rgb2hed(field)[..., 0].ravel()[::7])
            c["std"].append(rgb2hed(standardize_image(field, reference))[..., 0].ravel()[::7])
    out: dict = {"by_center": {}}
    for center, c in sorted(pooled.items()):
        raw, std = np.concatenate(c["raw"]), np.concatenate(c["std"])
        out["by_center"][center] = {"fields": len(c["raw"]),
                                    "raw_median": float(np.median(raw)), "raw_p90": float(np.quantile(raw, 0.9)),
                                    "standardized_median": float(np.median(std)),
                                    "standardized_p90": float(np.quantile(std, 0.9))}
    for which in ("raw", "standardized"):
        for stat in ("median", "p90"):
            v = [c[f"{which}_{stat}"] for c in out["by_center"].values()]
            out[f"{which}_{stat}_spread"] = float(max(v) - min(v)) if v else float("nan")
    for stat in ("median", "p90"):
        out[f"residual_fraction_{stat}"] = out[f"standardized_{stat}_spread"] / max(out[f"raw_{stat}_spread"], 1e-12)
    return out


def area_error_by_center(per_slide: dict, data: Path) -> dict:
    """Median signed tumor-area error per center (a systematic over- or under-call shows here)."""
    truth = json.loads((data / "truth" / "cohort.json").read_text())["slides"]
    by: dict[str, list[float]] = {}
    for sid, v in per_slide.items():
        by.setdefault(truth[sid]["center"], []).append(v["tumor_area_mm2"] / v["true_tumor_area_mm2"] - 1.0)
    return {c: {"slides": len(e), "median": float(np.median(e)), "median_abs": float(np.median(np.abs(e)))}
            for c, e in sorted(by.items())}


def ood_flags(out: Path, data: Path) -> dict | None:
    """Slides the run's out-of-distribution check flagged (``features/qc.csv``), by center, with
    the statistics named in the reasons; None where the run has no such file."""
    import pandas as pd

    qc = out / "features" / "qc.csv"
    if not qc.is_file():
        return None
    t = pd.read_csv(qc).set_index("slide_id")
    truth = json.loads((data / "truth" / "cohort.json").read_text())["slides"]
    flagged = t.index[t["qc_ood"].fillna(0) > 0]
    by_center: dict[str, list[int]] = {}
    for sid in t.index:
        by_center.setdefault(truth[sid]["center"], [0, 0])
        by_center[truth[sid]["center"]][1] += 1
        by_center[truth[sid]["center"]][0] += int(sid in flagged)
    reasons = [r for v in t.loc[flagged, "qc_ood_reasons"].fillna("") for r in str(v).split("; ") if r]
    stats = {}
    for r in reasons:
        key = r.split(" above ")[0].split(" below ")[0].rsplit(" ", 1)[0]  # the statistic, without its value
        stats[key] = stats.get(key, 0) + 1
    return {"flagged": len(flagged), "of": len(t), "by_center": {c: {"flagged": f, "of": n} for c, (f, n) in by_center.items()},
            "statistics_named": stats, "example_reason": reasons[0] if reasons else None}


def read_back(out: Path, data: Path, models: Path) -> dict:
    agree = cp.agreement(out, data)
    rel = np.array([v["tumor_area_mm2"] / v["true_tumor_area_mm2"] - 1.0 for v in agree["per_slide"].values()])
    slides = cp.detection(out, data)
    res = {
        "tumor": {**tumor_maps(out, data, models), "area_error_median": float(np.median(rel)),
                  "area_error_median_abs": float(np.median(np.abs(rel))),
                  "area_within_10pct": float((np.abs(rel) <= 0.10).mean()),
                  "area_error_by_center": area_error_by_center(agree["per_slide"], data)},
        "mitosis_slides": {**slides, **slide_mitoses_by_center(out, data),
                           "count_in_tumor_spearman": agree["n_in_tumor_spearman"]},
        "mitosis_fields": held_out_fields(data, models),
        "fit": cp.quality(out),
        "stain_agreement_in_tumor": stain_agreement(data, models),
        "ood": ood_flags(out, data),
    }
    m, q = res["mitosis_slides"], res["fit"]
    res["targets"] = {
        "mitosis_precision": [m["precision"], m["precision"] >= TARGETS["mitosis_precision"]],
        "mitosis_recall": [m["recall"], m["recall"] >= TARGETS["mitosis_recall"]],
        "fp_per_mm2_ratio_across_centers": [m["fp_per_mm2_ratio_across_centers"],
                                            m["fp_per_mm2_ratio_across_centers"] <= TARGETS["fp_per_mm2_ratio_across_centers"]],
        "count_spearman": [m["count_in_tumor_spearman"], m["count_in_tumor_spearman"] >= TARGETS["count_spearman"]],
        "median_abs_tumor_area_error": [res["tumor"]["area_error_median_abs"],
                                        res["tumor"]["area_error_median_abs"] <= TARGETS["median_abs_tumor_area_error"]],
        "grade_kappa": [q["grade_kappa_quadratic"], q["grade_kappa_quadratic"] >= TARGETS["grade_kappa"]],
    }
    return res


def markdown_table(results: dict) -> str:
    """The README's table: one row per variant, each target's figure with a check mark when met."""
    def mark(entry: dict, name: str, fmt: str) -> str:
        value, met = entry["targets"][name]
        return f"{value:{fmt}} {'✓' if met else '✗'}"

    head = ("| variant | tumor AUROC / Dice | median abs. tumor area error | mitosis precision | recall | FP/mm² "
            "max/min across centers | count Spearman | fields F1 | grade kappa | RNA Spearman | OOD flagged |")
    rows = [head, "|" + "---|" * 11]
    for name, e in results.items():
        t, f, q, o = e["tumor"], e["mitosis_fields"], e["fit"], e.get("ood")
        rows.append(
            f"| {name} | {t['pixel_auroc']:.3f} / {t['dice']:.3f} | {mark(e, 'median_abs_tumor_area_error', '.3f')} | "
            f"{mark(e, 'mitosis_precision', '.3f')} | {mark(e, 'mitosis_recall', '.3f')} | "
            f"{mark(e, 'fp_per_mm2_ratio_across_centers', '.2f')} | {mark(e, 'count_spearman', '.3f')} | "
            f"{f['f1']:.3f} | {mark(e, 'grade_kappa', '.3f')} | {q['rna_spearman']:.3f} | "
            f"{'-' if not o else str(o['flagged']) + ' / ' + str(o['of'])} |")
    return "\n".join(rows)


def _git_head() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/style_shift"))
    ap.add_argument("--variant", default="baseline", choices=sorted(VARIANTS))
    ap.add_argument("--train-styles", type=lambda s: s.split(","), default=["default", "lab2", "lab3"])
    ap.add_argument("--train-slides", type=int, default=6, help="Slides per training style.")
    ap.add_argument("--train-fields", type=int, default=20, help="Mitosis fields per training style.")
    ap.add_argument("--test-style", default="lab4")
    ap.add_argument("--test-centers", type=lambda s: s.split(","), default=["D", "A", "P"])
    ap.add_argument("--test-slides", type=int, default=30)
    ap.add_argument("--test-fields", type=int, default=12)
    ap.add_argument("--size-um", nargs=2, type=float, default=[1500.0, 1200.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="Delete the variant's run folder first (models are kept).")
    ap.add_argument("--from-variant", help="Start from a copy of this variant's run folder (unchanged stages are skipped).")
    ap.add_argument("--table", action="store_true", help="Print the README table of the results file and exit.")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads(RESULT.read_text())))
        return

    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_root, test_root = make_data(root, args)
    t_data = time.perf_counter() - t0
    cfg = variant_config(args.variant, args.seed)
    models, out = root / f"models_{args.variant}", root / f"run_{args.variant}"
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    if args.from_variant and not out.exists():
        # Start from another variant's run: the pipeline then reruns only the stages whose inputs
        # this variant changes (the tracking store stays behind; the copy starts its own).
        shutil.copytree(root / f"run_{args.from_variant}", out, symlinks=True,
                        ignore=shutil.ignore_patterns("mlartifacts", "mlflow.db"))
    models.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    train_s = train(train_root, root, models, cfg)
    test = run_test(test_root, out, models, cfg)
    entry = {
        "variant": args.variant,
        "overrides": VARIANTS[args.variant],
        "from_variant": args.from_variant,
        "command": "python benchmarks/style_shift.py " + " ".join(sys.argv[1:]),
        "commit": _git_head(),
        "data": {"train_styles": args.train_styles, "train_slides_per_style": args.train_slides,
                 "train_fields_per_style": args.train_fields, "test_style": args.test_style,
                 "test_centers": args.test_centers, "test_slides": args.test_slides, "test_fields": args.test_fields,
                 "size_um": args.size_um, "seed": args.seed, "generate_s": round(t_data, 1)},
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "stages"},
        "models": str(models),
        "seconds": {"train": train_s, "test_run": test},
        "load": {"before": [round(v, 2) for v in load0], "after": [round(v, 2) for v in os.getloadavg()]},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        **read_back(out, test_root, models),
    }
    results = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    results[args.variant] = entry
    RESULT.write_text(json.dumps(results, indent=1, default=float))
    print(json.dumps({k: entry[k] for k in ("variant", "targets", "seconds")}, indent=1, default=float))


if __name__ == "__main__":
    main()
