"""Tissue-mask options against phantom truth (issue 17): hole filling, dilation, small-object removal.

Generates (once) a phantom cohort with exact tissue truth (``truth/SLIDE/tissue.png``, 4 um/px),
computes the tissue mask of every slide (8 um/px, as the pipeline does) under each setting of
:func:`tupac.preprocess.tissue.tissue_mask`'s morphology options, and scores it against the truth
on the truth's grid: recall (share of true tissue in the mask), precision and IoU, per slide and
averaged. It also counts the inference windows the mask selects (a window is processed when any
tissue pixel lies under it, :func:`tupac.heatmaps.windows.window_tissue`) for square windows of
64, 256 and 1024 um, and the mask's tissue area, which the features divide by. On the real H&E
fixtures there is no truth: the tissue area and the IoU with an independent optical-density mask
(all holes filled; the one tests/preprocess/test_tissue.py uses) are recorded, and overlays are
written for a person to look at (``--overlays DIR``).

Usage (under a minute on 2 shared cores once the cohorts exist)::

    .venv/bin/python benchmarks/tissue_mask.py [--root /tmp/tissue_mask_bench] [--overlays /tmp/tissue_overlays]

Writes ``benchmarks/results/tissue_mask.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "tissue_mask.json"
REAL = ROOT / "tests" / "fixtures" / "real"
# (file, level-0 um/px): the TCGA fixture has no MPP in its metadata (see test_tissue.py).
REAL_SLIDES = [("cmu-1-small-region.svs", 0.499), ("tcga-cr-7395-01a-01-ts1.svs", 1.0)]
MASK_MPP = 8.0
WINDOWS_UM = (64.0, 256.0, 1024.0)

# name -> tissue_mask keyword arguments; "today" is the defaults as they were before issue 17.
SETTINGS = {
    "today": {},
    "no_hole_fill": {"max_hole_um2": 0.0},
    "holes_100k": {"max_hole_um2": 100_000.0},
    "holes_all": {"max_hole_um2": float("inf")},
    "dilate_8um": {"dilation_um": 8.0},
    "dilate_16um": {"dilation_um": 16.0},
    "min_object_5k": {"min_object_um2": 5_000.0},
    "min_object_5k_dilate_8um": {"min_object_um2": 5_000.0, "dilation_um": 8.0},
}
# Phantom cohorts: (name, seed, slides, size in um).
COHORTS = [("seed17_6x2000x1600", 17, 6, (2000.0, 1600.0)), ("seed99_3x3000x2500", 99, 3, (3000.0, 2500.0))]


def ensure_cohort(root: Path, seed: int, n: int, size_um: tuple[float, float]) -> Path:
    """A phantom cohort without mitosis images at ``root`` (generated once)."""
    from tupac.synth import generate_cohort

    if not (root / "truth").is_dir():
        generate_cohort(root, n, seed, size_um=size_um, mitosis_images=0, workers=1)
    return root


def on_grid(mask: np.ndarray, mask_mpp: float, shape: tuple[int, int], mpp: float) -> np.ndarray:
    """``mask`` resampled (nearest, by pixel centre) onto a ``shape`` grid of ``mpp`` um/px."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mpp / mask_mpp).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mpp / mask_mpp).astype(np.int64), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def agreement(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Recall, precision and IoU of a bool mask against a bool truth of the same shape."""
    tp = float((pred & truth).sum())
    return {
        "recall": tp / max(float(truth.sum()), 1.0),
        "precision": tp / max(float(pred.sum()), 1.0),
        "iou": tp / max(float((pred | truth).sum()), 1.0),
    }


def window_counts(mask: np.ndarray, mpp: float) -> dict[str, int]:
    """Windows with any tissue under them, for square windows of each edge in ``WINDOWS_UM``."""
    from tupac.heatmaps.windows import window_tissue

    out = {}
    for w in WINDOWS_UM:
        h_um, w_um = mask.shape[0] * mpp, mask.shape[1] * mpp
        geom = SimpleNamespace(chunk=1, cell_um=w, grid=(int(np.ceil(h_um / w)), int(np.ceil(w_um / w))))
        out[f"{w:g}um"] = int(window_tissue(geom, mask, mpp).sum())
    return out


def score_cohort(root: Path) -> dict:
    """Every setting on every slide of a cohort: agreement with truth, tissue area, window counts."""
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide
    from tupac.synth.truth import read_truth_mask

    slides = sorted((root / "training_image_data").glob("*.svs"))
    out = {}
    for name, kwargs in SETTINGS.items():
        rows = []
        for path in slides:
            truth, truth_mpp = read_truth_mask(root / "truth" / path.stem / "tissue.png")
            with open_slide(path) as reader:
                tm = slide_tissue_mask(reader, MASK_MPP, **kwargs)
            rows.append({"slide": path.stem, **agreement(on_grid(tm.mask, tm.mpp, truth.shape, truth_mpp), truth),
                         "tissue_mm2": tm.area_um2 / 1e6, "true_tissue_mm2": float(truth.sum()) * truth_mpp**2 / 1e6,
                         "windows": window_counts(tm.mask, tm.mpp)})
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("recall", "precision", "iou")}
        windows = {k: int(sum(r["windows"][k] for r in rows)) for k in rows[0]["windows"]}
        out[name] = {"kwargs": kwargs, "mean": mean, "min_recall": float(min(r["recall"] for r in rows)),
                     "windows_total": windows, "slides": rows}
    return out


def od_mask(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Independent mask: mean optical density > 0.05, 1-px opening, all holes filled, >= 20,000 um^2."""
    od = -np.log10((rgb.astype(np.float64) + 1) / 256).mean(axis=-1)
    m = ndi.binary_fill_holes(ndi.binary_opening(od > 0.05, structure=np.ones((3, 3), bool)))
    lab, n = ndi.label(m)
    sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
    return np.isin(lab, 1 + np.flatnonzero(sizes * mpp**2 >= 20_000))


def score_real(overlays: Path | None) -> dict:
    """Every setting on the real fixtures: tissue area and IoU with the optical-density mask."""
    from PIL import Image

    from tupac.preprocess.tissue import mask_overlay, tissue_mask
    from tupac.slide import open_slide

    out = {}
    for fname, slide_mpp in REAL_SLIDES:
        path = REAL / fname
        if not path.exists():
            continue
        with open_slide(path, mpp=slide_mpp) as reader:
            rgb = reader.thumbnail(MASK_MPP)
        ref = od_mask(rgb, MASK_MPP)
        rows = {}
        for name, kwargs in SETTINGS.items():
            m = tissue_mask(rgb, MASK_MPP, **kwargs).mask
            rows[name] = {"tissue_mm2": float(m.sum()) * MASK_MPP**2 / 1e6, "iou_vs_od": agreement(m, ref)["iou"],
                          "recall_vs_od": agreement(m, ref)["recall"], "windows": window_counts(m, MASK_MPP)}
            if overlays is not None and name in ("today", "holes_all", "dilate_8um", "min_object_5k"):
                overlays.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask_overlay(rgb, m)).save(overlays / f"{Path(fname).stem}_{name}.png")
        out[fname] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/tissue_mask_bench"))
    ap.add_argument("--overlays", type=Path, default=None)
    ap.add_argument("--result", type=Path, default=RESULT)
    a = ap.parse_args()
    t0 = time.time()
    cohorts = {}
    for name, seed, n, size in COHORTS:
        root = ensure_cohort(a.root / name, seed, n, size)
        cohorts[name] = {"seed": seed, "slides": n, "size_um": size, "settings": score_cohort(root)}
    result = {
        "command": "python benchmarks/tissue_mask.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count()},
        "mask_mpp": MASK_MPP,
        "settings": SETTINGS,
        "phantom": cohorts,
        "real": score_real(a.overlays),
        "seconds": round(time.time() - t0, 1),
    }
    a.result.parent.mkdir(parents=True, exist_ok=True)
    a.result.write_text(json.dumps(result, indent=1, default=float))
    for cname, c in cohorts.items():
        base = c["settings"]["today"]["windows_total"]
        for name, s in c["settings"].items():
            m, w = s["mean"], s["windows_total"]
            dw = ", ".join(f"{k} {w[k] / max(base[k], 1) - 1:+.1%}" for k in w)
            print(f"{cname:20s} {name:26s} R {m['recall']:.4f} (min {s['min_recall']:.4f}) P {m['precision']:.4f} "
                  f"IoU {m['iou']:.4f}  windows {dw}")
    for fname, rows in result["real"].items():
        for name, r in rows.items():
            print(f"{fname:28s} {name:26s} tissue {r['tissue_mm2']:.3f} mm2  IoU vs OD {r['iou_vs_od']:.4f}")
    print(f"wrote {a.result}")


if __name__ == "__main__":
    main()
