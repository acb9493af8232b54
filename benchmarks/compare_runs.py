"""Compare two run folders file by file: did a change of code change any output?

Byte-compares the trained model weights, every heatmap chunk and ``zarr.json``, the detections, the
fringe patches, the deep-histogram and general-network fits and the predictions, and compares
``features.parquet`` as a table and every number of ``predict/metrics.json`` (timings left out).

Run ``python benchmarks/compare_runs.py RUN_A RUN_B [--out FILE.json]`` (e.g. ``make demo`` at two
commits); it prints the JSON too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd

PATTERNS = {
    "model weights": "models/*/model.safetensors",
    "heatmap chunks": "slides/*.zarr/**/c/**/*",
    "zarr metadata": "slides/*.zarr/**/zarr.json",
    "detections": "slides/*.mitoses.csv",
    "fringe patches": "features/fringe/*.csv",
    "deep histogram": "features/deep_hist.safetensors",
    "general network": "features/general/*.safetensors",
    "predictions": "predict/predictions.csv",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_files(a: Path, b: Path, pattern: str) -> dict:
    """Counts of the files matching ``pattern`` in each run and of those byte-identical in both."""
    fa = sorted(p.relative_to(a) for p in a.glob(pattern) if p.is_file())
    fb = {p.relative_to(b) for p in b.glob(pattern) if p.is_file()}
    differ = [str(f) for f in fa if f in fb and _sha(a / f) != _sha(b / f)]
    return {"a": len(fa), "b": len(fb), "identical": sum(f in fb for f in fa) - len(differ), "differ": differ[:10]}


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and "second" not in k:
            out[f"{prefix}{k}"] = v
    return out


def compare_runs(a: Path, b: Path) -> dict:
    """Everything :data:`PATTERNS` names, plus the feature table and the metrics, of runs ``a`` and ``b``."""
    out = {name: compare_files(a, b, pattern) for name, pattern in PATTERNS.items()}
    ta, tb = pd.read_parquet(a / "features.parquet"), pd.read_parquet(b / "features.parquet")
    out["features.parquet"] = {"shape_a": list(ta.shape), "shape_b": list(tb.shape), "equal": bool(ta.equals(tb))}
    na = _numbers(json.loads((a / "predict" / "metrics.json").read_text()))
    nb = _numbers(json.loads((b / "predict" / "metrics.json").read_text()))
    out["metrics.json"] = {"numbers": len(na), "equal": sum(nb.get(k) == v for k, v in na.items()),
                           "differ": {k: [v, nb.get(k)] for k, v in na.items() if nb.get(k) != v}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--out", type=Path, help="write the JSON here as well")
    args = parser.parse_args()
    text = json.dumps({"a": str(args.run_a), "b": str(args.run_b), **compare_runs(args.run_a, args.run_b)}, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
