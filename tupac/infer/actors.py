"""The model actor of cohort inference: loads the stage models once, then reads, standardizes,
predicts and stores one batch of windows per call.

Why actors that read their own pixels (and not Ray Data over decoded tiles):

- A batch crosses the object store as *coordinates* (slide path, window indices, the slide's
  stain statistics: a few kB). The actor decodes the windows through :mod:`tupac.slide`,
  standardizes them with the slide's statistics towards the model's training template, runs the
  model and writes each window's cells as one Zarr chunk. Decoded pixels exist only inside the
  actor, one batch at a time, so neither the object store nor any process ever holds a slide's
  pixels; an object-store-backed pipeline (Ray Data ``read -> map_batches``) would ship every
  decoded tile through plasma, 3 bytes per pixel, which for 40x windows is hundreds of times the
  size of the result.
- The heatmap geometry is per slide and the stages depend on each other (mitosis windows come
  from the tumor regions), which a static Ray Data plan expresses poorly; the driver
  (:mod:`tupac.infer.job`) feeds the actors with bounded in-flight queues and ``ray.wait``.
- One actor holds *both* stage models (LocNet ~1.4 M and MitosNet ~45 k parameters: a few MB of
  GPU memory), so an actor is "one GPU's worth of work": tumor and mitosis batches interleave on
  every GPU, and ``--num-gpus-per-actor 1`` on a node with 8 GPUs gives 8 actors each pinned to
  its own device by Ray (``CUDA_VISIBLE_DEVICES``). Two pools (one per model) would idle one
  pool's GPUs whenever the cohort's work is mostly of the other kind.
- ``max_concurrency=2`` (set by the job): while one thread runs the model, the other decodes
  the next batch (OpenSlide and torch release the GIL). Model calls are serialized by a lock so
  results do not depend on thread interleaving.

Every window of a slide is computed in a batch whose composition depends only on the slide and
the batch size, so a batch rerun after a crash writes the same bytes (bitwise on CPU).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tupac.heatmaps.device_windows import DeviceWindows, choose_decode_device, device_standardizer, lut_tensor
from tupac.heatmaps.engine import SlideWindows, WindowPredictor, own_cells, standardize, standardizer
from tupac.heatmaps.store import HeatmapStore
from tupac.infer.slide_task import error_line, maybe_inject_fault
from tupac.preprocess import stain
from tupac.preprocess.stain.base import N_COLORS
from tupac.slide import open_slide
from tupac.slide.cucim_backend import cuda_decode_problem

__all__ = ["BATCH_STEPS", "WindowBatch", "ModelActor", "device_info", "step_seconds", "use_stain_lut"]

@dataclass(frozen=True)
class WindowBatch:
    """One call's work: windows of one slide for one stage, as coordinates only.

    Attributes
    ----------
    task : {"tumor", "mitosis"}
        Which model runs.
    slide_id : str
    path : str
        The slide file (readable from every node: shared storage).
    mpp_override : float or None
        Level-0 µm/px for slides without MPP metadata.
    store : str
        The slide's heatmap store (``RUN/slides/<id>.zarr``).
    geom : HeatmapGeometry
        The model's heatmap geometry over this slide.
    stats : dict or None
        The slide's stain statistics (``SlideStainStats.to_dict()``) for the model's method;
        None to feed raw pixels (model trained without standardization, or no tissue to fit).
    windows : tuple of (int, int)
        Window (chunk) indices, in raster order.
    backend : str
        Slide reader backend ("auto", "openslide", "cucim").
    index : int
        Position of this batch in the slide's stage (for logs and retries).
    stain_lut : bool
        Standardize through the slide's lookup table (built once per slide in the actor) rather
        than per pixel: the driver sets it when the slide's stage decodes more pixels than the
        table has entries (:func:`use_stain_lut`). Both give the same bytes.
    """

    task: str
    slide_id: str
    path: str
    mpp_override: float | None
    store: str
    geom: Any
    stats: dict | None
    windows: tuple[tuple[int, int], ...]
    backend: str = "auto"
    index: int = 0
    stain_lut: bool = False


def use_stain_lut(n_windows: int, window_px: int) -> bool:
    """Whether a slide's stage should standardize through a lookup table.

    Building the table evaluates the transform once on each of the 2**24 colors, the cost of
    transforming 2**24 pixels directly; after that a pixel is a table lookup (~20x cheaper). So
    the table pays as soon as the stage decodes more pixels than that: always at 40x on a real
    slide (a 1 cm² tumor region is 1.6 Gpx), rarely at 10x on a small one. A per-window decision
    (the stain module's default) never builds it, as a ~1k x 1k window is below the table's size.

    Parameters
    ----------
    n_windows : int
        Windows of the slide in this stage.
    window_px : int
        Window edge (pixels at the model's resolution).
    """
    return n_windows * window_px * window_px >= N_COLORS


BATCH_STEPS = ("decode_s", "standardize_s", "model_wait_s", "model_s", "write_s")
"""The steps of one batch, timed by the actor: decode (slide reader, at the model's resolution),
stain standardization, waiting for the model (the other thread's batch holds it), the model
itself, and writing the cells to Zarr."""


def step_seconds(t0: float, t1: float, t2: float, t_lock: float, t3: float, t4: float) -> dict[str, float]:
    """Durations of :data:`BATCH_STEPS` from the ``time.perf_counter()`` stamps taken between them."""
    return dict(zip(BATCH_STEPS, (t1 - t0, t2 - t1, t_lock - t2, t3 - t_lock, t4 - t3)))


def device_info(device: str) -> dict[str, Any]:
    """Where this process runs: host, PID, parent (the raylet), Ray node and GPU ids, device."""
    # Deferred: ray is heavy and this module is imported by the driver before Ray starts.
    import ray

    ctx = ray.get_runtime_context()
    try:
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # outside a Ray worker
        gpu_ids = []
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "raylet_pid": os.getppid(),
        "node_id": ctx.get_node_id(),
        "actor_id": ctx.get_actor_id(),
        "gpu_ids": gpu_ids,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": device,
    }


class _LRU(OrderedDict):
    """A tiny LRU of open handles (slide readers, stores); evicted readers are closed."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            _, old = self.popitem(last=False)
            close = getattr(old, "close", None)
            if callable(close) and not hasattr(old, "write_tile"):
                close()
        return value


class ModelActor:
    """Holds the stage models on one device; ``run(batch)`` computes and stores a batch.

    The callable-class pattern of Ray batch inference: the models load once in ``__init__``
    (on the GPU Ray assigned, or the CPU), and each call handles one :class:`WindowBatch`.

    Parameters
    ----------
    model_dirs : mapping of str to path
        Task (``tumor``, ``mitosis``) to a trained model folder.
    threads : int
        torch intra-op threads on CPU (fixed, so results do not depend on the node's core count).
    gpu_tf32 : bool
        Let cuDNN use TF32 on a GPU (see :class:`tupac.infer.job.JobConfig`); off: full FP32.
    decode_device : {"auto", "cpu", "cuda"}
        Where windows are decoded (:func:`tupac.heatmaps.device_windows.choose_decode_device`
        decides once; ``info`` records ``decode_device`` and ``decode_reason``).
    backend : str
        The run's slide reader option (only cuCIM decodes into GPU memory).
    decode_workers : int
        Decoder threads of one batch on the CPU path (:func:`tupac.heatmaps.engine.read_windows`):
        the job gives a GPU actor its reserved CPUs, so that decoding keeps up with the GPU, and a
        CPU actor 1 (its cores run the model).
    """

    def __init__(self, model_dirs: Mapping[str, str], threads: int = 1, gpu_tf32: bool = False,
                 decode_device: str = "auto", backend: str = "auto", decode_workers: int = 1) -> None:
        # Deferred: torch and ray load in the actor process only, not in the driver that imports this.
        import ray
        import torch

        from tupac.models.trained import load_trained

        torch.set_num_threads(max(1, int(threads)))
        gpu_ids = ray.get_gpu_ids()
        self.device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            # Process-wide, and this process runs nothing but this actor.
            torch.backends.cudnn.allow_tf32 = bool(gpu_tf32)
        self.trained = {task: load_trained(d, device=self.device) for task, d in model_dirs.items()}
        self.predictors = {task: WindowPredictor(t.model, self.device) for task, t in self.trained.items()}
        self.decode_device, reason = choose_decode_device(decode_device, self.device, backend, cuda_decode_problem)
        self.decode_workers = max(1, int(decode_workers))
        self.info = {**device_info(self.device), "torch_threads": torch.get_num_threads(),
                     "tf32": self.device == "cuda" and bool(gpu_tf32),
                     "decode_device": self.decode_device, "decode_reason": reason,
                     "decode_workers": self.decode_workers}
        self._model_lock = threading.Lock()
        self._handles_lock = threading.Lock()
        self._lut_lock = threading.Lock()  # one build per slide, not one per concurrent call
        self._readers = _LRU(4)
        self._stores = _LRU(8)
        self._stats: dict[str, Any] = {}
        self._device_luts = _LRU(2)  # the slides' tables on the GPU, 48 MiB each
        self.batches = 0

    def ready(self) -> dict[str, Any]:
        """The actor's device record (also a liveness ping)."""
        return {**self.info, "batches": self.batches}

    def _reader(self, path: str, mpp: float | None, backend: str):
        with self._handles_lock:
            return self._readers.get_or((path, mpp, backend), lambda: open_slide(path, backend=backend, mpp=mpp))

    def _store(self, path: str):
        with self._handles_lock:
            return self._stores.get_or(path, lambda: HeatmapStore.open(path))

    def _stain(self, task: str, stats_dict: dict | None, lut: bool = False):
        """``(reference, stats, table)`` of a batch's standardization; None for raw pixels."""
        reference = self.trained[task].reference
        if reference is None or stats_dict is None:
            return None
        stats = stain.SlideStainStats.from_dict(stats_dict)
        stats = self._stats.setdefault(stats.key, stats)
        table = None
        if lut and not stats.degenerate:
            with self._lut_lock:
                table = stain.lookup_table(stats, reference)
        return reference, stats, table

    def _preprocess(self, task: str, stats_dict: dict | None, lut: bool = False):
        stain_args = self._stain(task, stats_dict, lut)
        return standardizer(*stain_args) if stain_args else None

    def _device_preprocess(self, task: str, stats_dict: dict | None, lut: bool = False):
        """:meth:`_preprocess` for a batch tensor on the GPU; the slide's table is moved up once."""
        stain_args = self._stain(task, stats_dict, lut)
        if stain_args is None:
            return None
        reference, stats, table = stain_args
        if table is not None:
            with self._lut_lock:
                table = self._device_luts.get_or((stats.key, reference.key), lambda: lut_tensor(table, self.device))
        return device_standardizer(reference, stats, table)

    def _source(self, reader, geom):
        """The batch's window source: into GPU memory where this actor decodes there and cuCIM
        reads the slide, else the CPU path (unchanged bytes)."""
        if self.decode_device == "cuda" and reader.backend == "cucim":
            return DeviceWindows(reader, geom, self.device)
        return SlideWindows(reader, geom, self.decode_workers)

    def run(self, batch: WindowBatch) -> dict[str, Any]:
        """Read, standardize, predict and store the batch's windows.

        Returns
        -------
        dict
            ``windows`` done, ``steps_s`` (:func:`step_seconds`), ``pid`` of this actor; or
            ``error`` (one line) when the slide cannot be read or stored.
        """
        try:
            return self._run(batch)
        except Exception as e:  # a bad slide fails its slide, not the actor (see call_safely)
            return {"error": error_line(e, batch.path), "windows": 0, "pid": os.getpid()}

    def _run(self, batch: WindowBatch) -> dict[str, Any]:
        maybe_inject_fault(batch.slide_id, batch.task)
        t0 = time.perf_counter()
        reader = self._reader(batch.path, batch.mpp_override, batch.backend)
        source = self._source(reader, batch.geom)
        pixels = source.read(batch.windows)
        t1 = time.perf_counter()
        if isinstance(source, DeviceWindows):
            # GPU work is asynchronous: a lookup still running when t2 is stamped counts in model_s.
            prep = self._device_preprocess(batch.task, batch.stats, batch.stain_lut)
            pixels = prep(pixels) if prep is not None else pixels
        else:
            pixels = standardize(pixels, self._preprocess(batch.task, batch.stats, batch.stain_lut))
        t2 = time.perf_counter()
        with self._model_lock:
            t_lock = time.perf_counter()
            probs = self.predictors[batch.task](pixels)
            t3 = time.perf_counter()
        del pixels
        store = self._store(batch.store)
        for rc, block in own_cells(batch.geom, batch.windows, probs):
            store.write_tile(batch.task, rc, block)
        t4 = time.perf_counter()
        self.batches += 1
        return {"windows": len(batch.windows), "pid": os.getpid(),
                "steps_s": step_seconds(t0, t1, t2, t_lock, t3, t4)}

    __call__ = run


def model_dirs(models_root: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """The stage model folders under ``MODELS`` and, for stages without one, why they are skipped.

    Returns
    -------
    (found, skipped)
        ``found``: task -> folder (``MODELS/tumor``, ``MODELS/mitosis``) holding ``card.json``;
        ``skipped``: task -> reason.
    """
    root = Path(models_root)
    found, skipped = {}, {}
    for task in ("tumor", "mitosis"):
        d = root / task
        if (d / "card.json").is_file():
            found[task] = str(d.resolve())
        else:
            skipped[task] = f"no trained {task} model ({d}/card.json missing; run `tupac train {task}`)"
    return found, skipped
