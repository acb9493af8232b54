"""GPU check of the cohort job: ``tupac infer`` end to end on a real-size phantom slide (issue 18).

A prepared script for one short run on a GPU machine (one NVIDIA H100 / H200, 16 cores, no
internet, tupac not installed: the repository root is on ``PYTHONPATH``). It runs the real job,
``python -m tupac infer`` in a child process with its own local Ray and model actors, on one
phantom slide, and measures what the issue's targets ask: the slide's end-to-end seconds (tumor +
mitosis, heatmaps committed; target on one H100/H200 for 80k x 60k px: at most 5 s) and the
end-to-end rate against the model-only rate of the same windows (target: at least 0.7).

Sections (each guarded: one that raises records its error and traceback and the others go on;
the JSON is rewritten after every section, so a run cut short keeps what it measured):

environment
    Python, torch, CUDA, GPU name, package versions, optional modules, CPU count, load average.
data
    One phantom slide from :func:`tupac.synth.generate_cohort` (seed ``--seed``, ``--size-um``;
    default 20000 x 15000 um = 80000 x 60000 px at 0.25 um/px; ``--quick``: 1000 x 800 um). With
    one slide to make, the generator renders its tile rows on ``--synth-workers`` processes and
    JPEG-encodes its tiles on as many threads: the same bytes as a serial run.
models
    ``--models DIR`` (trained models, named in the JSON), else seeded untrained LocNet + MitosNet
    with a Reinhard stain reference fitted on the H&E fixture, as tests/infer/test_job_support.py
    builds them (default widths; ``--quick``: the tests' tiny widths). Untrained weights put the
    tumor threshold somewhere arbitrary, so the tumor region, and with it the number of mitosis
    windows, differs from a trained model's: ``job.tumor_area_mm2`` vs ``data.true_tumor_area_mm2``
    says by how much.
job
    ``python -m tupac infer --data COHORT --models M --out RUN --no-dashboard`` on ``--device``
    (cuda: ``--num-gpus-per-actor 1``; cpu: ``0``), with a background sampler of GPU utilisation
    and memory (pynvml, else ``nvidia-smi``; 'not available' on a CPU run) and of the summed RSS
    of the job's whole process tree (psutil). Per slide: its wall time from the job's own line
    (``DONE <id> ... in X s``: preparation to commit), the commit record's ``timings_s``, the
    summary's run seconds and the child process's wall time (Python start, Ray start and stop
    included), window counts, tumor area and detections.
reference
    The same job on the CPU (``--num-gpus-per-actor 0``) on the same slide, in a second run
    folder, when ``--cpu-reference job`` (default with ``--device cpu`` or ``--quick``: two CPU
    runs must give identical heatmaps), and always a window sample: ``--sample-windows`` tumor and
    mitosis windows decoded, standardized and predicted on the CPU in this process through the
    engine's functions, compared with the job's stored cells. On a full-size slide a whole CPU
    run would take tens of minutes; the sample takes seconds and compares the same computation.
    Max abs difference of the tumor and mitosis heatmaps (:class:`tupac.heatmaps.HeatmapStore`)
    and both runs' detection counts.
decode
    The sample's windows decoded through the reader on the CPU (:class:`SlideWindows`, the job's
    backend) and, where the GPU decode path exists (``tupac.heatmaps.device_windows.DeviceWindows``
    with a cuCIM reader; probed, so this script runs before and after it lands), on the GPU:
    seconds per window and Mpx/s, in batches of the job's size.
model_only
    The models loaded with :func:`tupac.models.trained.load_trained` on ``--device``; a batch of
    the sample's decoded windows moved to the device once, then ``model.heatmap`` timed with the
    device synchronized (and :func:`tupac.heatmaps.engine.predict_windows`, host in and out, for
    comparison). The slide's model-only seconds = its tumor windows / tumor windows per s +
    its mitosis windows / mitosis windows per s.
summary
    ``end_to_end_s`` (the slide's wall time), the 5 s target, ``rate_ratio`` = model-only seconds /
    end-to-end seconds (end-to-end rate / model-only rate; target >= 0.7), GPU utilisation, the
    heatmap differences, every section that raised, and ``non_default_settings``.

Usage
-----
Once, where PyPI is reachable (here): ``bash benchmarks/gpu_bundle.sh`` writes ``.whl/job.tar.xz``
(31.6 MiB: Ray, Zarr 3, numcodecs, OpenSlide, imagecodecs' JPEG codec, pruned installed trees for
CPython 3.12) and ``.whl/gpu_decode.tar.xz`` (10.6 MiB: cuCIM, nvImageCodec, nvJPEG); ``.whl/`` is
git-ignored, and with the tracked files (9.3 MiB) 51.5 MiB travel, under the 64 MiB limit. Then one
device call (the ``run`` tool) with ``carry: [".whl"]`` and ``timeout_s: 600``; the JSON is rewritten
after every section, so a run stopped at the limit still returns what it measured::

    SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
    for a in .whl/*.tar.xz; do tar -xJf "$a" -C "$SP" || exit; done; export PYTHONPATH=$PWD; \
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_job.py --device cuda --out $OUT/gpu_job.json

(unpacked into python3's own site-packages, as pip would install them: nvImageCodec's files join
the ``nvidia`` package folder the CUDA wheels share, which a second folder on ``PYTHONPATH`` would
hide or be hidden by). Expected: ~1-2 minutes to synthesize the slide on 16 cores (not measured
there yet; ~10 minutes on one core), then the job and the measurements.

CPU dry run (CI runs it: tests/infer/test_gpu_job_dry_run.py; ~1 minute on 2 shared cores)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu_job.py --device cpu --quick --out /tmp/gpu_job_cpu.json

Output: one JSON (``--out``, default ``benchmarks/results/gpu_job.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for p in (ROOT, BENCH):  # tupac runs from the source tree, not installed; bench_common sits here
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
from bench_common import PeakSampler, load_avg  # noqa: E402
import gpu_check  # noqa: E402
from gpu_check import clean, save, sync, timed  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "real" / "he-tumor-target.png"
PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-image", "tifffile", "imagecodecs", "ray", "zarr", "numcodecs",
            "openslide-python", "openslide-bin", "cucim-cu13", "nvidia-ml-py", "psutil")
OPTIONAL_MODULES = ("ray", "zarr", "numcodecs", "openslide", "cucim", "imagecodecs", "pynvml", "psutil",
                    "tupac.heatmaps.device_windows")
T0 = time.perf_counter()
SLIDE_LINE = re.compile(r"DONE (\S+): (\d+) tumor \+ (\d+) mitosis windows(?:, (\d+) mitoses)? in ([0-9.]+) s")
TARGET_SLIDE_S = 5.0  # issue 18: an 80k x 60k slide end to end on one H100/H200
TARGET_RATE_RATIO = 0.7  # issue 18: end-to-end rate >= 70 % of the model-only rate
TARGET_SIZE_UM = (20000.0, 15000.0)


# --- plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes and settings of one run (the full GPU run or the ``--quick`` CPU dry run)."""

    size_um: tuple[float, float]
    tumor_kwargs: dict  # LocNet options of the seeded models ({} = tupac's default width)
    mitosis_kwargs: dict
    job_args: tuple[str, ...]  # `tupac infer` options beyond --data/--models/--out and the device's
    sample_windows: int  # windows per task decoded and predicted outside the job
    model_min_s: float  # seconds each model-only timing runs for
    cpu_reference: str  # "job": a whole CPU run too; "windows": the sample only


QUICK_TUMOR = {"widths": [8, 16, 16, 32, 32], "fc_width": 32}  # tests/infer/test_job_support.make_models
QUICK_MITOSIS = {"width": 8, "fc_width": 16}


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan from the command line: ``--quick`` is small everything (the CI dry run)."""
    if args.quick:
        plan = Plan(size_um=(1000.0, 800.0), tumor_kwargs=QUICK_TUMOR, mitosis_kwargs=QUICK_MITOSIS,
                    job_args=("--tumor-chunk", "16", "--mitosis-chunk", "32", "--object-store-mb", "200"),
                    sample_windows=3, model_min_s=0.3, cpu_reference="job")
    else:
        plan = Plan(size_um=TARGET_SIZE_UM, tumor_kwargs={}, mitosis_kwargs={}, job_args=(), sample_windows=16,
                    model_min_s=2.0, cpu_reference="job" if args.device == "cpu" else "windows")
    over = {k: v for k, v in (("size_um", tuple(args.size_um) if args.size_um else None),
                              ("sample_windows", args.sample_windows),
                              ("cpu_reference", args.cpu_reference)) if v is not None}
    plan = Plan(**{**asdict(plan), **over})
    return Plan(**{**asdict(plan), "job_args": tuple(plan.job_args) + tuple(args.job_arg or ())})


@dataclass
class Ctx:
    """What sections hand to later ones."""

    args: argparse.Namespace
    plan: Plan
    work: Path
    cohort: Path | None = None
    slide: Path | None = None
    models: Path | None = None
    runs: dict = field(default_factory=dict)  # "job" / "cpu_job" -> run folder
    windows: dict = field(default_factory=dict)  # task -> sampled window indices
    pixels: dict = field(default_factory=dict)  # task -> decoded sample (B, n, n, 3) uint8
    geoms: dict = field(default_factory=dict)  # task -> HeatmapGeometry of the slide
    job_rec: dict | None = None  # the device run's record, once it succeeded

    @property
    def device(self) -> str:
        return self.args.device


def log(msg: str) -> None:
    print(f"[gpu_job {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def guarded(store: dict, key: str, fn: Callable[[], dict]) -> dict:
    """``store[key] = {"ok": True, **fn()}``; an exception becomes an error record (the run goes on).
    :func:`gpu_check.guarded`, logging with this script's prefix."""
    return gpu_check.guarded(store, key, fn, say=log)


def need(value: Any, what: str) -> Any:
    """``value``, or a RuntimeError naming the earlier section that should have produced it."""
    if value is None or (hasattr(value, "__len__") and not len(value)):
        raise RuntimeError(f"{what} is missing (an earlier section failed)")
    return value


# --- environment -------------------------------------------------------------------------------------


def has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def environment(ctx: Ctx) -> dict:
    """Versions and machine facts. No CUDA context here: the data section forks its render pool."""
    import torch

    import tupac

    gpu = None
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        gpu = q.stdout.strip() or q.stderr.strip()
    return {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "gpu": gpu, "tupac_from": str(Path(tupac.__file__).resolve().parent),
            "packages": gpu_check.versions(PACKAGES), "optional_modules": {m: has_module(m) for m in OPTIONAL_MODULES},
            "load_avg": load_avg(), "plan": asdict(ctx.plan)}


# --- data: the phantom slide -------------------------------------------------------------------------


def data(ctx: Ctx) -> dict:
    """One phantom slide (reused when ``--work`` already holds it for the same size and seed)."""
    from tupac.synth import generate_cohort

    w_um, h_um = ctx.plan.size_um
    root = ctx.work / f"cohort-{int(w_um)}x{int(h_um)}-seed{ctx.args.seed}"
    done = root / "truth" / "cohort.json"
    workers = ctx.args.synth_workers or os.cpu_count() or 1
    rec: dict[str, Any] = {"root": root, "seed": ctx.args.seed, "size_um": [w_um, h_um], "synth_workers": workers}
    t0 = time.perf_counter()
    if not done.is_file():
        # One slide, so the generator renders its tile rows on every worker and encodes its JPEG
        # tiles on as many threads (the same bytes as a serial run).
        generate_cohort(root, n_slides=1, seed=ctx.args.seed, size_um=(w_um, h_um), mitosis_images=0, workers=workers)
        rec["generate_s"] = round(time.perf_counter() - t0, 1)
    else:
        rec["reused"] = True
    meta = json.loads(done.read_text())
    (sid, truth), = meta["slides"].items()
    ctx.cohort, ctx.slide = root, Path(truth["path"])
    rec.update(slide_id=sid, path=ctx.slide, size_px=truth["size_px"], levels=truth["levels"],
               file_mib=round(ctx.slide.stat().st_size / 2**20, 1), true_tumor_area_mm2=truth["tumor_area_mm2"],
               true_tissue_area_mm2=truth["tissue_area_mm2"], true_mitoses=truth["n_mitoses"])
    log(f"slide {sid}: {truth['size_px'][0]} x {truth['size_px'][1]} px, {rec['file_mib']} MiB")
    return rec


# --- models ---------------------------------------------------------------------------------------------


def models(ctx: Ctx) -> dict:
    """``--models`` as given, or seeded untrained models (see the module docstring)."""
    if ctx.args.models is not None:
        ctx.models = ctx.args.models
        cards = {t: json.loads((ctx.models / t / "card.json").read_text()) for t in ("tumor", "mitosis")
                 if (ctx.models / t / "card.json").is_file()}
        return {"source": "given", "weights": "as given (--models)", "path": ctx.models,
                "cards": {t: {k: c.get(k) for k in ("name", "task", "decision_threshold", "stain_method")}
                          for t, c in cards.items()}}
    import torch
    from PIL import Image

    from tupac.models import create_model, save_model
    from tupac.preprocess import stain

    ctx.models = ctx.work / ("models-quick" if ctx.args.quick else "models")
    template = np.asarray(Image.open(FIXTURE).convert("RGB"))[:400, :400]
    ref = stain.fit(template, method="reinhard")
    out = {"source": "seeded", "weights": "untrained (seeded): tumor regions differ from a trained model's",
           "path": ctx.models, "stain_reference": "reinhard, fitted on tests/fixtures/real/he-tumor-target.png"}
    specs = (("tumor", "locnet", ctx.plan.tumor_kwargs, {"extra": {"threshold": ctx.args.tumor_threshold}}),
             ("mitosis", "mitosnet", ctx.plan.mitosis_kwargs, {"detection_threshold": ctx.args.detection_threshold}))
    for seed, (task, name, kwargs, meta) in enumerate(specs):
        torch.manual_seed(seed)
        model = create_model(name, task=task, **kwargs)
        d = ctx.models / task
        d.mkdir(parents=True, exist_ok=True)
        ref.save(d / "stain_reference.json")
        model.update_card(stain_reference="stain_reference.json", stain_method="reinhard", **meta)
        save_model(model, model.card, d)
        out[task] = {"name": name, "model_kwargs": kwargs or "default width", "seed": seed, **meta,
                     "parameters": sum(p.numel() for p in model.parameters())}
    return out


# --- the job --------------------------------------------------------------------------------------------


def gpu_sampler():
    """``measure() -> (util %, used MiB)`` of GPU 0 through pynvml, else nvidia-smi; None without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)

        def measure():
            u = pynvml.nvmlDeviceGetUtilizationRates(h)
            return u.gpu, pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20

        measure()
        return measure, "pynvml"
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        def measure():
            q = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10)
            u, m = q.stdout.strip().splitlines()[0].split(",")
            return float(u), float(m)

        try:
            measure()
            return measure, "nvidia-smi"
        except Exception:
            return None, "not available (nvidia-smi answered nothing usable)"
    return None, "not available (no pynvml and no nvidia-smi)"


def tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of process ``pid`` and all its descendants (the CLI, raylet, workers, actors)."""
    from tupac.infer.memory import tree_memory

    return int(tree_memory(pid).rss_mb * 2**20)


RUN_JOB_DRIVER = """
import json, sys
from pathlib import Path
from tupac.data.manifest import load_cohort
from tupac.infer.job import JobConfig, run_job
summary = run_job(load_cohort(data=Path(sys.argv[1])), JobConfig(**json.loads(sys.argv[2])))
sys.exit(0 if summary["ok"] else 1)
"""
"""The job without the CLI's argument layer (same JobConfig, same run_job, same Ray actors): used
when ``python -m tupac infer`` cannot start, e.g. a typer on the GPU machine older than the CLI needs."""


def job_options(args: list[str]) -> dict[str, Any]:
    """``tupac infer`` options (``--tumor-chunk 16``, ``--no-dashboard``) as JobConfig fields."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag = args[i].removeprefix("--")
        if flag.startswith("no-"):
            out[{"dashboard": "include_dashboard"}.get(flag[3:], flag[3:].replace("-", "_"))] = False
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            v = args[i + 1]
            out[flag.replace("-", "_")] = int(v) if v.lstrip("-").isdigit() else (
                float(v) if re.fullmatch(r"-?[0-9.eE+-]+", v) else v)
            i += 2
        else:
            out[{"dashboard": "include_dashboard"}.get(flag, flag.replace("-", "_"))] = True
            i += 1
    return out


def launch(cmd: list[str], env: dict, timeout_s: float, measure_gpu) -> dict:
    """Run ``cmd`` (its own process group) while sampling the tree's RSS and the GPU."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)  # a timeout can then end Ray's processes with it
    with PeakSampler(lambda: tree_rss(proc.pid), 0.2) as rss, \
            PeakSampler(measure_gpu or (lambda: None), 0.2 if measure_gpu else 3600) as gpu:
        try:
            text, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            text, _ = proc.communicate()
            text += f"\n[gpu_job] killed after {timeout_s:g} s (--job-timeout-s)"
    return {"returncode": proc.returncode, "text": text, "wall_s": time.perf_counter() - t0, "rss": rss.peak(),
            "gpu_samples": gpu.samples}


def gpu_actor_cpus(device: str, job_args: list[str]) -> list[str]:
    """``--cpus-per-actor`` for the one GPU actor: every core but two (left to the slide tasks), so
    it decodes each batch on that many threads; none on a CPU run or when ``--job-arg`` sets it."""
    if not device.startswith("cuda") or any(a.startswith("--cpus-per-actor") for a in job_args):
        return []
    return ["--cpus-per-actor", str(max(1, (os.cpu_count() or 1) - 2))]


def run_cli(ctx: Ctx, name: str, device: str) -> dict:
    """``python -m tupac infer`` on the phantom cohort; samplers run while it does."""
    cohort, models = need(ctx.cohort, "the phantom slide"), need(ctx.models, "the models")
    out = ctx.work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
    ray_tmp = Path(tempfile.mkdtemp(prefix="tgj", dir="/tmp"))  # short: Ray's socket paths are limited
    opts = ["--num-gpus-per-actor", "1" if device.startswith("cuda") else "0", "--no-dashboard",
            "--local-temp-dir", str(ray_tmp), *gpu_actor_cpus(device, ctx.plan.job_args), *ctx.plan.job_args]
    cmd = [sys.executable, "-m", "tupac", "infer", "--data", str(cohort), "--models", str(models), "--out", str(out),
           *opts]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "COLUMNS": "400", "RAY_USAGE_STATS_ENABLED": "0"}  # wide: the per-slide line must not wrap
    measure_gpu, gpu_how = gpu_sampler() if device.startswith("cuda") else (None, "not available (CPU run)")
    r = launch(cmd, env, ctx.args.job_timeout_s, measure_gpu)
    via = "cli"
    if r["returncode"] != 0 and not (out / "ledger.sqlite").exists():  # the CLI failed before the job began
        via = f"run_job (the CLI did not start: {r['text'].strip().splitlines()[-1][:300] if r['text'].strip() else '?'})"
        log(f"{name}: {via}")
        cfg = {"models": str(models), "out": str(out), **job_options(opts)}
        cmd = [sys.executable, "-c", RUN_JOB_DRIVER, str(cohort), json.dumps(cfg)]
        r = launch(cmd, env, ctx.args.job_timeout_s, measure_gpu)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    ctx.runs[name] = out
    rec: dict[str, Any] = {"device": device, "via": via, "command": cmd[1:], "returncode": r["returncode"],
                           "process_wall_s": round(r["wall_s"], 2),
                           "peak_rss_mib_process_tree": round(r["rss"] / 2**20, 1), "gpu_sampler": gpu_how,
                           "gpu": gpu_stats(r["gpu_samples"]) if measure_gpu else gpu_how,
                           "load_avg": load_avg(), "output_tail": r["text"][-3000:]}
    if r["returncode"] != 0:
        raise RuntimeError(f"the job exited {r['returncode']}: {r['text'][-1500:]}")
    rec.update(slide_record(out, r["text"]))
    log(f"{name}: slide {rec.get('slide_wall_s')} s, process {rec['process_wall_s']} s, "
        f"{rec['windows']} windows, {rec['detections']} detections")
    return rec


def gpu_stats(samples: list) -> dict:
    vals = [v for _, v in samples if v is not None]
    if not vals:
        return {"samples": 0}
    util = np.array([u for u, _ in vals], float)
    mem = np.array([m for _, m in vals], float)
    return {"samples": len(vals), "period_s": 0.2, "util_mean_pct": round(float(util.mean()), 1),
            "util_max_pct": float(util.max()), "util_busy_fraction": round(float((util > 0).mean()), 3),
            "mem_used_max_mib": round(float(mem.max()), 1), "util_trace_pct": util.round().astype(int).tolist()}


def slide_record(run: Path, text: str) -> dict:
    """The run's slide: its wall time (the job's DONE line), commit timings, windows, detections."""
    summary = json.loads((run / "summary.json").read_text())
    if not summary.get("ok") or len(summary.get("done", [])) != 1:
        raise RuntimeError(f"the job did not commit the slide: {json.dumps(summary)[:1500]}")
    sid = summary["done"][0]
    commit = json.loads((run / "slides" / f"{sid}.zarr" / "commit.json").read_text())
    m = [g for g in SLIDE_LINE.findall(text) if g[0] == sid]
    actors = json.loads((run / "actors.json").read_text()) if (run / "actors.json").is_file() else []
    ex = commit.get("extra", {})
    return {"slide_id": sid, "slide_wall_s": float(m[-1][4]) if m else None,
            "run_seconds": summary.get("throughput", {}).get("seconds"), "throughput": summary.get("throughput"),
            "timings_s": commit.get("timings_s"), "windows": ex.get("windows"), "backend": ex.get("backend"),
            "tumor_area_mm2": ex.get("tumor_area_mm2"), "tissue_fraction": ex.get("tissue_fraction"),
            "detections": ex.get("mitoses"),
            "actors": [{k: a.get(k) for k in ("device", "gpu_ids", "torch_threads", "tf32", "decode_device",
                                               "decode_reason") if k in a} for a in actors]}


def job(ctx: Ctx) -> dict:
    return run_cli(ctx, "job", ctx.device)


# --- reference: the CPU's heatmaps ------------------------------------------------------------------------


def read_heatmaps(run: Path) -> dict[str, np.ndarray]:
    from tupac.heatmaps import HeatmapStore

    (store,) = sorted((run / "slides").glob("*.zarr"))
    hs = HeatmapStore.open(store, mode="r")
    return {t: hs.read(t) for t in ("tumor", "mitosis")}


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    if a.shape != b.shape:
        return {"shape_match": False, "shapes": [list(a.shape), list(b.shape)], "max_abs_diff": None}
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"shape_match": True, "shape": list(a.shape), "max_abs_diff": float(d.max()) if d.size else 0.0,
            "mean_abs_diff": float(d.mean()) if d.size else 0.0, "cells_differing": int((d > 0).sum())}


def reference(ctx: Ctx) -> dict:
    res: dict[str, Any] = {"mode": ctx.plan.cpu_reference}
    if ctx.plan.cpu_reference == "job":
        guarded(res, "cpu_job", lambda: {k: v for k, v in run_cli(ctx, "cpu_job", "cpu").items() if k != "output_tail"})
        guarded(res, "heatmaps_vs_cpu_job", lambda: job_vs_job(ctx))
    guarded(res, "windows", lambda: sample_vs_job(ctx))
    return res


def job_vs_job(ctx: Ctx) -> dict:
    a = read_heatmaps(need(ctx.runs.get("job"), "the device run"))
    b = read_heatmaps(need(ctx.runs.get("cpu_job"), "the CPU run"))
    return {t: diff(a[t], b[t]) for t in a}


def plan_windows(ctx: Ctx) -> dict:
    """The slide's windows as the job plans them (in-process: tissue, stain, then the regions the
    device run's tumor heatmap gives), and an evenly spread sample of each task's."""
    from tupac.heatmaps.prepare import CardInfo
    from tupac.infer.actors import model_dirs
    from tupac.infer.slide_task import prepare_slide, tumor_regions

    run = need(ctx.runs.get("job"), "the device run")
    found, _ = model_dirs(ctx.models)
    cards = {t: CardInfo.from_dir(t, d) for t, d in found.items()}
    chunks = {"tumor": _job_opt(ctx, "--tumor-chunk", 64), "mitosis": _job_opt(ctx, "--mitosis-chunk", 64)}
    scratch = ctx.work / "probe.zarr"
    shutil.rmtree(scratch, ignore_errors=True)
    plan = prepare_slide("probe", str(ctx.slide), None, str(scratch), cards, chunks)
    (store,) = sorted((run / "slides").glob("*.zarr"))
    wins = {"tumor": np.asarray(plan.tumor_windows).reshape(-1, 2)}
    stats = {"tumor": plan.stats.get(cards["tumor"].stain_method)}
    if "mitosis" in cards:
        reg = tumor_regions(str(store), plan, cards["tumor"].threshold, str(ctx.slide), None, cards["mitosis"].stain_method)
        wins["mitosis"] = np.asarray(reg["windows"]).reshape(-1, 2)
        stats["mitosis"] = reg.get("stats") or plan.stats.get(cards["mitosis"].stain_method)
    k = ctx.plan.sample_windows
    for t, w in wins.items():
        idx = np.unique(np.linspace(0, len(w) - 1, min(k, len(w))).round().astype(int)) if len(w) else []
        ctx.windows[t] = [tuple(int(v) for v in w[i]) for i in idx]
        ctx.geoms[t] = plan.geoms[t]
    return {"plan": plan, "stats": stats, "backend": plan.backend, "counts": {t: len(w) for t, w in wins.items()}}


def _job_opt(ctx: Ctx, flag: str, default: int) -> int:
    a = list(ctx.plan.job_args)
    return int(a[a.index(flag) + 1]) if flag in a else default


def sample_vs_job(ctx: Ctx) -> dict:
    """The sample's windows decoded, standardized and predicted on the CPU here vs the job's cells."""
    import torch

    from tupac.heatmaps.engine import SlideWindows, own_cells, predict_windows, standardize, standardizer
    from tupac.models.trained import load_trained
    from tupac.slide import open_slide

    info = plan_windows(ctx)
    job_maps = read_heatmaps(ctx.runs["job"])
    # A CPU job's actors ran with a fixed thread count: the same here, so that the sums run in the
    # same order. Against a GPU job the CPU's own result is the reference: all cores.
    threads = {a.get("torch_threads") for a in (ctx.job_rec or {}).get("actors", [])}
    same = ctx.device == "cpu" and threads and None not in threads
    torch.set_num_threads(max(1, min(threads)) if same else (os.cpu_count() or 1))
    out: dict[str, Any] = {"windows_planned": info["counts"], "backend": info["backend"],
                           "torch_threads": torch.get_num_threads()}
    with open_slide(ctx.slide, backend=info["backend"]) as reader:
        for task, wins in ctx.windows.items():
            trained = load_trained(ctx.models / task, device="cpu")
            geom = ctx.geoms[task]
            px = SlideWindows(reader, geom).read(wins)
            ctx.pixels[task] = px
            prep = standardizer(trained.reference, _stats(info["stats"][task]), None) if info["stats"][task] else None
            probs = predict_windows(trained.model, standardize(px, prep), "cpu")
            worst = 0.0
            for rc, block in own_cells(geom, wins, probs):
                rows, cols = geom.cells(rc)
                worst = max(worst, float(np.abs(job_maps[task][rows, cols].astype(np.float64) - block).max()))
            out[task] = {"windows": len(wins), "window_px": geom.window_px, "max_abs_diff_vs_job": worst}
    return out


def _stats(d):
    from tupac.preprocess import stain

    return stain.SlideStainStats.from_dict(d)


# --- decode and model-only ---------------------------------------------------------------------------------


def decode(ctx: Ctx) -> dict:
    """The sample's windows through the CPU reader and, where it exists, the GPU decode path."""
    from tupac.heatmaps.engine import SlideWindows
    from tupac.slide import open_slide

    batch = job_batch(ctx)
    res: dict[str, Any] = {"batch": batch}
    backend = (ctx.job_rec or {}).get("backend") or "auto"
    for task, wins in need(ctx.windows, "the window sample").items():
        geom = ctx.geoms[task]
        rec = res.setdefault(task, {"windows": len(wins), "window_px": geom.window_px})
        workers = os.cpu_count() or 1
        with open_slide(ctx.slide, backend=backend) as reader:
            guarded(rec, "cpu", lambda r=reader, g=geom, w=wins: decode_rate(SlideWindows(r, g), w, batch, "cpu",
                                                                             g.window_px, backend))
            # What a GPU actor with --cpus-per-actor N does: each batch on N decoder threads.
            guarded(rec, f"cpu_{workers}_workers", lambda r=reader, g=geom, w=wins: decode_rate(
                SlideWindows(r, g, num_workers=workers), w, batch, "cpu", g.window_px, backend))
        rec["gpu"] = gpu_decode(ctx, geom, wins, batch)
    return res


def decode_rate(source, wins: list, batch: int, device: str, n: int, backend: str) -> dict:
    t0 = time.perf_counter()
    for i in range(0, len(wins), batch):
        source.read(wins[i : i + batch])
    sync(device)
    dt = time.perf_counter() - t0
    return {"backend": backend, "s_per_window": dt / max(1, len(wins)),
            "mpx_per_s": round(len(wins) * n * n / 1e6 / dt, 1) if dt else None}


def gpu_decode(ctx: Ctx, geom, wins: list, batch: int) -> Any:
    """GPU decode rate, or 'not available: why' (no such path in this checkout, no cuCIM, CPU run)."""
    if not ctx.device.startswith("cuda"):
        return "not available (CPU run)"
    try:
        from tupac.heatmaps.device_windows import DeviceWindows
    except ImportError as e:
        return f"not available (no GPU decode path in this checkout: {e})"
    from tupac.slide import open_slide

    rec: dict[str, Any] = {}

    def run():
        with open_slide(ctx.slide, backend="cucim") as reader:
            src = DeviceWindows(reader, geom, ctx.device)
            src.read(wins[:1])  # warm-up: decoder and memory pools
            return decode_rate(src, wins, batch, ctx.device, geom.window_px, "cucim")

    guarded(rec, "cuda", run)
    return rec["cuda"]


def job_batch(ctx: Ctx) -> int:
    from tupac.infer.job import default_batch_size

    return _job_opt(ctx, "--batch-size", default_batch_size(gpu=ctx.device.startswith("cuda")))


def model_only(ctx: Ctx) -> dict:
    """Model-only windows/s on ``--device`` (input already there) and predict_windows for comparison."""
    import torch

    from tupac.heatmaps.engine import predict_windows
    from tupac.models import to_device_input
    from tupac.models.trained import load_trained

    batch = job_batch(ctx)
    dev = ctx.device
    if dev.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = "--gpu-tf32" in ctx.plan.job_args  # as the job's actors run
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    res: dict[str, Any] = {"device": dev, "batch": batch, "tf32": bool(dev.startswith("cuda") and
                                                                         torch.backends.cudnn.allow_tf32)}
    for task, px in need(ctx.pixels, "decoded sample windows").items():
        model = load_trained(ctx.models / task, device=dev).model
        b = px[np.arange(batch) % len(px)]  # the job's batch size, from the sample's windows
        x = to_device_input(b, dev)

        def call(m=model, x=x):
            with torch.inference_mode():
                return m.heatmap(x)

        t = timed(call, dev, ctx.plan.model_min_s)
        tp = timed(lambda m=model, b=b: predict_windows(m, b, dev), dev, ctx.plan.model_min_s)
        res[task] = {"window_px": int(px.shape[1]), "model_only": {**t, "windows_per_s": batch / t["s_per_call"]},
                     "predict_windows_host_in_out": {**tp, "windows_per_s": batch / tp["s_per_call"]},
                     "torch_threads": torch.get_num_threads()}
        log(f"model-only {task}: {res[task]['model_only']['windows_per_s']:.1f} windows/s on {dev}")
    return res


# --- summary and main ---------------------------------------------------------------------------------------


def non_default_settings(args: argparse.Namespace, plan: Plan) -> dict:
    """Every setting that is not the script's or the job's default, named."""
    out: dict[str, Any] = {"job_cli": ["--num-gpus-per-actor", "1" if args.device.startswith("cuda") else "0",
                                       "--no-dashboard", "--local-temp-dir <short /tmp folder>",
                                       *gpu_actor_cpus(args.device, plan.job_args), *plan.job_args]}
    defaults = vars(parse_args([]))
    for k, v in vars(args).items():
        if k not in ("out", "work") and v != defaults.get(k):
            out[k] = v
    if args.quick:
        out["quick_plan"] = {"size_um": plan.size_um, "tumor_kwargs": plan.tumor_kwargs,
                             "mitosis_kwargs": plan.mitosis_kwargs, "sample_windows": plan.sample_windows}
    return out


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def summary(doc: dict) -> dict:
    """The targets' figures and every section or item that raised."""
    errors: list = []

    def walk(d: Any, path: str) -> None:
        if isinstance(d, dict):
            if d.get("ok") is False:
                errors.append({"at": path, "error": d.get("error"), "where": d.get("where")})
            for k, v in d.items():
                walk(v, f"{path}.{k}" if path else k)

    walk({k: v for k, v in doc.items() if k != "summary"}, "")
    # The slide's own seconds (the job's DONE line: preparation to commit); the run's if that line was not found.
    e2e = _get(doc, "job", "slide_wall_s")
    e2e_from = "slide_wall_s (the job's DONE line)"
    if e2e is None:
        e2e, e2e_from = _get(doc, "job", "run_seconds"), "run_seconds (summary.json; no DONE line found)"
    wins = _get(doc, "job", "windows") or {}
    model_s, parts = 0.0, {}
    for task, n in wins.items():
        rate = _get(doc, "model_only", task, "model_only", "windows_per_s")
        if n and rate:
            parts[task] = n / rate
            model_s += n / rate
        elif n:
            model_s = None
            break
    ratio = model_s / e2e if (model_s and e2e) else None
    size = _get(doc, "data", "size_px")
    full = size is not None and tuple(size) == (80000, 60000)
    diffs = {"cpu_job": {t: _get(doc, "reference", "heatmaps_vs_cpu_job", t, "max_abs_diff") for t in ("tumor", "mitosis")},
             "cpu_windows": {t: _get(doc, "reference", "windows", t, "max_abs_diff_vs_job") for t in ("tumor", "mitosis")}}
    return {
        "device": doc["meta"]["device"], "slide_px": size, "weights": _get(doc, "models", "weights"),
        "end_to_end_s": e2e, "end_to_end_from": e2e_from, "process_wall_s": _get(doc, "job", "process_wall_s"), "windows": wins,
        "model_only_s": model_s, "model_only_s_per_task": parts,
        "rate_ratio": ratio, "rate_ratio_note": "end-to-end rate / model-only rate = model-only s / end-to-end s",
        "targets": {"end_to_end_s_max": TARGET_SLIDE_S, "rate_ratio_min": TARGET_RATE_RATIO,
                    "applies": bool(full and doc["meta"]["device"].startswith("cuda")),
                    "end_to_end_met": (e2e <= TARGET_SLIDE_S) if (e2e is not None and full) else None,
                    "rate_ratio_met": (ratio >= TARGET_RATE_RATIO) if ratio is not None else None},
        "gpu_util": _get(doc, "job", "gpu") if not isinstance(_get(doc, "job", "gpu"), dict) else
        {k: v for k, v in doc["job"]["gpu"].items() if k != "util_trace_pct"},
        "peak_rss_mib_process_tree": _get(doc, "job", "peak_rss_mib_process_tree"),
        "heatmap_max_abs_diff": diffs,
        "detections": {"job": _get(doc, "job", "detections"),
                       "cpu_job": _get(doc, "reference", "cpu_job", "detections")},
        "decode_s_per_window": {t: {"cpu": _get(doc, "decode", t, "cpu", "s_per_window"),
                                    "gpu": (_get(doc, "decode", t, "gpu", "s_per_window")
                                            if isinstance(_get(doc, "decode", t, "gpu"), dict)
                                            else _get(doc, "decode", t, "gpu"))} for t in ("tumor", "mitosis")},
        "decode_speedup_gpu_vs_cpu": {t: _ratio(_get(doc, "decode", t, "cpu", "s_per_window"),
                                                _get(doc, "decode", t, "gpu", "s_per_window")) for t in ("tumor", "mitosis")},
        "errors": errors, "wall_s": round(time.perf_counter() - T0, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda on the GPU machine; cpu for the dry run")
    ap.add_argument("--quick", action="store_true", help="small slide, tiny models, short timings (the CI dry run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_job.json")
    ap.add_argument("--size-um", type=float, nargs=2, default=None, metavar=("W", "H"),
                    help="phantom slide extent in um (default 20000 15000 = 80k x 60k px; --quick: 1000 800)")
    ap.add_argument("--seed", type=int, default=18, help="phantom slide seed")
    ap.add_argument("--synth-workers", type=int, default=None, help="render processes (default: all CPUs)")
    ap.add_argument("--models", type=Path, default=None, help="trained models folder (default: seeded untrained)")
    ap.add_argument("--tumor-threshold", type=float, default=0.5, help="tumor threshold of the seeded model")
    ap.add_argument("--detection-threshold", type=float, default=0.5, help="mitosis threshold of the seeded model")
    ap.add_argument("--cpu-reference", choices=("job", "windows"), default=None,
                    help="job: a whole CPU run too; windows: a CPU window sample only (default: job on cpu or "
                         "--quick, else windows)")
    ap.add_argument("--sample-windows", type=int, default=None, help="windows per task for reference/decode/model-only")
    ap.add_argument("--job-arg", action="append", default=None,
                    help="extra `tupac infer` option, repeatable (e.g. --job-arg=--gpu-tf32)")
    ap.add_argument("--job-timeout-s", type=float, default=400.0,
                    help="give up on one job run after this long (default fits the GPU machine's 600 s per command)")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch folder, kept (a slide there is reused); default: a temporary one, removed")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="tupac-gpu-job-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args, plan, work)
    doc: dict[str, Any] = {"meta": {"script": "benchmarks/gpu_job.py", "argv": sys.argv[1:] if argv is None else argv,
                                    "device": args.device, "quick": args.quick,
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "non_default_settings": non_default_settings(args, plan)}}
    sections = (("environment", environment), ("data", data), ("models", models), ("job", job),
                ("reference", reference), ("decode", decode), ("model_only", model_only))
    try:
        for name, fn in sections:
            log(f"section {name}")
            guarded(doc, name, lambda f=fn: f(ctx))
            if name == "job" and doc["job"]["ok"]:
                ctx.job_rec = doc["job"]
            save(doc, args.out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    doc["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["summary"] = summary(doc)
    save(doc, args.out)
    s = doc["summary"]
    log(f"end to end {s['end_to_end_s']} s (target <= {TARGET_SLIDE_S} s at 80k x 60k on one GPU), model-only "
        f"{s['model_only_s']} s, ratio {s['rate_ratio']} (target >= {TARGET_RATE_RATIO})")
    log(f"heatmap max abs diff: {json.dumps(clean(s['heatmap_max_abs_diff']))}; detections {s['detections']}")
    for e in s["errors"]:
        log(f"  ERROR {e['at']}: {str(e['error'])[:240]} ({e['where']})")
    log(f"wrote {args.out} in {s['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
