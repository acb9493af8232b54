"""Cohort-job throughput: the Ray job vs naive baselines, 1 vs 2 local nodes, peak RSS vs slide size.

Slide: a phantom 40x slide of ``--size-um`` (default 3000 x 2500 um = 12000 x 10000 px). Model: a
LocNet tumor model at the default width (seeded, untrained: speed does not depend on the weights)
with a Reinhard stain reference; the mitosis stage is left out (MODELS has only ``tumor/``).

Unit: a *tile* is one input patch of the model (140 x 140 px at 10x), which gives one heatmap
cell; tiles/s is heatmap cells/s, the same unit for the job and every baseline.

- ``job``: ``run_job`` with its defaults (``--chunk`` 64-cell windows, default batch size and
  threads) on a local Ray of ``--cpus`` CPUs started before the clock (``ray.init`` is reported
  separately), end to end: actor start and model load, tissue, stain statistics, decode,
  standardize, predict, Zarr writes, commit.
- ``naive`` (the baseline the target refers to): the sliding-window classifier as it is usually
  written: one OpenSlide ``read_region`` per tile, stain transform, one model call per tile
  (torch on all ``--cpus`` threads), results stitched into a numpy array. Run on ``--naive-tiles``
  tissue cells drawn at random (seeded) and extrapolated to the slide's cells; each cell is
  compared with the job's heatmap.
- ``sequential_windows`` (a strong baseline, not naive): the job's own windowed fully
  convolutional computation, one window after another in one process (OpenSlide read, stain, one
  model call per window), stitched; compared bitwise with the job's heatmap.
- ``nodes``: the job on a Ray cluster of 1 node vs 2 nodes (2 logical CPUs each, started with
  ``ray start`` on this machine), 1 actor per node, on a cohort of ``--cohort`` slide entries
  (the same file under different slide ids). Both nodes share the same 2 physical cores, so this
  measures the multi-node overhead and placement, not added compute.
- ``memory``: peak RSS (sum over the driver and the Ray processes of the run, sampled every
  0.2 s) for the slide and for one 4x larger (2x each side).

Writes ``benchmarks/results/infer_throughput.json``. The machine may be shared: the load average
is recorded with every figure.

Usage: ``.venv/bin/python benchmarks/infer_throughput.py [--size-um 3000 2500] [--skip-memory]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import PeakSampler  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _models(out: Path) -> Path:
    import torch
    from PIL import Image

    from tupac.models import create_model, save_model
    from tupac.preprocess import stain

    template = np.asarray(Image.open(ROOT / "tests/fixtures/real/he-tumor-target.png").convert("RGB"))[:400, :400]
    torch.manual_seed(0)
    model = create_model("locnet", task="tumor")
    d = out / "tumor"
    d.mkdir(parents=True, exist_ok=True)
    stain.fit(template, method="reinhard").save(d / "stain_reference.json")
    model.update_card(stain_reference="stain_reference.json", stain_method="reinhard", extra={"threshold": 0.5})
    save_model(model, model.card, d)
    return out


def _slide(root: Path, size_um) -> Path:
    from tupac.synth import generate_cohort

    if not (root / "training_image_data").is_dir():
        generate_cohort(root, n_slides=1, seed=5, size_um=tuple(size_um), mitosis_images=0, workers=1)
    return sorted((root / "training_image_data").glob("*.svs"))[0]


def tagged_rss(tag: str) -> int:
    """Summed RSS (bytes) of this process and every process whose command line names ``tag``."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int(d.name) != os.getpid() and tag not in (d / "cmdline").read_bytes().decode(errors="replace"):
                continue
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def _cfg(models: Path, out: Path, chunk: int, **kw):
    from tupac.infer.job import JobConfig

    return JobConfig(models=models, out=out, tumor_chunk=chunk, **kw)


def _quiet(total):
    from rich.console import Console

    from tupac.infer.progress import CohortProgress

    return CohortProgress(total, console=Console(file=open(os.devnull, "w")), live=False)


def run_job_local(slide: Path, models: Path, out: Path, chunk: int, cpus: int) -> dict:
    import ray

    from tupac.data.manifest import ManifestEntry
    from tupac.infer.job import run_job

    temp = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    t_init = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 1024**2, _temp_dir=str(temp),
             log_to_driver=False)
    t_init = time.perf_counter() - t_init
    try:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        with PeakSampler(lambda: tagged_rss(str(temp))) as rss:
            s = run_job([ManifestEntry(slide.stem, slide)], _cfg(models, out, chunk), progress=_quiet)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert s["ok"], s
    from tupac.heatmaps import HeatmapStore

    tumor = HeatmapStore.open(out / "slides" / f"{slide.stem}.zarr", mode="r").read("tumor")
    timings = json.loads((out / "slides" / f"{slide.stem}.zarr" / "commit.json").read_text())["timings_s"]
    return {"windows": s["throughput"]["tiles"], "wall_s": wall, "ray_init_s": t_init, "slide_timings_s": timings,
            "peak_rss_mb": rss.peak() / 2**20, "load_avg": os.getloadavg()}, tumor


def sequential_windows(slide: Path, models: Path, chunk: int, cpus: int) -> tuple[dict, np.ndarray]:
    """The job's windows one after another: OpenSlide read_region, stain, one model call per window."""
    import openslide
    import torch

    from tupac.heatmaps.windows import heatmap_geometry, window_tissue
    from tupac.models.trained import load_trained
    from tupac.preprocess import stain
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide
    from tupac.slide.base import composite_on_white
    from tupac.slide.resample import plan_level, resize_window, source_window

    torch.set_num_threads(cpus)
    trained = load_trained(models / "tumor")
    t0 = time.perf_counter()
    with open_slide(slide, backend="openslide") as reader:  # tissue + stain statistics, as the job
        tissue = slide_tissue_mask(reader, 8.0)
        stats = stain.fit_slide(reader, tissue, method=trained.reference.method)
        geom = heatmap_geometry(reader.dimensions, reader.mpp, trained.card, chunk)
        levels, slide_mpp = reader.level_downsamples, reader.mpp
    keep = window_tissue(geom, tissue.mask, tissue.mpp)
    osr = openslide.OpenSlide(str(slide))
    plan = plan_level(slide_mpp, levels, geom.mpp, False, source=str(slide))
    out = np.zeros(geom.shape, np.float32)
    n = geom.window_px
    cells = 0
    for r, c in np.argwhere(keep):
        x0, y0 = geom.window_origin_l0((int(r), int(c)))
        ds = levels[plan.level]
        if plan.resample:
            sx, lw, fx = source_window(x0 / ds, n, plan.scale)
            sy, lh, fy = source_window(y0 / ds, n, plan.scale)
        else:
            sx, lw, fx, sy, lh, fy = int(np.floor(x0 / ds)), n, 0.0, int(np.floor(y0 / ds)), n, 0.0
        region = composite_on_white(np.asarray(osr.read_region((int(sx * ds), int(sy * ds)), plan.level, (lw, lh))))
        window = resize_window(region, (fx, fy), (n, n), plan.scale) if plan.resample else region
        window = stain.transform(window, stats, trained.reference)
        x = torch.from_numpy(window[None]).permute(0, 3, 1, 2).float().div(255.0)
        with torch.inference_mode():
            p = trained.model.heatmap(x)[0, 1].numpy()
        rows, cols = geom.cells((int(r), int(c)))
        out[rows, cols] = p[: rows.stop - rows.start, : cols.stop - cols.start]
        cells += (rows.stop - rows.start) * (cols.stop - cols.start)
    wall = time.perf_counter() - t0
    return {"windows": int(keep.sum()), "tiles": cells, "wall_s": wall, "tiles_per_s": cells / wall,
            "load_avg": os.getloadavg()}, out


def naive_best(slide: Path, models: Path, chunk: int, n_tiles: int, job_tumor: np.ndarray, cpus: int) -> dict:
    """:func:`naive` with the faster of 1 and ``cpus`` torch threads (chosen on a 128-tile probe):
    a 140 px patch is too small a call for threads to pay, and on a busy machine OpenMP barriers
    can make the threaded call 10x slower, so the baseline gets whichever is better."""
    probe = {t: naive(slide, models, chunk, 128, job_tumor, t)["tiles_per_s"] for t in sorted({1, cpus})}
    best = max(probe, key=probe.get)
    return {**naive(slide, models, chunk, n_tiles, job_tumor, best), "threads": best, "probe_tiles_per_s": probe}


def naive(slide: Path, models: Path, chunk: int, n_tiles: int, job_tumor: np.ndarray, cpus: int, seed: int = 0) -> dict:
    """The naive sliding window: one read_region, stain transform and model call per tile (patch).

    ``n_tiles`` consecutive cells with tissue (non-zero in the job's heatmap), in raster order from
    a random (seeded) start, as the full raster loop would visit them (OpenSlide's tile cache helps
    neighbours as it would there); their cells/s extrapolates to the slide because every tile costs
    the same (one fixed-size read and model call).
    """
    import openslide
    import torch

    from tupac.heatmaps.windows import heatmap_geometry
    from tupac.models.trained import load_trained
    from tupac.preprocess import stain
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide
    from tupac.slide.base import composite_on_white

    torch.set_num_threads(cpus)
    trained = load_trained(models / "tumor")
    t_setup = time.perf_counter()
    with open_slide(slide, backend="openslide") as reader:
        tissue = slide_tissue_mask(reader, 8.0)
        stats = stain.fit_slide(reader, tissue, method=trained.reference.method)
        geom = heatmap_geometry(reader.dimensions, reader.mpp, trained.card, chunk)
        level = int(np.argmin([abs(reader.mpp * d - geom.mpp) for d in reader.level_downsamples]))
        ds = reader.level_downsamples[level]
        assert abs(reader.mpp * ds - geom.mpp) < 1e-3, "needs a pyramid level at the model's mpp"
    t_setup = time.perf_counter() - t_setup
    osr = openslide.OpenSlide(str(slide))
    nz = np.argwhere(job_tumor != 0)
    start = int(np.random.default_rng(seed).integers(0, max(1, len(nz) - n_tiles)))
    cells = nz[start : start + n_tiles]
    p, s, lead = geom.patch_px, geom.stride_px, geom.lead_px
    diffs = []
    t0 = time.perf_counter()
    for i, j in cells:
        x0, y0 = int((j * s - lead) * ds), int((i * s - lead) * ds)
        patch = composite_on_white(np.asarray(osr.read_region((x0, y0), level, (p, p))))
        patch = stain.transform(patch, stats, trained.reference)
        x = torch.from_numpy(patch[None]).permute(0, 3, 1, 2).float().div(255.0)
        with torch.inference_mode():
            prob = trained.model(x)[0, 1].item()
        diffs.append(abs(prob - float(job_tumor[i, j])))
    wall = time.perf_counter() - t0
    rate = len(cells) / wall
    return {"tiles_sampled": int(len(cells)), "sample_wall_s": wall, "tiles_per_s": rate, "setup_s": t_setup,
            "max_abs_diff_vs_job": float(max(diffs)), "load_avg": os.getloadavg()}


def _stop(temp: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if str(temp) in (d / "cmdline").read_bytes().decode(errors="replace"):
                        os.kill(int(d.name), sig)
                except OSError:
                    pass
        time.sleep(2)
    shutil.rmtree(temp, ignore_errors=True)


def run_nodes(slide: Path, models: Path, out: Path, chunk: int, nodes: int, cohort: int) -> dict:
    """The job via `tupac infer --address` on ``nodes`` local nodes of 2 logical CPUs, one actor each,
    on ``cohort`` manifest entries of the same slide file (distinct slide ids)."""
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="tn", dir="/tmp"))
    common = ["--num-cpus=2", "--num-gpus=0", "--object-store-memory=200000000", "--disable-usage-stats"]
    try:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # loopback-only cluster
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *common],
                       check=True, capture_output=True, env=env)
        for _ in range(nodes - 1):
            subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], check=True, capture_output=True, env=env)
        shutil.rmtree(out, ignore_errors=True)
        manifest = out.parent / "nodes.csv"
        manifest.write_text("slide_id,path\n" + "".join(f"{slide.stem}-{k}\n".replace("\n", f",{slide}\n")
                                                         for k in range(cohort)))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tupac", "infer", "--manifest", str(manifest), "--models", str(models),
                               "--out", str(out), "--address", f"127.0.0.1:{port}", "--actors", str(nodes),
                               "--tumor-chunk", str(chunk), "--num-gpus-per-actor", "0"], capture_output=True, text=True,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        wall = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr[-2000:]
        windows = json.loads((out / "summary.json").read_text())["throughput"]["tiles"]
        return {"nodes": nodes, "slides": cohort, "windows": windows, "wall_s": wall, "slides_per_h": 3600 * cohort / wall,
                "load_avg": os.getloadavg()}
    finally:
        _stop(temp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-um", type=float, nargs=2, default=(3000.0, 2500.0))
    ap.add_argument("--chunk", type=int, default=64, help="tumor window edge in cells (the job's default)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--naive-tiles", type=int, default=1024)
    ap.add_argument("--cohort", type=int, default=4, help="slide entries for the 1-vs-2-node run")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tupac-infer-bench")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-nodes", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/infer_throughput.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    models = _models(a.work / "models")
    slide = _slide(a.work / f"slide-{int(a.size_um[0])}x{int(a.size_um[1])}", a.size_um)
    import openslide

    dims = openslide.OpenSlide(str(slide)).dimensions
    res: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
                 "slide": {"path": str(slide), "dimensions_px": dims, "size_um": list(a.size_um)},
                 "chunk_cells": a.chunk, "tile": "one model input patch (140 x 140 px at 10x) = one heatmap cell"}
    print("slide", dims, flush=True)
    res["job"], job_tumor = run_job_local(slide, models, a.work / "run-job", a.chunk, a.cpus)
    res["sequential_windows"], seq = sequential_windows(slide, models, a.chunk, a.cpus)
    res["sequential_windows"]["identical_to_job"] = bool(np.array_equal(seq, job_tumor))
    res["sequential_windows"]["max_abs_diff_vs_job"] = float(np.abs(seq - job_tumor).max())
    tiles = res["sequential_windows"]["tiles"]
    assert res["sequential_windows"]["windows"] == res["job"]["windows"], "job and baseline disagree on the windows"
    res["job"]["tiles"] = tiles
    res["job"]["tiles_per_s"] = tiles / res["job"]["wall_s"]
    print("job", res["job"], flush=True)
    print("sequential_windows", res["sequential_windows"], flush=True)
    res["naive"] = naive_best(slide, models, a.chunk, a.naive_tiles, job_tumor, a.cpus)
    res["naive"]["slide_wall_s_extrapolated"] = res["naive"]["setup_s"] + tiles / res["naive"]["tiles_per_s"]
    print("naive", res["naive"], flush=True)
    res["speedup_vs_naive"] = res["job"]["tiles_per_s"] / res["naive"]["tiles_per_s"]
    res["speedup_vs_sequential_windows"] = res["job"]["tiles_per_s"] / res["sequential_windows"]["tiles_per_s"]
    if not a.skip_nodes:
        one = run_nodes(slide, models, a.work / "run-n1", a.chunk, 1, a.cohort)
        two = run_nodes(slide, models, a.work / "run-n2", a.chunk, 2, a.cohort)
        res["nodes"] = {"one": one, "two": two, "ratio": one["wall_s"] / two["wall_s"]}
        print("nodes", res["nodes"], flush=True)
    if not a.skip_memory:
        big = _slide(a.work / f"slide-{int(2 * a.size_um[0])}x{int(2 * a.size_um[1])}", (2 * a.size_um[0], 2 * a.size_um[1]))
        res["memory"] = {"small": res["job"]["peak_rss_mb"]}
        res["memory"]["large"] = run_job_local(big, models, a.work / "run-big", a.chunk, a.cpus)[0]["peak_rss_mb"]
        res["memory"]["growth"] = res["memory"]["large"] / res["memory"]["small"] - 1
        print("memory", res["memory"], flush=True)
    res["machine"]["load_avg_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps({k: res[k] for k in ("speedup_vs_naive", "speedup_vs_sequential_windows")}, indent=2))


if __name__ == "__main__":
    main()
