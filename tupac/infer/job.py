"""Cohort inference on Ray: the driver of ``tupac infer`` and ``jobs/infer_cohort.py``.

Per slide, as a small state machine driven by ``ray.wait``::

    prepare (Ray task: tissue, stain statistics, empty store)      -> tumor windows
    tumor batches (model actors read + standardize + predict + store) -> tumor heatmap
    tumor_regions (Ray task: threshold inside tissue)             -> 40x mitosis windows
    mitosis batches (model actors)                                -> mitosis heatmap
    finalize (Ray task: detections CSV, then the commit record)   -> DONE in the ledger

Why this shape (see also :mod:`tupac.infer.actors`):

- Pixels never cross the object store: batches are window *coordinates*; the actors decode,
  standardize and predict, and write each window's cells as one Zarr chunk (one writer per
  chunk). The driver only sees counts and small arrays of window indices.
- Backpressure: at most ``inflight_per_actor`` batches wait at each actor and at most
  ``max_active_slides`` slides are open at once, so memory is bounded by batch size times
  actors whatever the cohort or slide size. Batches of earlier slides go first (a heap keyed by
  slide order), so slides finish - and become resumable - in order.
- Failures: every read happens in a Ray worker. A task that raises fails its slide with the
  error's one-line message; a worker that dies (segfault, node lost) is retried by Ray
  (``max_retries``); a model actor that dies is restarted by Ray (``max_restarts=-1``) while the
  driver re-queues its batches on the live actors, up to ``batch_retries`` times per batch, after
  which the slide fails ("the actor died N times on this batch": a crashing decoder). The ledger
  lives in the driver only (SQLite WAL wants one machine).
- Clusters that grow (issue 19): an autoscaler starts only the nodes that pending work asks for, so
  on an autoscaling or empty cluster (a ``CPU: 0`` head, GPU workers at ``min_workers: 0``) the
  actors are sized from the options and the cohort (:func:`plan_actors`), and their resource
  requests are the demand the autoscaler scales up for. While no actor is ready the driver says every
  :data:`WAIT_NOTE_S` what it asked for, what is up and what the autoscaler does, and fails the
  waiting slides after the placement timeout (``actor_timeout_s``). Actors placed later, on nodes
  that join, take work as soon as they answer their ping; a node that leaves is an actor death.
- Resume: the ledger's plan skips DONE slides whose input and model fingerprints match; a store
  that is already committed with the same fingerprints (driver killed between commit and ledger
  update) is adopted without recomputation.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tupac.config_check import option
from tupac.errors import ConfigError, HeatmapStoreError, ModelFileError, TupacError
from tupac.heatmaps.commit import (
    InputFingerprint,
    atomic_write_bytes,
    is_committed,
    models_fingerprint,
    move_aside,
    read_commit,
)
from tupac.heatmaps.device_windows import DECODE_DEVICES
from tupac.heatmaps.ledger import Ledger
from tupac.heatmaps.prepare import CardInfo
from tupac.heatmaps.store import detections_path, store_path, verify_committed
from tupac.infer.actors import ModelActor, WindowBatch, model_dirs, use_stain_lut
from tupac.infer.cluster import connect_ray
from tupac.infer.progress import CohortProgress
from tupac.infer.slide_task import call_safely, detection_params, finalize_slide, prepare_slide, tumor_regions
from tupac.runlock import run_lock
from tupac.slide.factory import BACKENDS

__all__ = ["JobConfig", "ActorPlan", "plan_actors", "run_job", "default_batch_size", "SUMMARY_FILE", "ACTORS_FILE"]

SUMMARY_FILE = "summary.json"
WAIT_NOTE_S = 20.0
"""Seconds between the lines that say what the job waits for while no model actor is ready."""
ACTORS_FILE = "actors.json"
DEFAULT_BATCH = 8
"""Windows per actor call on a GPU. A 10x tumor window is ~1.1k x 1.1k px (64 x 64 output cells), so
8 windows are ~10 Mpx per forward pass: enough to fill a GPU's SMs with LocNet's first layers
(utilization flattens above a few Mpx), while activations (32 x 10 Mpx x 4 B ~ 1.2 GB for the
first layer) stay well inside a 24 GB card, and decode time of one batch (~0.3 s on 2 cores)
hides behind the previous batch's compute."""

CPU_BATCH = 1
"""Windows per actor call on CPU. A CPU convolution is already efficient on one ~1k x 1k window
(measured on LocNet: 1 window 4.0k cells/s, 4 windows 4.2k cells/s on one thread), so a larger
batch buys nothing but memory (each window's first-layer activations are ~170 MB) and latency:
with one window per call the actor's second thread decodes and standardizes the next window while
torch runs this one, and a slide's windows spread over all actors."""


def default_batch_size(gpu: bool = True) -> int:
    """Windows per actor call: :data:`DEFAULT_BATCH` for GPU actors, :data:`CPU_BATCH` on CPU."""
    return DEFAULT_BATCH if gpu else CPU_BATCH


OUTPUT_OPTIONS = ("tissue_mpp", "tissue_max_hole_um2", "tissue_dilation_um", "tissue_min_object_um2", "tumor_chunk",
                  "mitosis_chunk", "gpu_tf32", "decode_device", "ood_max_z", "ood_margin")
"""JobConfig options that change a slide's outputs (masks, heatmap values or layout, the OOD verdict)."""


@dataclass(frozen=True)
class JobConfig:
    """Options of one cohort run (``tupac infer``'s options; ``tupac run``'s ``infer:`` section).

    Each field's description is its ``help`` (:func:`tupac.config_check.option`).
    """

    models: Path = option(help="Models folder with tumor/ (and mitosis/) from `tupac train`; without mitosis/ the "
                               "mitosis stage is skipped and the summary says so.")
    out: Path = option(help="Run folder: slides/<id>.zarr, <id>.mitoses.csv, ledger, summary.json.")
    address: str | None = option(None, help="Ray address (default: $RAY_ADDRESS, else a local Ray).")
    num_gpus_per_actor: float | None = option(
        None, help="GPUs per model actor, fractional allowed (default: 1 if the cluster has GPUs up, or has no "
                   "node up yet that could hold an actor (an autoscaling cluster at zero workers); else 0).")
    actors: int | None = option(None, help="Model actors (default: one per GPU share up, on CPU CPUs/2; on an "
                                           "autoscaling or empty cluster at least min(slides to compute, --max-actors)).")
    # The cap on what an empty or autoscaling cluster is asked for by default: each GPU actor is one GPU
    # node (or GPU) the autoscaler starts, paid for while the job runs, so the default stays modest;
    # actors beyond what the cluster's node types can hold simply wait, unplaced.
    max_actors: int = option(8, help="Actors asked of an autoscaling or empty cluster when --actors is not given "
                                     "(at most one per slide to compute).")
    cpus_per_actor: float = option(1.0, help="CPUs Ray reserves per actor (a GPU actor also decodes each batch on that many "
                                             "threads).")
    # The reservation and the threads differ on purpose: the default plan reserves one CPU per actor
    # and leaves the rest to the per-slide tasks (tissue, stain statistics, detections), which are
    # short and bursty, so an actor that ran one thread would leave half of a CPU node idle most of
    # the time. GPU actors keep max(1, int(cpus_per_actor)) threads (the GPU does the work). Fixed
    # per run, so a batch recomputed after a fault gives the same bytes.
    threads_per_actor: int | None = option(
        None, help="torch threads of a CPU actor (default: cluster CPUs / actors, at least 1).")
    batch_size: int | None = option(
        None, help="Windows (~1k x 1k px) per actor call (default: 8 on GPU, 1 on CPU).")
    max_attempts: int = option(3, help="Runs after which a failing slide is given up.")
    tissue_mpp: float = option(8.0, help="Tissue mask resolution (um/px).")
    # Issue 17's options of the tissue mask (tupac.preprocess.tissue.tissue_mask; figures in
    # benchmarks/results/tissue_mask.json): the defaults are the mask's own.
    tissue_max_hole_um2: float = option(20_000.0, help="Fill glass holes enclosed by tissue up to this area (um^2; "
                                                       "0 fills none, inf all).")
    tissue_dilation_um: float = option(0.0, help="Grow the tissue mask by this radius (um): more windows, no missed edge.")
    tissue_min_object_um2: float = option(20_000.0, help="Drop tissue pieces smaller than this area (um^2).")
    tumor_chunk: int = option(64, help="Tumor heatmap cells per window edge (and Zarr chunk edge).")
    mitosis_chunk: int = option(64, help="Mitosis heatmap cells per window edge (and Zarr chunk edge).")
    backend: str = option("auto", help="Slide reader: auto, openslide or cucim.")
    inflight_per_actor: int = option(3, help="Batches queued at one actor at most (2 run, one waits).")
    actor_concurrency: int = option(
        2, help="Batches an actor handles at once: 2 decodes one while the model runs another; 1 runs them one "
                "after another (CPU actors with one torch thread each, one per core: no thread competes with the model).")
    max_active_slides: int | None = option(None, help="Slides open at once (default: actors + 1).")
    batch_retries: int = option(2, help="Re-queues of a batch whose actor died, before the slide fails.")
    task_retries: int = option(2, help="Ray retries of a slide task whose worker died.")
    local_cpus: int | None = option(None, help="CPUs of a local Ray started here (default: all).")
    object_store_mb: int | None = option(None, help="Object store of a local Ray (MiB; default: Ray's).")
    include_dashboard: bool | None = option(None, help="Dashboard of a local Ray (default: Ray's).")
    local_temp_dir: str | None = option(
        None, help="Temp folder of a local Ray (keep it short: socket paths are limited to ~100 chars).")
    # The field keeps its name (run configs set it); the command line calls it --placement-timeout. 20 min
    # covers a cold GPU node on a cloud (VM boot, then a CUDA image pull: typically 3-10 min).
    actor_timeout_s: float = option(
        1200.0, help="Placement timeout (s): when no model actor has been ready for this long while slides wait "
                     "(nodes not started by the autoscaler, or lost and not replaced), the waiting slides fail.")
    # Off by default, so that a GPU run's heatmaps match a CPU run's: on an H200
    # (benchmarks/gpu_check.py), TF32 moved a trained MitosNet's probabilities by up to 2e-3 against
    # the CPU (1.4e-6 without it), enough to flip a detection at a card threshold near 1 (the
    # benchmark's is 0.998). On, LocNet ran 3x faster model-only (641 vs 217 windows of 1148 px per
    # second; MitosNet 2314 vs 1425).
    gpu_tf32: bool = option(
        False, help="TF32 convolutions on GPU actors: faster, but heatmaps then differ from a CPU run's by up to ~2e-3.")
    # Where windows are decoded (tupac.heatmaps.device_windows, which gives the H100 measurements):
    # the CPU path is the reference bytes; cuCIM's GPU path (nvJPEG) differs by JPEG rounding
    # (mean ~1.5 levels) on YCbCr-coded JPEG slides, is kept off slides it decodes wrongly, and was
    # slower than the CPU on an H100, so auto stays on the CPU for now.
    decode_device: str = option(
        "auto", help="Window decoding: cpu, cuda (cuCIM's GPU decoder, JPEG slides it decodes right; else CPU) "
                     "or auto (cpu for now); actors.json says which and why.")

    # The out-of-distribution check (tupac.features.ood): a warning, never a failure; its statistics are
    # measured in each slide's preparation and the verdict is kept in the commit record.
    ood_max_z: float = option(5.0, help="Out-of-distribution check: robust z-score (|x - median| / 1.4826 MAD of the "
                                        "training slides) above which a slide statistic may be flagged.")
    ood_margin: float = option(0.25, help="Out-of-distribution check: a flagged statistic must also lie outside the "
                                          "training range [q01, q99] widened by this fraction of its width on each side.")

    def output_params(self) -> dict[str, Any]:
        """The options that change what a slide's outputs hold, where they differ from their defaults.

        They are kept in each commit record (``extra["job_params"]``) and folded into the work
        fingerprint the ledger plans with, so a rerun with, say, another tissue dilation recomputes
        (and supersedes) the slides instead of skipping them as done. An option at its default adds
        nothing: runs made before the option existed keep their fingerprints.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in OUTPUT_OPTIONS}
        return {k: getattr(self, k) for k in OUTPUT_OPTIONS if getattr(self, k) != defaults[k]}

    def tissue_options(self) -> dict[str, float]:
        """Keyword arguments of :func:`tupac.preprocess.tissue.tissue_mask` set by this config."""
        return {"max_hole_um2": float(self.tissue_max_hole_um2), "dilation_um": float(self.tissue_dilation_um),
                "min_object_um2": float(self.tissue_min_object_um2)}

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", Path(self.models))
        object.__setattr__(self, "out", Path(self.out))
        checks = [
            (self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}"),
            (self.actors is None or self.actors >= 1, f"actors must be >= 1, got {self.actors}"),
            (self.max_actors >= 1, f"max_actors must be >= 1, got {self.max_actors}"),
            (self.num_gpus_per_actor is None or self.num_gpus_per_actor >= 0,
             f"num_gpus_per_actor must be >= 0, got {self.num_gpus_per_actor}"),
            (self.cpus_per_actor > 0, f"cpus_per_actor must be > 0, got {self.cpus_per_actor}"),
            (self.threads_per_actor is None or self.threads_per_actor >= 1,
             f"threads_per_actor must be >= 1, got {self.threads_per_actor}"),
            (self.tumor_chunk >= 1 and self.mitosis_chunk >= 1, "chunks must be >= 1 cell"),
            (self.ood_max_z > 0 and self.ood_margin >= 0,
             f"ood_max_z must be > 0 and ood_margin >= 0, got {self.ood_max_z}, {self.ood_margin}"),
            (self.inflight_per_actor >= 1, "inflight_per_actor must be >= 1"),
            (self.actor_concurrency in (1, 2), f"actor_concurrency must be 1 or 2, got {self.actor_concurrency}"),
            (self.tissue_mpp > 0, f"tissue_mpp={self.tissue_mpp!r}, expected > 0 um/px"),
            (min(self.tissue_max_hole_um2, self.tissue_dilation_um, self.tissue_min_object_um2) >= 0,
             "tissue_max_hole_um2, tissue_dilation_um and tissue_min_object_um2 must be >= 0"),
            (self.backend in BACKENDS, f"backend={self.backend!r}, expected one of {', '.join(BACKENDS)}"),
            (self.decode_device in DECODE_DEVICES,
             f"decode_device={self.decode_device!r}, expected one of {', '.join(DECODE_DEVICES)}"),
            (not (self.decode_device == "cuda" and self.backend == "openslide"),
             "decode_device='cuda' needs cuCIM, but backend='openslide' decodes on the CPU only"),
            (self.batch_retries >= 0, f"batch_retries={self.batch_retries!r}, expected >= 0"),
            (self.task_retries >= 0, f"task_retries={self.task_retries!r}, expected >= 0"),
            (self.max_active_slides is None or self.max_active_slides >= 1,
             f"max_active_slides={self.max_active_slides!r}, expected >= 1"),
            (self.local_cpus is None or self.local_cpus >= 1, f"local_cpus={self.local_cpus!r}, expected >= 1"),
            (self.object_store_mb is None or self.object_store_mb >= 1,
             f"object_store_mb={self.object_store_mb!r}, expected >= 1"),
            (self.actor_timeout_s > 0, f"actor_timeout_s={self.actor_timeout_s!r}, expected > 0 s"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


# -- per-slide state ------------------------------------------------------------------------
@dataclass
class _Slide:
    entry: Any
    seq: int
    input_fp: Any
    store: str
    stage: str = "prepare"
    plan: Any = None
    left: int = 0          # batches of the current stage not yet finished
    windows: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)


@dataclass
class _Actor:
    handle: Any
    state: str = "starting"  # starting | ready | down
    inflight: int = 0
    exclusive: bool = False  # running a suspect batch alone
    info: dict | None = None
    since: float = field(default_factory=time.monotonic)


def _reason(err: BaseException, stage: str, path: Any) -> str:
    """One line naming the file and the problem, from a Ray error."""
    import ray.exceptions as rex

    if isinstance(err, rex.RayTaskError):
        cause = getattr(err, "cause", None)
        if cause is not None and not isinstance(cause, rex.RayError):
            msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            return msg if isinstance(cause, TupacError) else f"{path}: {type(cause).__name__}: {msg}"
    if isinstance(err, rex.WorkerCrashedError):
        return f"{path}: the worker process died during {stage} (a crash in the slide reader, e.g. a segfault)"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{path}: {stage} failed: {type(err).__name__}: {first[:300]}"


class _Driver:
    """The event loop of one run (see the module docstring)."""

    def __init__(self, config: JobConfig, cards: dict, model_dirs: dict, ledger, progress,
                 say: Callable[[str], None], batch_size: int, plan: ActorPlan) -> None:
        import ray

        self.ray = ray
        self.cfg = config
        self.batch_size = batch_size
        self.cards = cards
        self.model_dirs = dict(model_dirs)
        self.ledger = ledger
        self.progress = progress
        self.say = say
        opts = {"max_retries": config.task_retries, "retry_exceptions": False}
        self._task = ray.remote(call_safely).options(num_cpus=1, **opts)
        self._steps = {"prepare": prepare_slide, "regions": tumor_regions, "finalize": finalize_slide}
        self.detection = detection_params(cards["mitosis"].card) if "mitosis" in cards else None
        self.cards_ref = ray.put(cards)
        self.slides: dict[str, _Slide] = {}
        self.queue: list = []  # heap of (slide seq, stage order, batch index, tie, slide_id, batch, tries)
        self.futures: dict = {}
        self.tie = itertools.count()
        self.actor_cls = ray.remote(ModelActor)
        self.actors: list[_Actor] = []
        self.outcomes: dict[str, str] = {}
        self.plan = plan
        self.no_actor_since: float | None = None  # since when work waits with no actor ready (monotonic s)
        self.next_note = 0.0  # when to print the next waiting line (monotonic s)
        self.ever_ready = False

    # -- actors -------------------------------------------------------------------------
    def actor_options(self) -> dict[str, Any]:
        """Ray options of every model actor: the plan's resources, which are also what an autoscaler
        sees as the pending actors' demand and starts nodes for; restarted without limit (a node that
        leaves takes its actor along, which Ray then places on a node that is up or joins).

        The demand is the actors' own, not ``ray.autoscaler.sdk.request_resources``: a request outlives
        the driver (a killed job would keep its GPU nodes up until someone clears it), while a pending
        actor's demand ends with the job."""
        return {"num_gpus": self.plan.gpus, "num_cpus": self.plan.cpus, "max_restarts": -1, "max_task_retries": 0,
                "max_concurrency": self.cfg.actor_concurrency}

    def start_actors(self) -> None:
        dirs = {t: str(c_dir) for t, c_dir in self.model_dirs.items()}
        num_gpus, threads = self.plan.gpus, self.plan.threads
        for _ in range(self.plan.n):
            h = self.actor_cls.options(**self.actor_options()).remote(
                dirs, threads, self.cfg.gpu_tf32, self.cfg.decode_device, self.cfg.backend,
                max(1, int(self.cfg.cpus_per_actor)) if num_gpus > 0 else 1)
            a = _Actor(h)
            self.actors.append(a)
            self._ping(len(self.actors) - 1)

    def _ping(self, i: int) -> None:
        self.futures[self.actors[i].handle.ready.remote()] = ("ping", i)

    def _write_actors(self) -> None:
        data = [dict(a.info or {}, index=i, state=a.state) for i, a in enumerate(self.actors)]
        atomic_write_bytes(self.cfg.out / ACTORS_FILE, json.dumps(data, indent=1).encode())

    # -- slides -------------------------------------------------------------------------
    def start_slide(self, entry, seq: int, input_fp) -> None:
        sid = entry.slide_id
        s = _Slide(entry, seq, input_fp, str(store_path(self.cfg.out, sid)))
        self.slides[sid] = s
        self.ledger.mark_running(sid)
        chunks = {"tumor": self.cfg.tumor_chunk, "mitosis": self.cfg.mitosis_chunk}
        self._submit("prepare", s, sid, str(entry.path), entry.mpp, s.store, self.cards_ref, chunks,
                     self.cfg.tissue_mpp, self.cfg.backend, self.cfg.tissue_options())

    def _submit(self, step: str, s: _Slide, *args) -> None:
        ref = self._task.remote(self._steps[step], str(s.entry.path), *args)
        self.futures[ref] = (step, s.entry.slide_id)

    def fail(self, sid: str, reason: str) -> None:
        s = self.slides.pop(sid, None)
        if s is None:
            return
        self.queue = [q for q in self.queue if q[4] != sid]
        heapq.heapify(self.queue)
        self.ledger.mark_failed(sid, reason)
        self.outcomes[sid] = reason
        self.progress.slide(sid, False, reason)

    def _enqueue(self, s: _Slide, task: str, windows: np.ndarray) -> None:
        plan = s.plan
        info = self.cards[task]
        # A stage with its own statistics (the mitosis stage's, measured on the tumor regions) uses them.
        stats = s.extra.get(f"{task}_stain_stats") or (plan.stats.get(info.stain_method) if info.stain_method else None)
        wins = [tuple(int(v) for v in rc) for rc in np.asarray(windows).reshape(-1, 2)]
        b = self.batch_size
        order = 0 if task == "tumor" else 1
        batches = [wins[i : i + b] for i in range(0, len(wins), b)]
        lut = use_stain_lut(len(wins), plan.geoms[task].window_px)
        for k, chunk in enumerate(batches):
            wb = WindowBatch(task, s.entry.slide_id, str(s.entry.path), s.entry.mpp, s.store, plan.geoms[task],
                             stats, tuple(chunk), plan.backend, k, lut)
            # (slide order, stage, batch, tie, slide, batch, deaths while alone, suspect)
            heapq.heappush(self.queue, (s.seq, order, k, next(self.tie), s.entry.slide_id, wb, 0, False))
        s.stage, s.left = task, len(batches)
        s.windows[task] = len(wins)
        self.progress.add_tiles(len(wins))
        if not batches:
            self._stage_done(s)

    def _stage_done(self, s: _Slide) -> None:
        sid = s.entry.slide_id
        if s.stage == "tumor" and "mitosis" in self.cards:
            s.stage = "regions"
            self._submit("regions", s, s.store, s.plan, self.cards["tumor"].threshold, str(s.entry.path), s.entry.mpp,
                         self.cards["mitosis"].stain_method)
            return
        s.stage = "finalize"
        mitosis_windows = s.extra.pop("_mitosis_windows", None) if "mitosis" in self.cards else None
        extra = {**s.extra, "windows": s.windows, "backend": s.plan.backend, "tissue_fraction": s.plan.tissue_fraction,
                 "job_params": self.cfg.output_params(),
                 "model_params": {t: c.output_params() for t, c in self.cards.items()},
                 "tumor_threshold": self.cards["tumor"].threshold,
                 # Committed like any slide (its empty heatmaps are its true result), but said so: the
                 # features stage gives it a flagged row of missing values instead of stopping.
                 "no_tissue": not len(s.plan.tumor_windows)}
        timings = {**s.timings, "prepare_s": s.plan.seconds, **s.plan.steps_s}
        if "mitosis" in self.cards and mitosis_windows is None:
            mitosis_windows = np.zeros((0, 2), np.int64)
        self._submit("finalize", s, sid, str(s.entry.path), s.store, s.plan, self.cards_ref, s.input_fp,
                     mitosis_windows, timings, extra, self.detection or {},
                     {"max_z": self.cfg.ood_max_z, "margin": self.cfg.ood_margin})

    # -- dispatch -----------------------------------------------------------------------
    def dispatch(self) -> None:
        """Send queued batches to ready actors, at most ``inflight_per_actor`` each. A *suspect*
        batch (in flight when an actor died) runs alone on an idle actor, so that a batch that
        crashes its actor is identified and the others are not blamed."""
        limit = self.cfg.inflight_per_actor
        while self.queue:
            ready = [i for i, a in enumerate(self.actors) if a.state == "ready" and not a.exclusive]
            if not ready:
                return
            item = self.queue[0]
            if item[4] not in self.slides:
                heapq.heappop(self.queue)
                continue
            suspect = item[7]
            if suspect:
                idle = [i for i in ready if self.actors[i].inflight == 0]
                if not idle:
                    return
                i = idle[0]
            else:
                i = min(ready, key=lambda k: self.actors[k].inflight)
                if self.actors[i].inflight >= limit:
                    return
            heapq.heappop(self.queue)
            a = self.actors[i]
            a.inflight += 1
            a.exclusive = suspect
            self.futures[a.handle.run.remote(item[5])] = ("batch", item[4], i, item)

    # -- results ------------------------------------------------------------------------
    def handle(self, ref) -> None:
        kind, *rest = self.futures.pop(ref)
        ray = self.ray
        try:
            value = ray.get(ref)
            err = None
        except ray.exceptions.RayError as e:
            value, err = None, e
        if kind == "ping":
            self._on_ping(rest[0], value, err)
        elif kind == "batch":
            self._on_batch(*rest, value, err)
        else:
            self._on_task(kind, rest[0], value, err)

    def _on_ping(self, i: int, value, err) -> None:
        a = self.actors[i]
        if err is None:
            if str(value.get("decode_reason", "")).startswith("FALLBACK") and a.info is None:
                self.say(f"[yellow]model actor {i}: {value['decode_reason']}[/]")
            first = a.info is None
            a.state, a.info, a.inflight, a.exclusive = "ready", value, 0, False
            self.ever_ready = True
            if first and self.plan.elastic:  # on a cluster that grows, say where each actor came up
                up = sum(b.state == "ready" for b in self.actors)
                self.say(f"model actor {i} ready on node {value.get('node_id', '?')} ({up} of {len(self.actors)} ready)")
            self._write_actors()
        else:
            # Still restarting (or its node is gone): ask again; Ray restarts it when it can.
            a.state = "down"
            time.sleep(0.05)
            self._ping(i)

    def _on_batch(self, sid: str, i: int, item: tuple, value, err) -> None:
        a = self.actors[i]
        a.inflight = max(0, a.inflight - 1)
        alone = a.exclusive
        a.exclusive = False
        s = self.slides.get(sid)
        if err is None:
            if s is None:
                return  # the slide failed meanwhile
            if "error" in value:
                self.fail(sid, value["error"])
                return
            task = item[5].task
            for step, dt in value["steps_s"].items():
                key = f"{task}_{step}"  # e.g. mitosis_decode_s: summed over the slide's batches
                s.timings[key] = s.timings.get(key, 0.0) + dt
            self.progress.tiles(value["windows"])
            s.left -= 1
            if s.left == 0:
                self._stage_done(s)
            return
        # The actor died (crash, kill, node lost): Ray restarts it; its batches are re-queued.
        if a.state != "down":
            a.state = "down"
            a.inflight = 0
            self.say(f"[yellow]model actor {i} died ({type(err).__name__}); re-queuing its batches[/]")
            self._ping(i)
        if s is None:
            return
        seq, order, k, tie, _, wb, deaths, _suspect = item
        deaths += alone  # only a batch that ran alone is known to have caused the death
        if deaths > self.cfg.batch_retries:
            self.fail(sid, f"{wb.path}: the model actor died {deaths} times while handling {wb.task} batch {k} alone "
                           f"(windows {list(wb.windows)[:3]}): a crash while reading or predicting this slide")
            return
        heapq.heappush(self.queue, (seq, order, k, tie, sid, wb, deaths, True))

    def _on_task(self, kind: str, sid: str, value, err) -> None:
        s = self.slides.get(sid)
        if s is None:
            return
        if err is None and value[0] == "error":
            self.fail(sid, value[1])
            return
        if err is not None:
            self.fail(sid, _reason(err, kind, s.entry.path))
            return
        value = value[1]
        if kind == "prepare":
            s.plan = value
            self._enqueue(s, "tumor", value.tumor_windows)
        elif kind == "regions":
            s.extra["tumor_area_mm2"] = value["tumor_area_mm2"]
            s.timings["regions_s"] = value["seconds"]
            s.extra["_mitosis_windows"] = value["windows"]
            if value.get("stats") is not None:
                # Kept in the commit record: the features stage standardizes its mitosis patches the same way.
                s.extra["mitosis_stain_stats"] = value["stats"]
            self._enqueue(s, "mitosis", value["windows"])
        elif kind == "finalize":
            self.slides.pop(sid)
            self.ledger.mark_done(sid)
            self.outcomes[sid] = "DONE"
            w = s.windows
            det = "" if value["mitoses"] is None else f", {value['mitoses']} mitoses"
            self.progress.slide(sid, True, f"{w.get('tumor', 0)} tumor + {w.get('mitosis', 0)} mitosis windows"
                                           f"{det} in {time.perf_counter() - s.t0:.1f} s")

    # -- loop ---------------------------------------------------------------------------
    def run(self, todo: Sequence[tuple[Any, Any]]) -> None:
        pending = deque(todo)
        seq = itertools.count()
        n_actors = len(self.actors)
        max_active = self.cfg.max_active_slides or n_actors + 1
        while pending or self.slides:
            while pending and len(self.slides) < max_active:
                entry, fp = pending.popleft()
                self.start_slide(entry, next(seq), fp)
            self.dispatch()
            self._check_actors(pending)
            if not self.futures:
                time.sleep(0.05)  # nothing in flight (all work waits on actors): do not spin
                continue
            done, _ = self.ray.wait(list(self.futures), num_returns=1, timeout=1.0)
            if done:
                more, _ = self.ray.wait(list(self.futures), num_returns=len(self.futures), timeout=0)
                for ref in dict.fromkeys([*done, *more]):
                    self.handle(ref)
            else:
                self.progress.tiles(0)

    def _check_actors(self, pending) -> None:
        """Say what the job waits for while no model actor is ready, and fail the waiting slides after
        ``actor_timeout_s`` (the placement timeout).

        Work waits on the actors when batches are queued, or, before any actor was ever ready, when slides
        are open: on an empty cluster the slides' own tasks wait for the same nodes as the actors.
        """
        if any(a.state == "ready" for a in self.actors):
            self.no_actor_since = None
            return
        if not (self.queue or (not self.ever_ready and self.slides)):
            self.no_actor_since = None
            return
        now = time.monotonic()
        if self.no_actor_since is None:
            self.no_actor_since = now
            # A plan that knows it waits for nodes says so at once; otherwise actors loading their models
            # (seconds) or restarting after a crash are normal, and only a long wait is worth a line.
            self.next_note = now if self.plan.waits else now + WAIT_NOTE_S
        if now >= self.next_note:
            self.next_note = now + WAIT_NOTE_S
            self.say(f"waiting for {self.plan.describe()}: 0 ready after {now - self.no_actor_since:.0f} s; "
                     f"{self._cluster_line()} (--placement-timeout {self.cfg.actor_timeout_s:g} s)")
        if now - self.no_actor_since > self.cfg.actor_timeout_s:
            reason = (f"no model actor was ready for {self.cfg.actor_timeout_s:g} s (asked for {self.plan.describe()}; "
                      f"{self._cluster_line()}): add nodes that can hold them, lower --num-gpus-per-actor or "
                      "--cpus-per-actor, or raise --placement-timeout")
            for sid in list(self.slides):
                self.fail(sid, f"{self.slides[sid].entry.path}: {reason}")
            while pending:
                entry, _ = pending.popleft()
                self.ledger.mark_running(entry.slide_id)
                self.ledger.mark_failed(entry.slide_id, f"{entry.path}: {reason}")
                self.outcomes[entry.slide_id] = reason

    def _cluster_line(self) -> str:
        """``"cluster up: 0 GPU, 0 CPU; autoscaler: launching 2 x gpu_worker"`` (best-effort)."""
        try:
            res = self.ray.cluster_resources()
        except Exception:  # noqa: BLE001 - a status line must never stop the job
            res = {}
        return (f"cluster up: {float(res.get('GPU', 0)):g} GPU, {float(res.get('CPU', 0)):g} CPU; "
                f"autoscaler: {_autoscaler_line(_autoscaler_status(self.ray))}")

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a.handle, no_restart=True)
            except Exception:
                pass


def _init_ray(cfg: JobConfig):
    """Connect to the given Ray (or start a local one); returns (started_here, dashboard_url)."""
    return connect_ray(cfg.address, log_dir=cfg.out / "logs", local_cpus=cfg.local_cpus,
                       object_store_mb=cfg.object_store_mb, include_dashboard=cfg.include_dashboard,
                       temp_dir=cfg.local_temp_dir)


@dataclass(frozen=True)
class ActorPlan:
    """The model actors one run asks Ray for (:func:`plan_actors`).

    Attributes
    ----------
    n : int
        Actors started (some may wait for nodes: see ``waits``).
    gpus : float
        GPUs each actor asks for (0: a CPU actor).
    cpus : float
        CPUs each actor asks for (``JobConfig.cpus_per_actor``).
    threads : int
        Torch threads of each actor (fixed per run, so a recomputed batch gives the same bytes).
    waits : bool
        No node up can hold one actor yet: the job waits for the autoscaler (or for nodes to join).
    elastic : bool
        Sized from the job, not from what is up (an autoscaler runs, or nothing was up): actors come up
        as nodes join, and the driver says so for each.
    notes : tuple of str
        Assumptions the plan made, one line each, for the user (how to override them).
    """

    n: int
    gpus: float
    cpus: float
    threads: int
    waits: bool = False
    elastic: bool = False
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """``"2 model actor(s) (1 GPU, 1 CPU each)"``."""
        return f"{self.n} model actor(s) ({self.gpus:g} GPU, {self.cpus:g} CPU each)"


def plan_actors(cfg: JobConfig, resources: dict[str, float], n_slides: int, autoscaler: bool = False) -> ActorPlan:
    """How many model actors, with which resources, from the options, the cohort and the cluster.

    On a fixed cluster the defaults follow what is up (one actor per GPU share; on CPUs, one per two
    CPUs), as on a local machine. A cluster that can grow is sized from the job instead: an autoscaler
    only starts the nodes that pending actors ask for, so sizing from what happens to be up would never
    ask for more (and at zero workers there is nothing up). There, unless ``--actors`` says, the job asks
    for min(slides to compute, ``--max-actors``) actors, or more when more GPU shares are already up;
    actors beyond what the node types can hold wait unplaced. When nothing up can hold an actor (no CPU
    up, e.g. a ``CPU: 0`` head whose GPU workers are at ``min_workers: 0``), the actors are GPU actors
    unless ``--num-gpus-per-actor`` says otherwise.

    Parameters
    ----------
    cfg : JobConfig
    resources : dict of str to float
        ``ray.cluster_resources()``: what is up now (``CPU``, ``GPU`` in units, absent when none).
    n_slides : int
        Slides this run computes.
    autoscaler : bool
        The cluster has an autoscaler (it may start nodes that are not up yet).

    Returns
    -------
    ActorPlan

    Raises
    ------
    ConfigError
        ``decode_device='cuda'`` with CPU actors; or, on a fixed cluster with CPUs up, actors that
        reserve every CPU (the per-slide tasks need at least one).
    """
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    empty = cpus < cfg.cpus_per_actor  # no node up could hold even a CPU actor
    notes = []
    if cfg.num_gpus_per_actor is not None:
        per = float(cfg.num_gpus_per_actor)
    elif gpus >= 1:
        per = 1.0
    elif empty:
        per = 1.0
        notes.append("no node that could hold a model actor is up yet: asking for GPU actors, 1 GPU each "
                     "(--num-gpus-per-actor 0 for CPU actors)")
    else:
        per = 0.0
        if autoscaler:
            notes.append("no GPU is up: the model actors run on CPUs (--num-gpus-per-actor 1 asks the autoscaler "
                         "for GPU nodes)")
    if cfg.decode_device == "cuda" and per == 0:
        raise ConfigError(f"decode_device='cuda' needs GPU actors, but they get none (the cluster has {gpus:g} GPUs, "
                          f"num_gpus_per_actor={cfg.num_gpus_per_actor}); use --decode-device auto or cpu")
    # What is up holds this many; 0 when nothing up fits one actor.
    fits = int(gpus // per) if per > 0 else int(cpus // (2 * cfg.cpus_per_actor))
    wanted = max(1, min(n_slides, cfg.max_actors))
    if cfg.actors is not None:
        n = cfg.actors
    elif autoscaler or empty:
        n = max(fits, wanted)
        if fits < n:
            notes.append(f"asking for {n} actor(s) (min of {n_slides} slide(s) and --max-actors {cfg.max_actors}); "
                         "--actors sets the number")
    else:
        n = max(1, fits)
    # The per-slide tasks' CPU: checked where the cluster is what it is; an autoscaler adds nodes
    # (their CPUs) with the actors, and with no CPU up there is nothing to check yet.
    if not autoscaler and cpus > 0 and cpus - n * cfg.cpus_per_actor < 1:
        raise ConfigError(
            f"{n} actor(s) x {cfg.cpus_per_actor:g} CPU reserve all {cpus:g} CPUs of the cluster; the per-slide tasks "
            "need at least 1 CPU left (lower --actors or --cpus-per-actor)"
        )
    threads = cfg.threads_per_actor or (max(1, int(cfg.cpus_per_actor)) if per > 0 else max(1, int(cpus // n)))
    return ActorPlan(n, per, float(cfg.cpus_per_actor), threads, waits=empty or gpus < per,
                     elastic=autoscaler or empty, notes=tuple(notes))


AUTOSCALING_STATUS_KEY = "__autoscaling_status"
"""Where Ray's autoscaler (v1, the monitor on the head) keeps its status, as JSON in the internal KV:
``autoscaler_report`` holds ``active_nodes``, ``pending_launches`` (node type -> count), ``pending_nodes``
and ``failed_nodes``. A cluster without an autoscaling config (``ray start``, ``ray.init``) has a
read-only monitor that writes the same report with one anonymous type per node, ``node_<node id>``."""

_READONLY_TYPE = re.compile(r"node_[0-9a-f]+")


def _autoscaler_status(ray) -> dict | None:
    """The autoscaler's report (see :data:`AUTOSCALING_STATUS_KEY`), or None: no autoscaler (a read-only
    monitor's report), no report yet, or not readable.

    Best-effort: a Ray-internal key (Ray client connections and autoscaler v2 may not have it), used only
    to size the plan and to say what the autoscaler is doing while the job waits.
    """
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(AUTOSCALING_STATUS_KEY)
        report = json.loads(raw).get("autoscaler_report") if raw else None
    except Exception:  # noqa: BLE001 - a status line must never stop the job
        return None
    if not isinstance(report, dict):
        return None
    # An autoscaling cluster's head has a configured type (ray.head.default, KubeRay's headgroup, ...).
    types = [*(report.get("active_nodes") or {}), *(report.get("pending_launches") or {})]
    return report if any(not _READONLY_TYPE.fullmatch(str(t)) for t in types) else None


def _autoscaler_line(report: dict | None) -> str:
    """``"launching 2 x gpu_worker; up 1 x ray.head.default"`` from an autoscaler report."""
    if report is None:
        return "none seen (nodes must be started by hand or the cluster's autoscaler)"
    parts = []
    for verb, counts in (("launching", report.get("pending_launches") or {}),
                         ("starting", _count(n[1] for n in report.get("pending_nodes") or [] if len(n) > 1)),
                         ("failed", _count(n[1] for n in report.get("failed_nodes") or [] if len(n) > 1)),
                         ("up", report.get("active_nodes") or {})):
        if counts:
            parts.append(f"{verb} " + ", ".join(f"{v} x {k}" for k, v in sorted(counts.items())))
    return "; ".join(parts) or "idle"


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in items:
        out[str(k)] = out.get(str(k), 0) + 1
    return out


def _actor_plan(cfg: JobConfig, n_slides: int) -> ActorPlan:
    """:func:`plan_actors` on the connected Ray's resources and autoscaler."""
    import ray

    return plan_actors(cfg, ray.cluster_resources(), n_slides, autoscaler=_autoscaler_status(ray) is not None)


def supersede_stale_outputs(run_dir: Path, slide_id: str) -> Path | None:
    """Move a slide's committed outputs that are about to be recomputed out of ``RUN/slides``.

    A slide is recomputed when its committed outputs came from another input file or other models
    (the user retrained, or replaced the slide). Its old store and detections are kept, not
    overwritten: they move to ``RUN/superseded/<UTC time>/`` (one rename each, atomic on one file
    system), so the new run starts clean and nothing already written is lost. Uncommitted
    leftovers (a crash mid-slide) are not results; the slide task replaces them as before.

    Returns
    -------
    Path or None
        The folder the outputs moved to; None when there was no committed store.
    """
    store = store_path(run_dir, slide_id)
    if not is_committed(store):
        return None
    return move_aside([store, detections_path(store)], run_dir)


def run_job(entries: Sequence[Any], cfg: JobConfig, progress=None, say: Callable[[str], None] | None = None) -> dict:
    """Run cohort inference on the given Ray; returns the summary (also in ``RUN/summary.json``).

    Parameters
    ----------
    entries : sequence of ManifestEntry
        The cohort (:func:`tupac.data.manifest.load_cohort`).
    cfg : JobConfig
    progress : callable ``(n_slides) -> CohortProgress``, optional
        Builds the display once the plan knows how many slides run (default: rich on stderr).
    say : callable, optional
        Where to print notes (default: the progress console).

    Returns
    -------
    dict
        :meth:`tupac.heatmaps.ledger.Ledger.summary` plus ``skipped_stages``, ``actors``,
        ``throughput``, ``dashboard``.

    Raises
    ------
    ModelFileError
        ``MODELS/tumor`` is missing or unreadable.
    RunFolderBusyError
        Another job holds ``RUN`` (:func:`tupac.runlock.run_lock`); nothing in it was touched.
    """
    with run_lock(cfg.out, "tupac infer"):
        return _run_job_locked(entries, cfg, progress, say)


def _run_job_locked(entries: Sequence[Any], cfg: JobConfig, progress, say) -> dict:
    found, skipped = model_dirs(cfg.models)
    if "tumor" not in found:
        raise ModelFileError(cfg.models / "tumor", skipped["tumor"].split(" (")[0] + "; the job needs at least the tumor model")
    cards = {t: CardInfo.from_dir(t, d) for t, d in found.items()}
    models = {f"{t}:{c.card.name}": c.weights_sha256 for t, c in cards.items()}
    params = cfg.output_params()
    model_params = {t: c.output_params() for t, c in cards.items()}
    # The ledger plans with the models, their cards' output parameters (CardInfo.output_params) and
    # the output options (JobConfig.output_params) together: a change in any of them is new work.
    mfp = models_fingerprint({**models, **{f"job:{k}": json.dumps(v) for k, v in params.items()},
                              **{f"card:{t}": json.dumps(v, sort_keys=True) for t, v in model_params.items()}})
    cfg.out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(cfg.out)
    try:
        fps = {e.slide_id: ledger.input_fingerprint(e.path) for e in entries}

        distrusted: dict[str, str] = {}

        # Asked by the ledger's plan and again for each slide to run: verify each store once.
        @functools.cache
        def committed_ok(sid: str) -> bool:
            path = store_path(cfg.out, sid)
            try:
                rec = read_commit(path)
            except Exception:
                return False
            if rec.input.key != fps[sid] or rec.models_fp != models_fingerprint(models) \
                    or rec.extra.get("job_params", {}) != params or rec.extra.get("model_params") != model_params:
                return False
            # Never adopt a store whose chunks are not the ones its record vouches for.
            problem = verify_committed(path)
            if problem:
                distrusted[sid] = problem
            return problem is None

        plan = ledger.plan([(e.slide_id, e.path, fps[e.slide_id]) for e in entries], mfp, cfg.max_attempts, committed_ok)
        by_id = {e.slide_id: e for e in entries}
        todo, superseded = [], []
        for sid in plan.to_run:
            e = by_id[sid]
            if committed_ok(sid):
                ledger.mark_done(sid)  # committed before the driver stopped; nothing to recompute
            elif fps[sid] is None:
                ledger.mark_running(sid)
                ledger.mark_failed(sid, f"{e.path}: no such file (or not readable)")
            else:
                moved = supersede_stale_outputs(cfg.out, sid)
                if moved is not None:
                    why = distrusted.get(sid) or "committed with other inputs or models"
                    superseded.append(f"{sid}: {why}; moved to {moved}")
                _, sha, size = fps[sid].split(":")
                todo.append((e, InputFingerprint(int(size), sha)))
        progress = (progress or CohortProgress)(len(todo))
        say = say or progress.say
        for line in superseded:
            say(f"[yellow]superseded[/] {line}")
        for task, why in skipped.items():
            say(f"[yellow]{task} stage skipped:[/] {why}")
        say(f"cohort: {len(entries)} slides, {len(todo)} to compute, {len(plan.skipped_done)} already done, "
            f"{len(plan.given_up)} given up after {cfg.max_attempts} attempts")
        info: dict[str, Any] = {"skipped_stages": skipped, "actors": [], "dashboard": None, "throughput": {},
                                "superseded": superseded}
        if todo:
            info.update(_run_on_ray(cfg, cards, found, ledger, todo, progress, say))
        summary = {**ledger.summary(), **info}
        summary["no_tissue"] = _no_tissue(cfg.out, summary["done"])
        summary["ood"] = _ood_slides(cfg.out, summary["done"])
        atomic_write_bytes(cfg.out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str).encode())
        return summary
    finally:
        ledger.close()


def _no_tissue(run_dir: Path, done: Sequence[str]) -> list[str]:
    """The DONE slides whose commit record says the job found no tissue on them."""
    out = []
    for sid in done:
        try:
            if read_commit(store_path(run_dir, sid)).extra.get("no_tissue"):
                out.append(sid)
        except (HeatmapStoreError, ValueError):  # a record gone since the ledger said DONE: not ours to judge here
            continue
    return out


def _ood_slides(run_dir: Path, done: Sequence[str]) -> list[dict[str, str]]:
    """The DONE slides the out-of-distribution check flagged (commit record ``extra["ood"]``), with
    their reasons: ``[{"slide_id", "reasons"}]`` (:mod:`tupac.features.ood`)."""
    out = []
    for sid in done:
        try:
            verdict = read_commit(store_path(run_dir, sid)).extra.get("ood") or {}
        except (HeatmapStoreError, ValueError):  # as _no_tissue: not ours to judge here
            continue
        if verdict.get("ood"):
            out.append({"slide_id": sid, "reasons": "; ".join(verdict.get("reasons") or [])})
    return out


def _run_on_ray(cfg, cards, found, ledger, todo, progress, say) -> dict:
    import ray

    started, url = _init_ray(cfg)
    driver = None
    try:
        if url:
            say(f"Ray dashboard: {url if url.startswith('http') else 'http://' + url}")
        plan = _actor_plan(cfg, len(todo))
        batch = cfg.batch_size or default_batch_size(gpu=plan.gpus > 0)
        for note in plan.notes:
            say(f"[yellow]note:[/] {note}")
        say(f"{plan.n} model actor(s), {plan.gpus:g} GPU, {plan.cpus:g} CPU and {plan.threads} torch thread(s) each, "
            f"batches of {batch} windows")
        driver = _Driver(cfg, cards, found, ledger, progress, say, batch, plan)
        driver.start_actors()
        with progress:
            driver.run(todo)
        return {
            "actors": [a.info for a in driver.actors if a.info],
            "dashboard": url,
            "throughput": {**progress.rates(), "tiles": progress.tiles_done},
        }
    finally:
        if driver is not None:
            driver.shutdown()
        if started:
            ray.shutdown()
