"""The whole pipeline (``tupac run``) on a phantom cohort: quality, agreement with the truth, speed, memory.

What it does:

1. Generates a phantom TUPAC16 cohort with :func:`tupac.synth.generate_cohort` (default 60 slides of
   1.5 x 1.2 mm, the demo's slide size, plus 60 mitosis auxiliary images for the mitosis network), once:
   a stamp ``ROOT/data/bench.json`` records what was generated and later runs reuse it.
2. Runs :func:`tupac.pipeline.run_pipeline` (train tumor, train mitosis, infer, features, fit, report)
   on it with :data:`BENCH_CONFIG` (the demo's narrow LocNet and short schedules, with the mitosis
   network trained on the full auxiliary set and 5-fold CV for the predictive models). The stages skip
   unchanged work, so a rerun only redoes what changed (``--fresh`` deletes the run folder first).
   While it runs, the summed RSS of this process and all its descendants (the local Ray head, raylet
   and workers) is sampled every 0.2 s; each sample is attributed to the stage running at the time.
3. Reads back and writes ``benchmarks/results/cohort_pipeline.json``:

   - quality (issue 8): grade accuracy, quadratic kappa and RNA Spearman of the best model of
     ``RUN/predict/metrics.json`` (the pipeline's own cross-validation; targets 0.85 / 0.8 / 0.8);
   - features vs truth (issue 7, on the pipeline's own heatmaps and detections): Spearman of
     ``arch_n_in_tumor`` against the true number of mitoses in the tumor (target >= 0.9) and the relative
     error of ``tumor_area_mm2`` against the true tumor mask's area (target: within 10 %); the truth is
     ``ROOT/data/truth/cohort.json``;
   - speed and memory (issue 9): per-stage wall time (the stage records ``RUN/pipeline/*.json``) and
     throughput (slides/s; tiles/s for ``infer`` from ``RUN/summary.json``), end-to-end seconds per
     slide and slides per hour (cohort generation excluded), peak RSS overall, per stage and per slide;
   - the naive baseline (``benchmarks/infer_throughput.py``'s ``naive_tile``: one OpenSlide read and
     one model call per tumor window, sequential) on the first ``--naive-slides`` slides with the
     run's trained tumor model, next to the job's tumor tiles/s.

   Figures of stages skipped in this invocation (unchanged) are carried over from the previous result
   file. The load average is recorded with every figure: the machine is shared.

Usage (about 30-40 min on 2 shared cores the first time, seconds when nothing changed)::

    nice -n 10 .venv/bin/python benchmarks/cohort_pipeline.py [--root /tmp/cohort_pipeline] [--slides 60]
        [--size-um 1500 1200] [--mitosis-images 60] [--seed 0] [--naive-slides 3] [--fresh]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import PeakSampler  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "cohort_pipeline.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGETS = {"grade_accuracy": 0.85, "grade_kappa_quadratic": 0.8, "rna_spearman": 0.8,
           "n_in_tumor_spearman": 0.9, "tumor_area_rel_error": 0.10}


def bench_config(seed: int):
    """The demo's config, sized for a 60-slide cohort (see the module docstring and the README)."""
    from tupac.mitosis.training import MitosisTrainConfig
    from tupac.pipeline import DEMO_CONFIG

    return dataclasses.replace(
        DEMO_CONFIG,
        seed=seed,
        # 25 + 25 patches per slide: on 60 slides that is already ~2x the demo's training set; 60 + 60
        # took ~3 min per epoch on 2 shared cores, too slow for a benchmark that is meant to be rerun.
        # The stage-2 sampling (positives, negative margin) is TumorTrainConfig's default; its docstring
        # has the table of what was tried on this cohort.
        tumor={**DEMO_CONFIG.tumor, "positives_per_slide": 25, "negatives_per_slide": 25},
        # The demo's 6 epochs on 12 images leave a validation set of 3 mitoses to pick the detection
        # threshold from; train on the whole auxiliary set (--mitosis-images, 60) instead. One stage of 4 epochs:
        # benchmarks/mitosis_train.py picked epoch 1 in both stages and stage 2 did not raise F1 (0.91 vs 0.93).
        mitosis={"two_stage": False, "train": {**MitosisTrainConfig().train, "epochs": 4}},
        features={**DEMO_CONFIG.features, "n_splits": 5},
        fit={**DEMO_CONFIG.fit, "n_splits": 5, "inner_splits": 3},
    )


# --- memory ---------------------------------------------------------------------------------------


def _tree_rss(root_pid: int) -> int:
    """Summed RSS (bytes) of ``root_pid`` and all its descendants (one pass over /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.scandir("/proc"):
        if not d.name.isdigit():
            continue
        try:
            with open(f"/proc/{d.name}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            with open(f"/proc/{d.name}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parent[int(d.name)] = ppid
        rss[int(d.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    keep = {root_pid}
    changed = True
    while changed:  # descendants: processes whose parent chain reaches root_pid
        changed = False
        for pid, ppid in parent.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    return sum(rss.get(p, 0) for p in keep)


# --- the run --------------------------------------------------------------------------------------


def generate(data: Path, slides: int, size_um: tuple[float, float], mitosis_images: int, seed: int) -> dict:
    from tupac.synth import generate_cohort

    want = {"slides": slides, "size_um": list(size_um), "mitosis_images": mitosis_images, "seed": seed}
    stamp = data / "bench.json"
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if {k: have.get(k) for k in want} == want:
            print(f"cohort in {data} is up to date ({have.get('seconds')} s to generate)", flush=True)
            return have
    print(f"generating {slides} slides of {size_um[0]:g} x {size_um[1]:g} um + {mitosis_images} mitosis images "
          f"in {data}", flush=True)
    t0 = time.perf_counter()
    generate_cohort(data, n_slides=slides, seed=seed, size_um=size_um, mitosis_images=mitosis_images, progress=True)
    want["seconds"] = round(time.perf_counter() - t0, 1)
    stamp.write_text(json.dumps(want))
    return want


class StageClock:
    """The pipeline's ``say`` callback: prints with a timestamp and notes when each stage ran."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.spans: dict[str, list[float]] = {}

    def __call__(self, msg: str) -> None:
        now = time.time()
        print(f"[{now - self.t0:7.1f} s, load {os.getloadavg()[0]:.1f}] {msg}", flush=True)
        if msg.startswith("[") and "]" in msg:
            name, rest = msg[1:].split("]", 1)
            if rest.strip() == "running":
                self.spans[name] = [now, np.nan]
            elif rest.strip().startswith("done") and name in self.spans:
                self.spans[name][1] = now


def run(data: Path, out: Path, seed: int) -> tuple[dict, StageClock, PeakSampler, float]:
    from tupac.pipeline import run_pipeline

    clock = StageClock()
    t0 = time.perf_counter()
    with PeakSampler(lambda: _tree_rss(os.getpid())) as rss:
        summary = run_pipeline(data, out, bench_config(seed), None, clock)
    return summary, clock, rss, time.perf_counter() - t0


# --- read-back ------------------------------------------------------------------------------------


def quality(out: Path) -> dict:
    m = json.loads((out / "predict" / "metrics.json").read_text())
    best = m["summary"]["best"]
    g, r = best["grade"], best["rna"]
    res = {
        "best_model": m["summary"]["best_model"],
        "grade_accuracy": g["accuracy_mean"], "grade_kappa_quadratic": g["kappa_quadratic_mean"],
        "grade_f1_macro": g["f1_macro_mean"], "rna_spearman": r["spearman_rho_mean"],
        "rna_pearson": r["pearson_r_mean"], "n_slides": m["cohort"]["n_slides"],
        "grade_counts": m["cohort"]["grade_counts"], "cv": {k: m["config"][k] for k in ("n_splits", "inner_splits", "repeats", "k_features")},
    }
    res["met"] = {k: bool(res[k] >= TARGETS[k]) for k in ("grade_accuracy", "grade_kappa_quadratic", "rna_spearman")}
    return res


def agreement(out: Path, data: Path) -> dict:
    """Issue 7 on the pipeline's own outputs: detections in tumor and tumor area vs the phantom truth."""
    import pandas as pd
    from scipy.stats import spearmanr

    t = pd.read_parquet(out / "features.parquet").set_index("slide_id")
    truth = json.loads((data / "truth" / "cohort.json").read_text())["slides"]
    ids = [s for s in t.index if s in truth]
    true_in = np.array([truth[s]["n_mitoses_in_tumor"] for s in ids], float)
    true_n = np.array([truth[s]["n_mitoses"] for s in ids], float)
    true_area = np.array([truth[s]["tumor_area_mm2"] for s in ids], float)
    true_density = np.array([truth[s]["mitotic_density"] for s in ids], float)
    n_in = t.loc[ids, "arch_n_in_tumor"].to_numpy(float)
    area = t.loc[ids, "tumor_area_mm2"].to_numpy(float)
    rel = area / true_area - 1.0
    rho_in = float(spearmanr(n_in, true_in).statistic)
    return {
        "n_slides": len(ids),
        "n_in_tumor_spearman": rho_in,
        "n_mitoses_spearman": float(spearmanr(t.loc[ids, "arch_n_mitoses"], true_n).statistic),
        "density_spearman": float(spearmanr(t.loc[ids, "arch_density_tumor_per_mm2"], true_density).statistic),
        "n_in_tumor_detected_total": float(n_in.sum()), "n_in_tumor_true_total": float(true_in.sum()),
        "n_in_tumor_mean_abs_error": float(np.abs(n_in - true_in).mean()),
        "tumor_area_rel_error_median": float(np.median(rel)),
        "tumor_area_rel_error_max_abs": float(np.abs(rel).max()),
        "tumor_area_frac_within_10pct": float((np.abs(rel) <= TARGETS["tumor_area_rel_error"]).mean()),
        "tumor_area_spearman": float(spearmanr(area, true_area).statistic),
        "met": {"n_in_tumor_spearman": bool(rho_in >= TARGETS["n_in_tumor_spearman"]),
                "tumor_area_within_10pct_all": bool(np.abs(rel).max() <= TARGETS["tumor_area_rel_error"])},
        "per_slide": {s: {"n_in_tumor": n_in[i], "true_n_in_tumor": true_in[i], "tumor_area_mm2": round(area[i], 4),
                          "true_tumor_area_mm2": true_area[i]} for i, s in enumerate(ids)},
    }


def detection(out: Path, data: Path) -> dict:
    """Why the counts differ: the run's slide detections scored against every true mitosis (TUPAC16
    matching, 30 px), pooled over the cohort, with the probabilities of the hits and the false alarms."""
    import pandas as pd

    from tupac.mitosis.scoring import match_points

    tp = fp = fn = 0
    p_tp: list[float] = []
    p_fp: list[float] = []
    for csv in sorted((out / "slides").glob("*.mitoses.csv")):
        sid = csv.name.removesuffix(".mitoses.csv")
        truth_csv = data / "truth" / sid / "mitoses.csv"
        if not truth_csv.is_file():
            continue
        det, truth = pd.read_csv(csv), pd.read_csv(truth_csv)
        pi, _ = match_points(det[["x", "y"]].to_numpy(float), truth[["x", "y"]].to_numpy(float))
        hit = np.zeros(len(det), bool)
        hit[pi] = True
        tp, fp, fn = tp + int(hit.sum()), fp + int((~hit).sum()), fn + len(truth) - int(hit.sum())
        p_tp += det["prob"][hit].tolist()
        p_fp += det["prob"][~hit].tolist()
    q = lambda v: [round(float(x), 3) for x in np.quantile(v, [0.1, 0.5, 0.9])] if v else None  # noqa: E731
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1), "prob_quantiles_10_50_90_tp": q(p_tp), "prob_quantiles_10_50_90_fp": q(p_fp)}


def speed(out: Path, n_slides: int, clock: StageClock, rss: PeakSampler, wall: float, ran: list[str], previous: dict) -> dict:
    """Per-stage seconds/throughput/peak RSS; stages not run now keep their previous memory figures."""
    from tupac.pipeline import STAGES

    prev_stages = previous.get("speed", {}).get("stages", {})
    stages = {}
    for name in STAGES:
        rec_path = out / "pipeline" / f"{name}.json"
        if not rec_path.is_file():
            continue
        rec = json.loads(rec_path.read_text())
        st = {"seconds": rec["seconds"], "finished": rec["finished"], "slides_per_s": n_slides / max(rec["seconds"], 1e-9)}
        if name in ran and name in clock.spans:
            t0, t1 = clock.spans[name]
            st["peak_rss_mb"] = rss.peak(t0, t1 if np.isfinite(t1) else np.inf) / 2**20
            st["load_avg_end"] = list(os.getloadavg())
            st["measured_now"] = True
        elif name in prev_stages:
            st.update({k: prev_stages[name][k] for k in ("peak_rss_mb", "load_avg_end") if k in prev_stages[name]})
            st["measured_now"] = False
        stages[name] = st
    summ = out / "summary.json"
    if summ.is_file() and "infer" in stages:
        tp = json.loads(summ.read_text()).get("throughput", {})
        stages["infer"].update({"tiles": tp.get("tiles"), "tiles_per_s": tp.get("tiles_per_s"),
                                "job_seconds": tp.get("seconds"), "slides_per_h_job": tp.get("slides_per_h")})
    total = sum(s["seconds"] for s in stages.values())
    peaks = [s["peak_rss_mb"] for s in stages.values() if "peak_rss_mb" in s]
    peak = max(peaks) if peaks else None  # no stage ran now and none was measured before
    return {
        "stages": stages,
        "end_to_end_s": total, "seconds_per_slide": total / n_slides, "slides_per_hour": 3600 * n_slides / total,
        "per_slide_stages_s": sum(stages[s]["seconds"] for s in ("infer", "features") if s in stages) / n_slides,
        "peak_rss_mb": peak, "peak_rss_mb_per_slide": peak / n_slides if peak else None,
        "this_invocation_wall_s": wall, "this_invocation_peak_rss_mb": rss.peak() / 2**20,
    }


def naive_baseline(out: Path, data: Path, n: int, job_infer: dict) -> dict:
    """``infer_throughput.naive`` (one read + stain + model call per tumor-heatmap cell, 1 torch
    thread) on 256 tissue cells of each of the first ``n`` slides, with the run's trained tumor model;
    extrapolated to a slide's tissue cells and set beside the job's per-slide infer time."""
    import zarr
    from infer_throughput import naive

    from tupac.infer.job import JobConfig

    chunk = JobConfig(models=out / "models", out=out).tumor_chunk
    rows = []
    for p in sorted((data / "training_image_data").glob("*.svs"))[:n]:
        job_tumor = np.asarray(zarr.open_group(str(out / "slides" / f"{p.stem}.zarr" / "tumor"), mode="r")["0"][:])
        r = naive(p, out / "models", chunk, 256, job_tumor, 1)
        cells = int((job_tumor != 0).sum())
        r.update(slide=p.stem, tissue_cells=cells, seconds_per_slide=r["setup_s"] + cells / r["tiles_per_s"])
        rows.append(r)
        print(f"naive {p.stem}: {r['tiles_per_s']:.1f} cells/s, {r['seconds_per_slide']:.1f} s/slide (tumor only)", flush=True)
    return {
        "what": "infer_throughput.naive: per tumor-heatmap cell one OpenSlide read_region + stain transform + one "
                "model call, 1 torch thread, tumor only (no mitosis), tissue + stain fit included; extrapolated "
                "from 256 cells per slide",
        "slides": rows, "tiles_per_s": float(np.mean([r["tiles_per_s"] for r in rows])),
        "seconds_per_slide_tumor_only": float(np.mean([r["seconds_per_slide"] for r in rows])),
        "job_seconds_per_slide_tumor_and_mitosis": job_infer.get("seconds", np.nan) / job_infer.get("n_slides", 1),
        "load_avg": list(os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/cohort_pipeline"))
    ap.add_argument("--slides", type=int, default=60)
    ap.add_argument("--size-um", type=float, nargs=2, default=(1500.0, 1200.0))
    # 60 images hold 132 mitoses (106 to train on, 16-25 to validate). With 30 (54 mitoses) the detector's
    # recall on the slides depended on the draw: 0.97 or 0.89 (Spearman 0.988 or 0.885); with 60 the
    # mitosis seeds 0 / 1 / 2 gave Spearman 0.995 / 0.955 / 0.966 (benchmarks/mitosis_seeds.py).
    ap.add_argument("--mitosis-images", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive-slides", type=int, default=3, help="slides for the naive baseline (0: skip)")
    ap.add_argument("--fresh", action="store_true", help="delete ROOT/run first (the cohort is kept)")
    ap.add_argument("--result", type=Path, default=RESULT)
    a = ap.parse_args()

    data, out = a.root / "data", a.root / "run"
    if a.fresh:
        shutil.rmtree(out, ignore_errors=True)
    load_before = list(os.getloadavg())
    gen = generate(data, a.slides, tuple(a.size_um), a.mitosis_images, a.seed)
    summary, clock, rss, wall = run(data, out, a.seed)
    previous = json.loads(a.result.read_text()) if a.result.is_file() else {}
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": False},
        "command": "nice -n 10 .venv/bin/python benchmarks/cohort_pipeline.py " + " ".join(sys.argv[1:]),
        "cohort": {**gen, "root": str(data)},
        "config": bench_config(a.seed).to_dict(),
        "targets": TARGETS,
        "ran": summary["ran"], "skipped": summary["skipped"],
        "load_before": load_before,
        "quality": quality(out),
        "features_vs_truth": agreement(out, data),
        "slide_detections_vs_truth": detection(out, data),
        "speed": speed(out, a.slides, clock, rss, wall, summary["ran"], previous),
        "load_after_pipeline": list(os.getloadavg()),
    }
    result["naive"] = previous.get("naive")
    a.result.parent.mkdir(parents=True, exist_ok=True)
    a.result.write_text(json.dumps(result, indent=1, default=float))  # before the baseline: keep what was measured
    infer = {**result["speed"]["stages"].get("infer", {}), "n_slides": a.slides}
    if a.naive_slides > 0 and ("infer" in summary["ran"] or not previous.get("naive")):
        result["naive"] = naive_baseline(out, data, a.naive_slides, infer)
        a.result.write_text(json.dumps(result, indent=1, default=float))
    q, f, s = result["quality"], result["features_vs_truth"], result["speed"]
    print(f"\ngrade accuracy {q['grade_accuracy']:.3f}  kappa {q['grade_kappa_quadratic']:.3f}  "
          f"RNA Spearman {q['rna_spearman']:.3f}  ({q['met']})")
    print(f"n_in_tumor Spearman {f['n_in_tumor_spearman']:.3f}  tumor area rel. error median "
          f"{f['tumor_area_rel_error_median']:+.3f}, max |.| {f['tumor_area_rel_error_max_abs']:.3f}  ({f['met']})")
    print(f"{s['seconds_per_slide']:.1f} s/slide, {s['slides_per_hour']:.0f} slides/h, peak RSS {s['peak_rss_mb']} MB "
          f"({s['peak_rss_mb_per_slide']} MB/slide); stages: "
          + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in s["stages"].items()))
    print(f"wrote {a.result}")


if __name__ == "__main__":
    main()
