"""Real-size slides: where the time of ``tupac infer`` and ``tupac features`` goes, against this
machine's limit, and whether memory grows with the slide.

For each slide size (default 20 x 15 mm = 80k x 60k px at 0.25 um/px, and one of twice the area,
28.3 x 21.2 mm), one phantom slide from ``tupac synth`` (streamed: the writer never holds level 0)
and, on it, with the models of ``--models`` (the demo's trained models unless told otherwise):

``synth``
    Wall time and peak memory of writing the slide (``tupac synth``, one worker).
``infer``
    Wall time of ``tupac infer`` on the slide with its defaults (a local Ray of every core: one
    CPU model actor with all cores' torch threads), from the command's start to its exit (Ray's
    start and the actors' model loading included) and the slide's own time (first task to
    commit, from the job's summary); peak memory of the whole process tree (driver, GCS, raylet,
    workers: summed PSS, see :mod:`tupac.infer.memory`); the per-step seconds each slide's commit
    record holds (tissue, stain statistics, store, per stage decode / standardize / model / model
    wait / Zarr write, regions, detection), and their shares of the summed step time. Decode and
    model steps of the two actor threads overlap, so shares are of the summed work, not of wall.
``features``
    Wall time and peak memory of ``tupac features`` on the run (per-slide features: tumor,
    fringe patches, nuclei, architecture, deep descriptors; no labels, so no cross-slide fit).
``bound``
    This machine's limit for the same slide: ``decode_only``, the windows the job decoded
    (every tumor and mitosis window, read from the store's written chunks) through the same
    reader at the same levels, in a thread pool of every core; ``model_only``, the models on
    windows already in memory (``predict_windows``, one window per call as the CPU actor runs,
    torch on every core), on ``--model-sample`` windows per stage spread over the slide and
    scaled to the stage's window count. The bound is the larger of the two; ``ratio`` is the
    slide's job time over it (target: <= 1.5).
``memory``
    Peak PSS of the larger slide's job over the smaller's (target: < 1.2 for twice the area).

Writes ``--out`` (default ``benchmarks/results/real_size.json``) after every step, with the load
average at each (the machine may be shared) and every setting that differs from the defaults.

Usage::

    .venv/bin/python benchmarks/real_size.py --models demo-out/run/models --work /tmp/real-size

``--sizes-um`` picks other sizes (``WxH`` in micrometres); ``--skip-features`` leaves that stage
out; slides already written under ``--work`` are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_common import load_avg  # benchmarks/ is on sys.path

from tupac.infer.memory import TreeMemorySampler

PY = sys.executable
DEFAULT_SIZES = ("20000x15000", "28284x21213")


def parse_size(text: str) -> tuple[float, float]:
    w, h = text.lower().split("x")
    return float(w), float(h)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` with its output in ``log``; wall seconds and the peak memory of its tree."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        with TreeMemorySampler(proc.pid) as mem:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {rc}:\n{tail}")
    return {"wall_s": round(wall, 2), **mem.summary(), "load_avg_after": load_avg()}


def synth_slide(work: Path, size_um: tuple[float, float], seed: int) -> tuple[Path, dict]:
    """The phantom slide of ``size_um`` under ``work`` (written once, then reused)."""
    root = work / f"slide-{int(size_um[0])}x{int(size_um[1])}"
    record = root / "synth_record.json"
    if record.is_file():
        return root, json.loads(record.read_text())
    cmd = [PY, "-m", "tupac", "synth", str(root), "--slides", "1", "--seed", str(seed),
           "--size-um", f"{size_um[0]:g}x{size_um[1]:g}", "--mitosis-images", "0"]
    rec = run_measured(cmd, work / f"{root.name}.synth.log")
    slide = next((root / "training_image_data").glob("*.svs"))
    truth = json.loads((root / "truth" / "cohort.json").read_text())
    rec.update(file_mb=round(slide.stat().st_size / 2**20, 1), truth=truth)
    record.write_text(json.dumps(rec, indent=1))
    return root, rec


def slide_info(path: Path) -> dict:
    from tupac.slide import open_slide

    with open_slide(path) as r:
        return {"dimensions": list(r.dimensions), "levels": [list(d) for d in r.level_dimensions],
                "mpp": r.mpp, "backend": r.backend}


def run_infer(root: Path, models: Path, run: Path, work: Path, job_args: list[str] | None = None) -> dict:
    cmd = [PY, "-m", "tupac", "infer", "--data", str(root), "--models", str(models), "--out", str(run),
           "--no-dashboard", *(job_args or [])]
    rec = run_measured(cmd, work / f"{run.name}.infer.log")
    summary = json.loads((run / "summary.json").read_text())
    (commit,) = [json.loads(p.read_text()) for p in (run / "slides").glob("*.zarr/commit.json")]
    steps = {k: round(v, 3) for k, v in commit["timings_s"].items()}
    rec.update(
        summary_throughput=summary.get("throughput"), windows=commit["extra"].get("windows"),
        mitoses=commit["extra"].get("mitoses"), tumor_area_mm2=commit["extra"].get("tumor_area_mm2"),
        steps_s=steps, step_shares=step_shares(steps),
    )
    return rec


def step_shares(steps: dict[str, float]) -> dict[str, float]:
    """Each work step's share of the summed work steps, largest first.

    Left out: ``prepare_s`` and ``finalize_s`` (sums of their parts, which are in), and the
    ``*_model_wait_s`` of the actor threads (waiting for the other thread's model call, no work).
    """
    parts = {k: v for k, v in steps.items()
             if k not in ("prepare_s", "finalize_s") and not k.endswith("model_wait_s")}
    total = sum(parts.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}


def run_features(run: Path, models: Path, work: Path) -> dict:
    cmd = [PY, "-m", "tupac", "features", "--run", str(run), "--models", str(models), "--no-mlflow"]
    return run_measured(cmd, work / f"{run.name}.features.log")


def _geometry(reader, model_dir: Path, chunk: int):
    from tupac.heatmaps.windows import heatmap_geometry
    from tupac.models.trained import load_trained

    trained = load_trained(model_dir, device="cpu")
    return trained, heatmap_geometry(reader.dimensions, reader.mpp, trained.card, chunk)


def job_windows(run: Path, task: str) -> np.ndarray:
    """The windows the job computed for ``task``: its store's written chunks (one per window)."""
    from tupac.heatmaps import HeatmapStore

    (store_path,) = list((run / "slides").glob("*.zarr"))
    store = HeatmapStore.open(store_path, mode="r")
    if task not in store.names:
        return np.zeros((0, 2), np.int64)
    return np.array(sorted(store.chunk_files(task)), np.int64).reshape(-1, 2)


def decode_only(slide: Path, geom, windows: np.ndarray, threads: int) -> dict:
    """Decode ``windows`` through the job's reader (one reader per thread, as actors hold theirs)."""
    from tupac.heatmaps.engine import read_windows
    from tupac.slide import open_slide

    parts = np.array_split(np.arange(len(windows)), threads)

    def work(idx: np.ndarray) -> int:
        with open_slide(slide) as reader:
            for i in idx:  # one window at a time: what the actor's SlideWindows does
                read_windows(reader, geom, [tuple(windows[i])])
        return len(idx)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        n = sum(pool.map(work, parts))
    dt = time.perf_counter() - t0
    mpx = n * geom.window_px**2 / 1e6
    return {"windows": n, "seconds": round(dt, 2), "mpx_per_s": round(mpx / dt, 1) if dt else None,
            "threads": threads}


def model_only(slide: Path, trained, geom, windows: np.ndarray, sample: int, threads: int) -> dict:
    """Model time of the stage's windows, measured on ``sample`` of them already decoded."""
    import torch

    from tupac.heatmaps.engine import predict_windows, read_windows
    from tupac.slide import open_slide

    if not len(windows):
        return {"windows": 0, "seconds": 0.0}
    pick = windows[np.linspace(0, len(windows) - 1, min(sample, len(windows))).round().astype(int)]
    with open_slide(slide) as reader:
        pixels = read_windows(reader, geom, [tuple(rc) for rc in pick])
    torch.set_num_threads(threads)
    predict_windows(trained.model, pixels[:1], "cpu")  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    for i in range(len(pixels)):
        predict_windows(trained.model, pixels[i : i + 1], "cpu")
    per = (time.perf_counter() - t0) / len(pixels)
    return {"windows": int(len(windows)), "sampled": int(len(pixels)), "seconds_per_window": round(per, 4),
            "seconds": round(per * len(windows), 2), "torch_threads": threads}


def machine_bound(root: Path, run: Path, models: Path, sample: int, chunk: int = 64) -> dict:
    from tupac.slide import open_slide

    slide = next((root / "training_image_data").glob("*.svs"))
    threads = os.cpu_count() or 1
    out: dict = {"decode_only": {}, "model_only": {}}
    for task in ("tumor", "mitosis"):
        if not (models / task / "card.json").is_file():
            continue
        with open_slide(slide) as reader:
            trained, geom = _geometry(reader, models / task, chunk)
        win = job_windows(run, task)
        out["decode_only"][task] = decode_only(slide, geom, win, threads)
        out["model_only"][task] = model_only(slide, trained, geom, win, sample, threads)
    dec = sum(v["seconds"] for v in out["decode_only"].values())
    mod = sum(v["seconds"] for v in out["model_only"].values())
    out.update(decode_only_s=round(dec, 2), model_only_s=round(mod, 2), bound_s=round(max(dec, mod), 2),
               bound_by="model" if mod >= dec else "decode", load_avg_after=load_avg())
    return out


def ratios(res: dict) -> None:
    """End to end over the bound: of the command (Ray start included) and of the slide itself."""
    b = res.get("bound", {}).get("bound_s")
    inf = res.get("infer", {})
    if not b or not inf:
        return
    slide_s = (inf.get("summary_throughput") or {}).get("seconds")
    res["ratio"] = {"command_over_bound": round(inf["wall_s"] / b, 2),
                    "slide_over_bound": round(slide_s / b, 2) if slide_s else None, "target": 1.5}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True, help="MODELS folder (tumor/, mitosis/).")
    ap.add_argument("--work", type=Path, default=Path("/tmp/real-size"))
    ap.add_argument("--sizes-um", nargs="+", default=list(DEFAULT_SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-sample", type=int, default=24, help="Windows per stage timed model-only.")
    ap.add_argument("--skip-features", action="store_true")
    ap.add_argument("--skip-bound", action="store_true", help="Leave the decode-only / model-only bound out.")
    ap.add_argument("--job-arg", action="append", default=[],
                    help="Extra `tupac infer` option (repeatable, e.g. --job-arg=--actors=2); named in the JSON.")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real_size.json")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
                 "settings": {"models": str(a.models), "seed": a.seed, "model_sample": a.model_sample,
                              "job": "tupac infer defaults (local Ray of every core, --no-dashboard)",
                              "job_args_not_default": a.job_arg,
                              "features": "skipped" if a.skip_features else "tupac features --no-mlflow, no labels"},
                 "slides": {}}

    def save() -> None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1, default=str))

    for text in a.sizes_um:
        size = parse_size(text)
        entry: dict = res["slides"].setdefault(text, {"size_um": list(size)})
        root, entry["synth"] = synth_slide(a.work, size, a.seed)
        entry["slide"] = slide_info(next((root / "training_image_data").glob("*.svs")))
        save()
        run = a.work / f"run-{root.name}"
        if run.exists():
            shutil.rmtree(run)  # a fresh run, not a resumed one
        entry["infer"] = run_infer(root, a.models, run, a.work, a.job_arg)
        save()
        if not a.skip_bound:
            entry["bound"] = machine_bound(root, run, a.models, a.model_sample)
            ratios(entry)
            save()
        if not a.skip_features:
            entry["features"] = run_features(run, a.models, a.work)
            save()
        print(json.dumps({text: {k: entry.get(k) for k in ("ratio",)}}), flush=True)
    sizes = list(res["slides"].values())
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        area = (large["size_um"][0] * large["size_um"][1]) / (small["size_um"][0] * small["size_um"][1])
        res["memory"] = {"area_ratio": round(area, 2), "target_pss_ratio_below": 1.2}
        for stage in ("infer", "features"):
            if stage in small and stage in large and small[stage]["peak_pss_mb"]:
                res["memory"][f"{stage}_pss_ratio"] = round(large[stage]["peak_pss_mb"] / small[stage]["peak_pss_mb"], 3)
    save()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
