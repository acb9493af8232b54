"""Stain standardization throughput: megapixels per second per core of ``transform``, per method.

Run with one thread (the script sets OMP/OPENBLAS/MKL threads to 1 before importing numpy)::

    .venv/bin/python benchmarks/stain_throughput.py [--tiles 8] [--tile-px 1024] [--repeats 3]

Measures, on phantom H&E tiles (Beer-Lambert, as in the tests) with a real H&E template:
- ``transform``: steady state, per-slide lookup table already built (the whole-slide path);
- ``direct``: the per-pixel float32 code without the table (small tiles, first use);
- ``lut_build_s``: one-off cost per slide of tabulating all 2**24 colors.
Writes benchmarks/results/stain_throughput.json. Targets: WSICS >= 20, Macenko/Reinhard >= 40 MP/s.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "preprocess" / "stain"))

from conftest import phantom  # noqa: E402

from tupac.preprocess import stain  # noqa: E402

TARGETS = {"wsics": 20.0, "macenko": 40.0, "reinhard": 40.0}


def _best_rate(fn, tiles, repeats: int) -> float:
    """Best-of-``repeats`` megapixels per second of ``fn`` over all ``tiles``."""
    mp = sum(t.shape[0] * t.shape[1] for t in tiles) / 1e6
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for t in tiles:
            fn(t)
        best = min(best, time.perf_counter() - t0)
    return mp / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=6)
    ap.add_argument("--tile-px", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stain_throughput.json")
    args = ap.parse_args()

    template = np.asarray(Image.open(ROOT / "tests" / "fixtures" / "real" / "he-tumor-target.png").convert("RGB"))
    tiles = [phantom("ABC"[i % 3], seed=i, shape=(args.tile_px, args.tile_px), nucleus_r=8.0).rgb for i in range(args.tiles)]
    small = [t[:256, :256].copy() for t in tiles]
    results = {}
    for method in stain.METHODS:
        ref = stain.fit(template, method=method)
        stats = stain.fit_image(tiles[0], method=method)
        m = stain.get_method(method)
        direct = _best_rate(lambda t: m.transform_pixels(t.reshape(-1, 3), stats.params, ref.params), small, 1)
        t0 = time.perf_counter()
        stain.lookup_table(stats, ref)
        build = time.perf_counter() - t0
        rate = _best_rate(lambda t: stain.transform(t, stats, ref), tiles, args.repeats)
        results[method] = {
            "transform_mp_per_s_per_core": round(rate, 1),
            "direct_mp_per_s_per_core": round(direct, 2),
            "lut_build_s": round(build, 2),
            "target_mp_per_s": TARGETS[method],
            "meets_target": rate >= TARGETS[method],
        }
        print(f"{method:9s} transform {rate:7.1f} MP/s  direct {direct:6.2f} MP/s  LUT build {build:5.2f} s  (target {TARGETS[method]:.0f})")
    doc = {
        "benchmark": "stain_throughput",
        "threads": 1,
        "tile_px": args.tile_px,
        "tiles": args.tiles,
        "repeats": args.repeats,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count()},
        "note": "transform = steady state with the per-slide lookup table built; direct = per-pixel float32 path; shared CPU: figures are lower bounds",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
