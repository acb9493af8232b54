"""GPU check of tupac: CUDA vs CPU correctness, inference throughput and training, in one run.

A prepared script for one short run on a GPU machine (NVIDIA H100 / H200, no internet, tupac not
installed: the repository root is on ``PYTHONPATH``). It goes through tupac's own functions only
and compares each GPU result with the same call on the CPU. Ray, Zarr, Dask and MLflow are not
needed; OpenSlide and imagecodecs (for the phantom slides) come from wheels carried in ``.whl/``,
and the sections that need them record an error without them.

Sections (each is guarded: one that fails records its error and traceback and the others run;
the JSON is rewritten after every section, so a run cut short keeps what it measured):

environment
    torch / CUDA / cuDNN versions, CPU count, package versions, which optional modules exist.
data
    A phantom TUPAC16 cohort from :func:`tupac.synth.generate_cohort` (two small slides with
    ROIs, a few 2000 x 2000 px mitosis images); without imagecodecs (JPEG SVS) it falls back to
    the mitosis images alone.
device
    GPU name, memory, multiprocessors and the TF32 / cuDNN flags tupac runs under.
models
    The tumor network (``locnet``, task tumor) and the mitosis network (``mitosnet``, task
    mitosis) built by :func:`tupac.models.create_model` with a fixed seed, saved with
    :func:`tupac.models.save_model` and loaded with :func:`tupac.models.trained.load_trained` on
    the CPU and on the device, as the inference actors do. Window size: the job's default chunk
    (64 cells: 1148 px for LocNet, 1087 px for MitosNet) through
    :func:`tupac.heatmaps.windows.heatmap_geometry`.
correctness
    Max absolute difference of the positive-class probabilities, device vs CPU (pass below
    ``--tol``, default 1e-3) for :func:`tupac.heatmaps.engine.predict_windows` (a GPU batch of
    windows of each network), :func:`tupac.heatmaps.engine.window_probabilities`,
    :func:`tupac.mitosis.inference.mitosis_heatmap` on a phantom 40x field and
    :func:`tupac.heatmaps.engine.heatmap_to_array` on a phantom slide (OpenSlide); plus, as a
    diagnostic, the predict_windows comparisons again with cuDNN TF32 the other way round from the
    job's GPU actors (``JobConfig.gpu_tf32``, off by default: heatmaps match the CPU's).
throughput
    Windows/s, heatmap cells/s and Mpx/s through ``predict_windows``: on the device at batch 1,
    the job's GPU batch (``DEFAULT_BATCH``) and a larger one, and model-only (input already on
    the device); on the CPU at the job's CPU batch (``CPU_BATCH``) with ``torch.set_num_threads(
    os.cpu_count())``. Warm-up, then repeated calls for a few seconds with ``torch.cuda.synchronize``.
training_loop
    :func:`tupac.train.train` (the one training loop) on the mitosis network with patches made by
    tupac's mitosis sampling from the phantom images, and on the tumor network with patches cut
    from the real H&E fixture: patches/s per epoch (first epoch excluded) on device and CPU, and
    whether the training loss decreased (decisive for the mitosis network; the tumor patches'
    labels are a stand-in rule, so there it is a diagnostic). Then ``predict_windows`` device vs
    CPU again with the weights the CPU run learned (probabilities further from 0.5 than a fresh
    network's).
training_entrypoints
    A tiny real :func:`tupac.mitosis.training.train_mitosis` and
    :func:`tupac.tumor.training.train_tumor` on the phantom cohort with ``device`` set in the
    train config; when the device run fails, the same run on the CPU tells whether the failure
    is the device's.

Usage
-----
On the GPU machine, from the repository root, with ``.whl/`` carried (it is git-ignored through
``.git/info/exclude``; it holds imagecodecs, openslide-python and openslide-bin wheels for CPython 3.12)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --device cuda --out $OUT/gpu_check.json

A CPU smoke run with small inputs (1 to 2 minutes on 2 shared cores; ``device`` is then the CPU too)::

    nice -n 10 .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check_cpu.json

Output: one JSON file (``--out``, default ``benchmarks/results/gpu_check.json``); ``summary`` lists
every pass/fail check and every section or item that raised.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tupac runs from the source tree, not installed
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "real" / "he-tumor-target.png"
OPTIONAL_MODULES = ("ray", "zarr", "numcodecs", "dask", "mlflow", "openslide", "openslide_bin", "cucim", "imagecodecs")
PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-image", "scikit-learn", "tifffile", "pillow", "safetensors",
            "imagecodecs", "openslide-python", "openslide-bin")
T0 = time.perf_counter()


# --- plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full GPU-machine run or the ``--quick`` CPU smoke run."""

    chunk: int  # heatmap cells per window edge (the job's tumor_chunk / mitosis_chunk)
    device_batches: tuple[int, ...]  # windows per predict_windows call on the device
    correctness_batch: int
    device_min_s: float  # seconds each timing runs for
    cpu_min_s: float
    slides: int
    slide_um: tuple[float, float]
    mitosis_images: int
    loop_images: int  # phantom images the mitosis loop's patches come from
    loop_mitosis_patches: int
    loop_tumor_patches: int
    loop_epochs_device: int
    loop_epochs_cpu: int
    tumor_kwargs: dict  # LocNet options of every tumor network here ({} = tupac's default width)
    budget_s: float


def make_plan(quick: bool, job_batch: int) -> Plan:
    """The full plan (job-sized windows and batches) or the quick one (small everything)."""
    if quick:
        return Plan(chunk=16, device_batches=(1, 2), correctness_batch=2, device_min_s=0.3, cpu_min_s=0.3, slides=2,
                    slide_um=(800.0, 700.0), mitosis_images=4, loop_images=2, loop_mitosis_patches=256,
                    loop_tumor_patches=48, loop_epochs_device=2, loop_epochs_cpu=2,
                    tumor_kwargs={"widths": [8, 16, 24, 32, 64], "fc_width": 64}, budget_s=150.0)
    return Plan(chunk=64, device_batches=tuple(sorted({1, job_batch, 4 * job_batch})), correctness_batch=job_batch,
                device_min_s=2.0, cpu_min_s=3.0, slides=2, slide_um=(800.0, 700.0), mitosis_images=6, loop_images=4,
                loop_mitosis_patches=4096, loop_tumor_patches=384, loop_epochs_device=4, loop_epochs_cpu=2,
                tumor_kwargs={}, budget_s=330.0)


class Ctx:
    """What sections hand to later sections (device, plan, work folder, models, data)."""

    def __init__(self, device: str, plan: Plan, work: Path, tol: float) -> None:
        self.device, self.plan, self.work, self.tol = device, plan, work, tol
        self.models: dict[str, dict[str, Any]] = {}
        self.geometry: dict[str, dict[str, int]] = {}
        self.cohort: Path | None = None
        self.has_slides = False
        self.mitosis_ds = None  # the mitosis training loop's PatchDataset
        self.trained: dict[str, Any] = {}  # task -> network the CPU training loop trained
        self.cpu_refs: dict[str, np.ndarray] = {}  # CPU results reused by the TF32 diagnostic

    def left(self) -> float:
        """Seconds left of the time budget."""
        return self.plan.budget_s - (time.perf_counter() - T0)


# --- small helpers -----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def error_record(e: BaseException) -> dict[str, Any]:
    """One-line error, the deepest tupac frame it went through, and the traceback."""
    frames = traceback.extract_tb(e.__traceback__)
    inside = [f for f in frames if f"{os.sep}tupac{os.sep}" in f.filename]
    where = None
    if inside:
        f = inside[-1]
        name = str(Path(f.filename).relative_to(ROOT)) if f.filename.startswith(str(ROOT)) else f.filename
        where = f"{name}:{f.lineno} in {f.name}"
    return {"error": f"{type(e).__name__}: {e}"[:2000], "where": where, "notes": getattr(e, "__notes__", None),
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-6000:]}


def guarded(store: dict, key: str, fn: Callable[[], dict], need_s: float = 0.0,
            left: Callable[[], float] | None = None, say: Callable[[str], None] | None = None) -> dict:
    """``store[key] = fn()`` plus ``ok`` and ``seconds``; an exception becomes an error record.

    Skipped (``ok`` False, ``skipped`` set) when ``left()`` says fewer than ``need_s`` seconds remain.
    ``say`` prints the outcome lines (default: this script's :func:`log`).
    """
    say = say or log
    if left is not None and left() < need_s:
        store[key] = {"ok": False, "skipped": f"time budget: {left():.0f} s left, needs about {need_s:.0f} s"}
        say(f"{key}: skipped ({store[key]['skipped']})")
        return store[key]
    t0 = time.perf_counter()
    try:
        store[key] = {"ok": True, **fn()}
    except Exception as e:  # a failing item is a result, not the end of the run
        store[key] = {"ok": False, **error_record(e)}
        say(f"{key}: FAILED {store[key]['error'][:300]} ({store[key]['where']})")
    store[key]["seconds"] = round(time.perf_counter() - t0, 2)
    return store[key]


def clean(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays, paths, tuples; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, np.generic):
        return clean(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(clean(doc), indent=2))
    os.replace(tmp, out)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def require_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def timed(call: Callable[[], Any], device: str, min_s: float, warmup: int = 1) -> dict[str, float]:
    """Run ``call`` ``warmup`` times, then repeatedly for at least ``min_s`` seconds (2 calls at least),
    synchronizing the device around the clock."""
    for _ in range(warmup):
        call()
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        call()
        sync(device)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s and reps >= 2:
            return {"calls": reps, "timed_s": round(elapsed, 3), "s_per_call": elapsed / reps}


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``packages`` (None where it is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def fixture_rgb() -> np.ndarray:
    """The real H&E field of the test fixtures (1000 x 1000 RGB); noise if it is missing."""
    if FIXTURE.is_file():
        from PIL import Image

        with Image.open(FIXTURE) as im:
            return np.asarray(im.convert("RGB"))
    return np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)


def make_windows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct ``size`` x ``size`` uint8 windows of real H&E (random crops, flips and quarter
    turns of the fixture, mirror-extended when the window is larger than it)."""
    img = fixture_rgb()
    pad = max(0, size + 64 - min(img.shape[:2]))
    big = np.pad(img, ((0, pad), (0, pad), (0, 0)), mode="symmetric")
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        y, x = (int(v) for v in rng.integers(0, big.shape[0] - size + 1, 2))
        w = big[y : y + size, x : x + size]
        w = np.rot90(w, int(rng.integers(0, 4)))
        out[i] = w[:, ::-1] if rng.integers(0, 2) else w
    return out


def compare(ref: np.ndarray, got: np.ndarray, tol: float) -> dict[str, Any]:
    """Max / mean absolute difference of two probability arrays and the pass verdict."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    same_shape = ref.shape == got.shape
    finite = bool(np.isfinite(got).all())
    diff = np.abs(ref - got) if same_shape else np.array([np.inf])
    max_diff = float(diff.max()) if diff.size else 0.0
    return {"shape": list(ref.shape), "shape_match": same_shape, "finite": finite, "max_abs_diff": max_diff,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0, "tol": tol,
            "pass": bool(same_shape and finite and max_diff < tol),
            "cpu_prob": ({"min": float(ref.min()), "max": float(ref.max()), "std": float(ref.std())}
                         if ref.size else None)}


def cudnn_flags() -> dict[str, Any]:
    import torch

    flags = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
             "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn_benchmark": torch.backends.cudnn.benchmark,
             "cudnn_deterministic": torch.backends.cudnn.deterministic,
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is not None:
        flags["cudnn_conv_fp32_precision"] = conv
    return flags


# --- sections ------------------------------------------------------------------------------------------


def environment(ctx: Ctx) -> dict:
    """Versions and machine facts; does not create a CUDA context (the data section forks)."""
    import importlib.util

    import torch

    import tupac

    return {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "torch_threads": torch.get_num_threads(),
        "device_requested": ctx.device, "tupac_from": str(Path(tupac.__file__).resolve().parent),
        "packages": versions(),
        "optional_modules": {m: importlib.util.find_spec(m) is not None for m in OPTIONAL_MODULES},
        "load_avg": [round(v, 2) for v in os.getloadavg()], "plan": asdict(ctx.plan),
    }


def data(ctx: Ctx) -> dict:
    """The phantom cohort (slides need imagecodecs for their JPEG tiles; else mitosis images only)."""
    from tupac.synth import generate_cohort

    p = ctx.plan
    root = ctx.work / "cohort"
    workers = max(1, min(os.cpu_count() or 1, p.slides + p.mitosis_images))
    rec: dict[str, Any] = {"root": root, "workers": workers}
    t0 = time.perf_counter()
    try:
        summary = generate_cohort(root, n_slides=p.slides, seed=8, size_um=p.slide_um, mitosis_images=p.mitosis_images,
                                  workers=workers)
        ctx.has_slides = True
        rec.update(slides=[{"id": s.slide_id, "size_px": s.size_px, "n_roi": s.n_roi} for s in summary.slides],
                   mitosis_set_mitoses=summary.n_mitosis_set_mitoses)
    except Exception as e:  # no JPEG encoder (imagecodecs): the mitosis images still work
        rec["slides_error"] = error_record(e)["error"]
        log(f"slides failed ({rec['slides_error'][:200]}); mitosis images only")
        shutil.rmtree(root, ignore_errors=True)
        from tupac.synth.cohort import _make_mitosis_image  # the generator's own per-image step

        for k in range(p.mitosis_images):
            _make_mitosis_image(root, 8, k)
    rec["generate_s"] = round(time.perf_counter() - t0, 1)
    rec["mitosis_images"] = len(list((root / "mitoses" / "mitoses_image_data").glob("*/*.tif")))
    rec["has_slides"] = ctx.has_slides
    ctx.cohort = root
    return rec


def device_info(ctx: Ctx) -> dict:
    import torch

    require_device(ctx.device)
    torch.set_num_threads(os.cpu_count() or 1)
    rec: dict[str, Any] = {"device": ctx.device, "torch_threads": torch.get_num_threads()}
    if ctx.device.startswith("cuda"):
        prop = torch.cuda.get_device_properties(torch.device(ctx.device))
        rec.update(name=prop.name, total_mib=round(prop.total_memory / 2**20),
                   multiprocessors=prop.multi_processor_count,
                   capability=f"{prop.major}.{prop.minor}", flags=cudnn_flags())
    return rec


def models(ctx: Ctx) -> dict:
    """Seeded tumor and mitosis networks, saved and loaded on CPU and device as the actors load them
    (every CPU model first, so the CPU measurements still run when the device load fails)."""
    from tupac.heatmaps.windows import heatmap_geometry
    from tupac.models.trained import load_trained
    from tupac.models import create_model, save_model

    out, dirs = {}, {}
    for task, name, kwargs in (("tumor", "locnet", ctx.plan.tumor_kwargs), ("mitosis", "mitosnet", {})):
        model = create_model(name, task=task, seed=0, **kwargs)
        dirs[task] = save_model(model, model.card, ctx.work / "models" / task)
        ctx.models[task] = {"cpu": load_trained(dirs[task], device="cpu").model}
        card = model.card
        geom = heatmap_geometry((40000, 40000), 0.25, card, ctx.plan.chunk)
        cells = card.heatmap_shape(geom.window_px, geom.window_px)
        ctx.geometry[task] = {"window_px": geom.window_px, "cells": cells[0] * cells[1]}
        out[task] = {"name": name, "model_kwargs": kwargs, "parameters": sum(p.numel() for p in model.parameters()),
                     "patch_px": card.patch_size, "stride_px": card.output_stride, "mpp": card.mpp,
                     "chunk_cells": ctx.plan.chunk, "window_px": geom.window_px, "cells_per_window": cells}
    for task, d in dirs.items():
        ctx.models[task]["device"] = load_trained(d, device=ctx.device).model
        out[task]["device_param"] = str(next(ctx.models[task]["device"].parameters()).device)
    return out


def correctness(ctx: Ctx) -> dict:
    """Device vs CPU probabilities through tupac's inference functions."""
    res: dict[str, Any] = {}
    for task in ("tumor", "mitosis"):
        guarded(res, f"{task}_predict_windows", lambda t=task: check_predict_windows(ctx, t))
        guarded(res, f"{task}_window_probabilities", lambda t=task: check_window_probabilities(ctx, t))
    guarded(res, "mitosis_heatmap_image", lambda: check_mitosis_heatmap(ctx))
    guarded(res, "tumor_slide_heatmap", lambda: check_slide_heatmap(ctx))
    if ctx.device.startswith("cuda"):
        res["tf32_flipped"] = {}
        for task in ("tumor", "mitosis"):
            guarded(res["tf32_flipped"], f"{task}_predict_windows",
                    lambda t=task: with_tf32_flipped(lambda: check_predict_windows(ctx, t)))
    return res


def job_tf32() -> bool:
    """cuDNN TF32 as the cohort job's GPU actors set it (``JobConfig.gpu_tf32``'s default)."""
    import dataclasses

    from tupac.infer.job import JobConfig

    return next(f.default for f in dataclasses.fields(JobConfig) if f.name == "gpu_tf32")


def with_tf32_flipped(fn: Callable[[], dict]) -> dict:
    """Run ``fn`` with cuDNN TF32 the other way round from the job's setting (a diagnostic)."""
    import torch

    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = not job_tf32()
    try:
        return {"note": f"diagnostic: cuDNN TF32 {'on' if not job_tf32() else 'off'} "
                        f"(the job's GPU actors run with it {'on' if job_tf32() else 'off'})", **fn()}
    finally:
        torch.backends.cudnn.allow_tf32 = prev


def check_predict_windows(ctx: Ctx, task: str) -> dict:
    from tupac.heatmaps.engine import predict_windows

    n = ctx.geometry[task]["window_px"]
    px = make_windows(ctx.plan.correctness_batch, n, seed=1)
    if task not in ctx.cpu_refs:
        ctx.cpu_refs[task] = predict_windows(ctx.models[task]["cpu"], px, "cpu")
    ref = ctx.cpu_refs[task]
    got = predict_windows(ctx.models[task]["device"], px, ctx.device)
    return {"windows": len(px), "window_px": n, **compare(ref, got, ctx.tol)}


def check_window_probabilities(ctx: Ctx, task: str) -> dict:
    from tupac.heatmaps.engine import window_probabilities

    n = ctx.geometry[task]["window_px"]
    px = make_windows(1, n, seed=2)[0]
    ref = window_probabilities(ctx.models[task]["cpu"], px, "cpu")
    got = window_probabilities(ctx.models[task]["device"], px, ctx.device)
    return {"window_px": n, **compare(ref, got, ctx.tol)}


def first_mitosis_image(ctx: Ctx) -> np.ndarray:
    from tupac.mitosis.inference import read_image

    paths = sorted((ctx.cohort / "mitoses" / "mitoses_image_data").glob("*/*.tif"))
    if not paths:
        raise RuntimeError("no phantom mitosis image (data section failed)")
    return read_image(paths[0])


def check_mitosis_heatmap(ctx: Ctx) -> dict:
    from tupac.mitosis.inference import mitosis_heatmap

    rgb = first_mitosis_image(ctx)
    t0 = time.perf_counter()
    ref = mitosis_heatmap(ctx.models["mitosis"]["cpu"], rgb, device="cpu").prob  # tupac's default windows
    t1 = time.perf_counter()
    got = mitosis_heatmap(ctx.models["mitosis"]["device"], rgb, device=ctx.device).prob
    sync(ctx.device)
    t2 = time.perf_counter()
    return {"image_px": list(rgb.shape[:2]), "cpu_s": round(t1 - t0, 3), "device_s_first_call": round(t2 - t1, 3),
            **compare(ref, got, ctx.tol)}


def check_slide_heatmap(ctx: Ctx) -> dict:
    """``heatmap_to_array`` over a phantom slide (OpenSlide reads; the path tumor training maps slides with)."""
    from tupac.heatmaps.engine import heatmap_to_array
    from tupac.slide import open_slide

    if not ctx.has_slides:
        raise RuntimeError("no phantom slide (the data section could not write SVS files)")
    slide = sorted((ctx.cohort / "training_image_data").glob("*.svs"))[0]
    with open_slide(slide) as reader:
        backend = getattr(reader, "backend", None)
        ref, geom = heatmap_to_array(reader, ctx.models["tumor"]["cpu"], chunk=ctx.plan.chunk, device="cpu")
        got, _ = heatmap_to_array(reader, ctx.models["tumor"]["device"], chunk=ctx.plan.chunk, device=ctx.device)
    return {"slide": slide.name, "backend": backend, "windows": int(np.prod(geom.grid)), **compare(ref, got, ctx.tol)}


def throughput(ctx: Ctx) -> dict:
    """predict_windows rates: device at several batches and model-only; CPU at the job's CPU batch."""
    from tupac.infer.job import CPU_BATCH, DEFAULT_BATCH

    batches = ctx.plan.device_batches
    compared = DEFAULT_BATCH if DEFAULT_BATCH in batches else max(batches)  # the job's batch (quick: the largest)
    res: dict[str, Any] = {"job_gpu_batch": DEFAULT_BATCH, "job_cpu_batch": CPU_BATCH,
                           "device_batch_compared": compared}
    for task in ("tumor", "mitosis"):
        res[task] = {}
        guarded(res[task], "device", lambda t=task: device_rates(ctx, t, DEFAULT_BATCH), need_s=8, left=ctx.left)
        guarded(res[task], "device_model_only", lambda t=task: model_only_rates(ctx, t, compared), need_s=6,
                left=ctx.left)
        guarded(res[task], "cpu", lambda t=task: cpu_rates(ctx, t, CPU_BATCH), need_s=8, left=ctx.left)
        res[task]["speedup_device_vs_cpu_windows_per_s"] = speedup(res[task], compared)
    return res


def rates(t: dict, windows: int, ctx: Ctx, task: str) -> dict:
    n, cells = ctx.geometry[task]["window_px"], ctx.geometry[task]["cells"]
    per_s = windows / t["s_per_call"]
    return {**t, "batch": windows, "windows_per_s": round(per_s, 3), "cells_per_s": round(per_s * cells, 1),
            "mpx_per_s": round(per_s * n * n / 1e6, 3)}


def device_rates(ctx: Ctx, task: str, job_batch: int) -> dict:
    from tupac.heatmaps.engine import predict_windows

    n = ctx.geometry[task]["window_px"]
    px = make_windows(max(ctx.plan.device_batches), n, seed=3)
    out: dict[str, Any] = {"window_px": n, "flags": cudnn_flags() if ctx.device.startswith("cuda") else None}
    model = ctx.models[task]["device"]
    for b in ctx.plan.device_batches:
        reset_peak(ctx.device)
        t = timed(lambda: predict_windows(model, px[:b], ctx.device), ctx.device, ctx.plan.device_min_s)
        out[f"batch_{b}"] = {**rates(t, b, ctx, task), "peak_mib": peak_mib(ctx.device), "job_batch": b == job_batch}
        log(f"throughput {task} {ctx.device} batch {b}: {out[f'batch_{b}']['windows_per_s']:.2f} windows/s")
    if ctx.device.startswith("cuda"):
        out[f"batch_{job_batch}_host_float_path"] = host_float_rates(ctx, task, model, px[:job_batch])
    return out


def host_float_rates(ctx: Ctx, task: str, model, px: np.ndarray) -> dict:
    """The previous input path, for comparison: float32 conversion on the host, then the copy."""
    import torch

    from tupac.models import to_input

    def call():
        x = to_input(px).to(ctx.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model.heatmap(x)[:, 1].float().cpu().numpy()

    r = rates(timed(call, ctx.device, ctx.plan.device_min_s), len(px), ctx, task)
    log(f"throughput {task} {ctx.device} batch {len(px)} host-float path: {r['windows_per_s']:.2f} windows/s")
    return r


def model_only_rates(ctx: Ctx, task: str, batch: int) -> dict:
    """model.heatmap on input already on the device (as predict_windows lays it out), and with the
    weights in channels_last too: how much of a call is host-side conversion and copy."""
    import torch

    from tupac.models import to_device_input

    n = ctx.geometry[task]["window_px"]
    x = to_device_input(make_windows(batch, n, seed=3), ctx.device)
    out: dict[str, Any] = {}
    variants = {"as_loaded": ctx.models[task]["device"]}
    if ctx.device.startswith("cuda"):
        variants["weights_channels_last"] = copy.deepcopy(variants["as_loaded"]).to(memory_format=torch.channels_last)
    for name, model in variants.items():
        def call(m=model):
            with torch.inference_mode():
                return m.heatmap(x)

        out[name] = rates(timed(call, ctx.device, ctx.plan.device_min_s), batch, ctx, task)
    if ctx.device.startswith("cuda"):
        def call_strict(m=variants["as_loaded"]):
            with torch.inference_mode():
                return m.heatmap(x)

        out["tf32_flipped"] = with_tf32_flipped(lambda: rates(timed(call_strict, ctx.device, ctx.plan.device_min_s), batch, ctx, task))
        log(f"model-only {task} batch {batch}: {out['as_loaded']['windows_per_s']:.1f} windows/s as the job runs, "
            f"{out['tf32_flipped']['windows_per_s']:.1f} flipped (job TF32: {job_tf32()})")
    return out


def cpu_rates(ctx: Ctx, task: str, batch: int) -> dict:
    import torch

    from tupac.heatmaps.engine import predict_windows

    torch.set_num_threads(os.cpu_count() or 1)
    n = ctx.geometry[task]["window_px"]
    px = make_windows(batch, n, seed=3)
    t = timed(lambda: predict_windows(ctx.models[task]["cpu"], px, "cpu"), "cpu", ctx.plan.cpu_min_s)
    r = {**rates(t, batch, ctx, task), "torch_threads": torch.get_num_threads()}
    log(f"throughput {task} cpu batch {batch}: {r['windows_per_s']:.2f} windows/s")
    return r


def speedup(rec: dict, job_batch: int) -> float | None:
    try:
        return round(rec["device"][f"batch_{job_batch}"]["windows_per_s"] / rec["cpu"]["windows_per_s"], 2)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def training_loop(ctx: Ctx) -> dict:
    """tupac.train.train on both networks, device vs CPU: patches/s and the training loss."""
    res: dict[str, Any] = {}
    p = ctx.plan
    runs = (("device", ctx.device, p.loop_epochs_device), ("cpu", "cpu", p.loop_epochs_cpu))
    guarded(res, "mitosis_patches", lambda: build_mitosis_patches(ctx), need_s=10, left=ctx.left)
    for key, dev, epochs in runs:  # tupac's mitosis training settings: batch 64, lr 2e-3
        guarded(res, f"mitosis_{key}",
                lambda d=dev, e=epochs: loop_run(ctx, "mitosnet", "mitosis", {}, ctx.mitosis_ds, d, e, 64, 2e-3),
                need_s=15, left=ctx.left)
    tumor_ds = tumor_patches(ctx)
    for key, dev, epochs in runs:  # tupac's tumor training settings: batch 32, lr 3e-3
        guarded(res, f"tumor_{key}",
                lambda d=dev, e=epochs: loop_run(ctx, "locnet", "tumor", p.tumor_kwargs, tumor_ds, d, e, 32, 3e-3),
                need_s=20, left=ctx.left)
    res["trained_weights_predict_windows"] = {}
    for task in ("mitosis", "tumor"):
        guarded(res["trained_weights_predict_windows"], task, lambda t=task: check_trained(ctx, t), need_s=5,
                left=ctx.left)
    res["patches_per_s_speedup"] = {t: loop_speedup(res, t) for t in ("mitosis", "tumor")}
    return res


def build_mitosis_patches(ctx: Ctx) -> dict:
    """Labelled 79 px patches made as train_mitosis makes them: stain-standardized phantom images,
    candidate nuclei, jittered positives, nuclei and background negatives; repeated up to the target size."""
    from tupac.data import Tupac16Dataset
    from tupac.mitosis.inference import read_image
    from tupac.mitosis.training import MitosisTrainConfig, image_patches, prepare_image
    from tupac.preprocess import stain
    from tupac.train import PatchDataset

    cfg = MitosisTrainConfig(seed=0)
    entries = list(Tupac16Dataset(ctx.cohort).mitosis_images)[: ctx.plan.loop_images]
    first = read_image(entries[0].path)
    stats = stain.fit_image(first, method=cfg.stain_method, seed=0, source=str(entries[0].path))
    reference = stain.StainReference(stats)
    patch = ctx.models["mitosis"]["cpu"].card.patch_size
    xs, ys = [], []
    for i, entry in enumerate(entries):
        ictx, rgb = prepare_image(entry, reference, cfg)
        x, y = image_patches(ictx, rgb, patch, cfg, np.random.default_rng([0, 1, i]))
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    reps = max(1, round(ctx.plan.loop_mitosis_patches / len(x)))
    ctx.mitosis_ds = PatchDataset(np.concatenate([x] * reps), np.concatenate([y] * reps))
    return {"images": len(entries), "distinct_patches": len(x), "positives": int(y.sum()), "repeats": reps,
            "patches": len(ctx.mitosis_ds), "patch_px": patch}


def tumor_patches(ctx: Ctx):
    """140 px crops of the real H&E fixture; label 1 for the darker half (a rule the network can learn)."""
    from tupac.train import PatchDataset

    patch = ctx.models["tumor"]["cpu"].card.patch_size
    x = make_windows(ctx.plan.loop_tumor_patches, patch, seed=4)
    darkness = -x.reshape(len(x), -1).mean(axis=1)
    y = (darkness > np.median(darkness)).astype(np.int64)
    return PatchDataset(x, y)


def loop_run(ctx: Ctx, name: str, task: str, kwargs: dict, ds, device: str, epochs: int, batch: int, lr: float) -> dict:
    import torch

    from tupac.models import create_model
    from tupac.train import TrainConfig, train

    require_device(device)
    torch.set_num_threads(os.cpu_count() or 1)
    model = create_model(name, task=task, seed=0, **kwargs)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, monitor="loss", device=device, seed=0)
    out = Path(tempfile.mkdtemp(prefix=f"loop-{task}-", dir=ctx.work))
    reset_peak(device)
    t0 = time.perf_counter()
    result = train(model, ds, None, cfg, out)
    wall = time.perf_counter() - t0
    secs = [h["epoch_seconds"] for h in result.history]
    losses = [h["train_loss"] for h in result.history]
    steady = float(np.median(secs[1:] if len(secs) > 1 else secs))
    shutil.rmtree(out, ignore_errors=True)
    rec = {"device": device, "model": name, "model_kwargs": kwargs, "patches": len(ds), "batch_size": batch, "lr": lr,
           "epochs": epochs, "amp_bf16": cfg.amp and device.startswith("cuda"),
           "channels_last": cfg.channels_last and device.startswith("cuda"),
           "deterministic": cfg.deterministic, "torch_threads": torch.get_num_threads(), "epoch_seconds": secs,
           "train_loss": losses, "patches_per_s": round(len(ds) / steady, 1),
           "loss_decreased": bool(losses[-1] < losses[0]),
           "wall_s": round(wall, 2), "peak_mib": peak_mib(device)}
    if device.startswith("cuda"):
        rec["flags_after"] = cudnn_flags()
    if device == "cpu":
        ctx.trained[task] = model
    log(f"loop {task} {device}: {rec['patches_per_s']} patches/s, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return rec


def check_trained(ctx: Ctx, task: str) -> dict:
    """predict_windows, device vs CPU, with the weights the CPU training loop learned (their
    probabilities spread further from 0.5 than a fresh network's)."""
    from tupac.heatmaps.engine import predict_windows

    if task not in ctx.trained:
        raise RuntimeError(f"no trained {task} network (its CPU training loop did not finish)")
    cpu = ctx.trained[task].to("cpu").eval()
    dev = copy.deepcopy(cpu).to(ctx.device).eval()
    n = ctx.geometry[task]["window_px"]
    px = make_windows(ctx.plan.correctness_batch, n, seed=5)
    ref, got = predict_windows(cpu, px, "cpu"), predict_windows(dev, px, ctx.device)
    res = {"windows": len(px), "window_px": n, **compare(ref, got, ctx.tol)}
    if ctx.device.startswith("cuda"):
        res["tf32_flipped"] = with_tf32_flipped(lambda: compare(ref, predict_windows(dev, px, ctx.device), ctx.tol))
    return res


def loop_speedup(res: dict, task: str) -> float | None:
    try:
        return round(res[f"{task}_device"]["patches_per_s"] / res[f"{task}_cpu"]["patches_per_s"], 2)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def training_entrypoints(ctx: Ctx) -> dict:
    """train_mitosis and train_tumor with the device in their train config; a CPU rerun when the device fails."""
    res: dict[str, Any] = {}
    for name, fn, need in (("train_mitosis", run_train_mitosis, 25), ("train_tumor", run_train_tumor, 20)):
        rec = res.setdefault(name, {})
        guarded(rec, ctx.device, lambda f=fn: f(ctx, ctx.device), need_s=need, left=ctx.left)
        if not rec[ctx.device]["ok"] and ctx.device != "cpu" and "skipped" not in rec[ctx.device]:
            guarded(rec, "cpu_rerun", lambda f=fn: f(ctx, "cpu"), need_s=need, left=ctx.left)
    return res


def _progress(msgs: list) -> Callable[[str], None]:
    def say(m: str) -> None:
        msgs.append(f"{time.perf_counter() - T0:.1f}s {m}")
        log(f"  {m}")

    return say


def _run_training(fn: Callable, ctx: Ctx, name: str, device: str, cfg) -> tuple[Any, dict]:
    """``fn(cohort, out, cfg, progress=...)`` (train_mitosis / train_tumor) in its own folder; the
    result and its record. On failure the progress so far is attached to the exception."""
    msgs: list[str] = []
    out = ctx.work / f"{name}_{device.replace(':', '_')}"
    try:
        r = fn(ctx.cohort, out, cfg, progress=_progress(msgs))
    except Exception as e:
        e.add_note(f"progress: {msgs}")
        raise
    return r, {"device": device, "progress": msgs, "chosen_stage": r.chosen_stage, "threshold": r.threshold,
               "stages": r.stages}


def run_train_mitosis(ctx: Ctx, device: str) -> dict:
    from tupac.mitosis.training import MitosisTrainConfig, train_mitosis

    require_device(device)
    cfg = MitosisTrainConfig(negatives_per_image=40, background_per_image=10, positive_copies=4, two_stage=False,
                             train={"epochs": 2, "batch_size": 64, "lr": 2e-3, "monitor": "auroc", "device": device})
    r, rec = _run_training(train_mitosis, ctx, "train_mitosis", device, cfg)
    return {**rec, "train_images": len(r.train_images), "val_images": len(r.val_images)}


def run_train_tumor(ctx: Ctx, device: str) -> dict:
    from tupac.tumor.training import TumorTrainConfig, train_tumor

    require_device(device)
    if not ctx.has_slides:
        raise RuntimeError("no phantom slides (the data section could not write SVS files)")
    cfg = TumorTrainConfig(model_kwargs={"widths": [8, 16, 24, 32, 64], "fc_width": 64}, positives_per_slide=24,
                           negatives_per_slide=24, two_stage=False,
                           train={"epochs": 2, "batch_size": 32, "lr": 3e-3, "monitor": "loss", "device": device})
    return _run_training(train_tumor, ctx, "train_tumor", device, cfg)[1]


# --- summary and main --------------------------------------------------------------------------------


#: Checks that inform but do not decide ``all_checks_pass``: TF32 flipped is not how the job runs, and the
#: tumor loop's labels are a stand-in rule on a handful of epochs.
DIAGNOSTIC = ("correctness.tf32_flipped", "training_loop.tumor_")


def collect(doc: Any, path: str, checks: list, errors: list) -> None:
    """Walk the result tree: every ``pass`` / ``loss_decreased`` is a check, every ``ok: False`` an error."""
    if not isinstance(doc, dict):
        return
    diagnostic = path.startswith(DIAGNOSTIC) or ".tf32_flipped" in path
    if "pass" in doc:
        checks.append({"check": path + ".max_abs_diff<tol", "pass": doc["pass"], "value": doc.get("max_abs_diff"),
                       "diagnostic": diagnostic})
    if "loss_decreased" in doc:
        checks.append({"check": path + ".loss_decreased", "pass": doc["loss_decreased"], "value": doc.get("train_loss"),
                       "diagnostic": diagnostic})
    if doc.get("ok") is False:
        errors.append({"at": path, "error": doc.get("error") or doc.get("skipped"), "where": doc.get("where")})
    for k, v in doc.items():
        collect(v, f"{path}.{k}" if path else k, checks, errors)


def summary(doc: dict) -> dict:
    checks: list = []
    errors: list = []
    collect({k: v for k, v in doc.items() if k != "summary"}, "", checks, errors)
    thr = doc.get("throughput", {})
    batch = f"batch_{thr.get('device_batch_compared')}"
    rates = {t: {"device_batch": thr.get("device_batch_compared"),
                 "device_windows_per_s": _get(thr, t, "device", batch, "windows_per_s"),
                 "cpu_windows_per_s": _get(thr, t, "cpu", "windows_per_s"),
                 "speedup": _get(thr, t, "speedup_device_vs_cpu_windows_per_s")} for t in ("tumor", "mitosis")}
    loop = doc.get("training_loop", {})
    train_rates = {t: {"device_patches_per_s": _get(loop, f"{t}_device", "patches_per_s"),
                       "cpu_patches_per_s": _get(loop, f"{t}_cpu", "patches_per_s"),
                       "speedup": _get(loop, "patches_per_s_speedup", t)} for t in ("mitosis", "tumor")}
    decisive = [c for c in checks if not c["diagnostic"]]
    return {"all_checks_pass": bool(decisive) and all(c["pass"] for c in decisive), "checks": checks, "errors": errors,
            "inference": rates, "training": train_rates, "wall_s": round(time.perf_counter() - T0, 1)}


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (or cuda:N) on the GPU machine; cpu for a smoke run")
    ap.add_argument("--quick", action="store_true", help="small windows, batches, data and timings (CPU smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    ap.add_argument("--tol", type=float, default=1e-3, help="max abs probability difference that passes")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget; later sections are skipped past it")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one, removed)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from tupac.infer.job import DEFAULT_BATCH

    plan = make_plan(args.quick, DEFAULT_BATCH)
    if args.budget_s is not None:
        plan = Plan(**{**asdict(plan), "budget_s": args.budget_s})
    work = args.work or Path(tempfile.mkdtemp(prefix="tupac-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args.device, plan, work, args.tol)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = job_tf32()  # what the job's GPU actors run with
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc: dict[str, Any] = {"meta": {"script": "benchmarks/gpu_check.py", "argv": sys.argv[1:], "device": args.device,
                                    "quick": args.quick, "tol": args.tol, "started": started}}
    sections = (("environment", environment, 0), ("data", data, 10), ("device", device_info, 0), ("models", models, 2),
                ("correctness", correctness, 10), ("throughput", throughput, 15), ("training_loop", training_loop, 20),
                ("training_entrypoints", training_entrypoints, 20))
    try:
        for name, fn, need in sections:
            log(f"section {name}")
            guarded(doc, name, lambda f=fn: f(ctx), need_s=need, left=ctx.left)
            save(doc, args.out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    doc["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["summary"] = summary(doc)
    save(doc, args.out)
    s = doc["summary"]
    log(f"checks: {sum(c['pass'] for c in s['checks'])}/{len(s['checks'])} pass (all decisive pass: "
        f"{s['all_checks_pass']}); errors: {len(s['errors'])}")
    for c in s["checks"]:
        tag = ("PASS" if c["pass"] else "FAIL") + (" (diagnostic)" if c["diagnostic"] else "")
        log(f"  {tag} {c['check']} = {c['value']}")
    for e in s["errors"]:
        log(f"  ERROR {e['at']}: {str(e['error'])[:240]} ({e['where']})")
    log(f"inference: {json.dumps(clean(s['inference']))}")
    log(f"training: {json.dumps(clean(s['training']))}")
    log(f"wrote {args.out} in {s['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
