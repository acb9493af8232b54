"""Tile-read throughput: cuCIM vs OpenSlide, 256 px tiles at level 0, 1 and 2 workers.

Two ways of using 2 workers are measured:

- ``threads``: one reader, ``read_regions(..., num_workers=k)`` (cuCIM's own batched
  multi-location read; for OpenSlide a thread pool, since openslide-python releases the GIL);
- ``processes``: k spawned processes, each with its own reader, reading an equal share
  (timed after the pool has started and opened the slide).

Slides: the real ``cmu-1-small-region.svs`` fixture (JPEG, 240 px tiles, 20x) and, when
``tupac.synth`` is available, a phantom 40x slide (JPEG, 256 px tiles). Each figure is the best
of ``--repeats`` passes over every whole 256 px tile of level 0, the list repeated to at least
``--min-tiles`` reads (page cache warm). OpenSlide's decoded-tile cache is switched off, as
cuCIM has none by default, so both decode every tile they touch on every read. Writes
``benchmarks/results/slide_read.json``.

Usage: ``.venv/bin/python benchmarks/slide_read.py [--phantom-um 2000 2000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = 256

_reader = None


def tile_origins(dimensions: tuple[int, int]) -> np.ndarray:
    """Top-left corners of every whole 256 px tile of level 0, ``(n, 2)`` int64."""
    w, h = dimensions
    ys, xs = np.mgrid[0 : h - TILE + 1 : TILE, 0 : w - TILE + 1 : TILE]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def open_uncached(path, backend: str):
    from tupac.slide import open_slide

    reader = open_slide(path, backend=backend)
    if backend == "openslide":
        reader.set_cache_size(0)
    return reader


def _init(path: str, backend: str) -> None:
    global _reader
    _reader = open_uncached(path, backend)


def _read_share(xys: np.ndarray) -> int:
    tiles = _reader.read_regions(xys, 0, (TILE, TILE))
    return int(tiles.shape[0])


def bench_threads(path: Path, backend: str, workers: int, xys: np.ndarray, repeats: int) -> float:
    with open_uncached(path, backend) as s:
        s.read_regions(xys[:4], 0, (TILE, TILE), num_workers=workers)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = s.read_regions(xys, 0, (TILE, TILE), num_workers=workers)
            best = min(best, time.perf_counter() - t0)
            assert out.shape[0] == len(xys)
    return len(xys) / best


def bench_processes(path: Path, backend: str, workers: int, xys: np.ndarray, repeats: int) -> float:
    ctx = mp.get_context("spawn")
    shares = np.array_split(xys, workers)
    with ctx.Pool(workers, initializer=_init, initargs=(str(path), backend)) as pool:
        pool.map(_read_share, [s[:2] for s in shares])  # start and warm every worker
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            n = sum(pool.map(_read_share, shares))
            best = min(best, time.perf_counter() - t0)
            assert n == len(xys)
    return len(xys) / best


def phantom_slide(size_um: tuple[float, float], workdir: Path) -> Path | None:
    try:
        from tupac.synth import generate_cohort
    except ImportError:
        return None
    summary = generate_cohort(workdir / "cohort", n_slides=1, seed=11, size_um=size_um, mitosis_images=0)
    return Path(summary.slides[0].path)


def run(slides: dict[str, Path], repeats: int, min_tiles: int) -> list[dict]:
    from tupac.slide import open_slide

    rows = []
    for name, path in slides.items():
        with open_slide(path) as s:
            xys = tile_origins(s.dimensions)
            xys = np.tile(xys, (max(1, -(-min_tiles // len(xys))), 1))
            info = {"slide": name, "dimensions": list(s.dimensions), "mpp": s.mpp, "auto_backend": s.backend}
        for backend in ("openslide", "cucim"):
            for mode, fn in (("threads", bench_threads), ("processes", bench_processes)):
                for workers in (1, 2):
                    if mode == "processes" and workers == 1:
                        continue  # same work as threads x1, plus pickling
                    tps = fn(path, backend, workers, xys, repeats)
                    row = {**info, "backend": backend, "mode": mode, "workers": workers,
                           "tiles": int(len(xys)), "tiles_per_s": round(tps, 1),
                           "mpix_per_s": round(tps * TILE * TILE / 1e6, 2)}
                    rows.append(row)
                    print(f"{name:10s} {backend:9s} {mode:9s} x{workers}  {tps:8.1f} tiles/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantom-um", type=float, nargs=2, default=(2000.0, 2000.0), metavar=("W", "H"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-tiles", type=int, default=600)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "slide_read.json")
    args = ap.parse_args(argv)

    slides = {"cmu-1": ROOT / "tests" / "fixtures" / "real" / "cmu-1-small-region.svs"}
    with tempfile.TemporaryDirectory() as tmp:
        phantom = phantom_slide(tuple(args.phantom_um), Path(tmp))
        if phantom is not None:
            slides["phantom"] = phantom
        rows = run(slides, args.repeats, args.min_tiles)
    import cucim
    import openslide

    result = {
        "benchmark": "slide_read",
        "tile_px": TILE,
        "level": 0,
        "repeats": args.repeats,
        "openslide_tile_cache_bytes": 0,
        "metric": "best of repeats, tiles per second, page cache warm",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "note": "CPU only; cores shared with other jobs, so figures are noisy"},
        "versions": {"openslide": openslide.__library_version__, "openslide-python": openslide.__version__,
                     "cucim": cucim.__version__},
        "phantom_um": list(args.phantom_um) if "phantom" in slides else None,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
