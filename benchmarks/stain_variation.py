"""How much the H and E stain amounts vary between slides and centers (issue 17, augmentation ranges).

For every slide of the phantom cohorts (centers A, B, C) and the real H&E fixtures, the tissue
pixels of a 2 um/px thumbnail (tissue mask at 8 um/px, upsampled) are converted to H, E, DAB
concentrations in optical-density units exactly as the training's stain jitter does
(:func:`tupac.train.augment.rgb_to_hed`, Ruifrok-Johnston matrix), and their 90th percentiles are
taken (the stained structures: nuclei for H, eosinophilic stroma for E; a median lands on
unstained pixels, near 0 H, where ratios mean nothing). The phantom generator's own per-center
stain scales (``truth/cohort.json``: ``h_scale``, ``e_scale``) are recorded beside them.
The stain jitter scales each concentration by ``alpha`` in ``[1 - stain_sigma, 1 + stain_sigma]``
and shifts it by ``beta`` in ``[-stain_bias, stain_bias]``, per image; a slide's median relative to
the median over all slides is the scale a network would have to bridge, so the ranges that
cover the measured variation are:

* ``sigma_covering``: the largest ``|p90_slide / p90_all - 1|`` over slides and over H, E;
* ``bias_covering``: the largest ``|p90_slide - p90_all|`` in OD units.

Usage (seconds; cohorts from ``benchmarks/tissue_mask.py`` are reused)::

    .venv/bin/python benchmarks/stain_variation.py [--root /tmp/tissue_mask_bench]

Writes ``benchmarks/results/stain_variation.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "stain_variation.json"
REAL = ROOT / "tests" / "fixtures" / "real"
REAL_SLIDES = [("cmu-1-small-region.svs", 0.499), ("tcga-cr-7395-01a-01-ts1.svs", 1.0)]
THUMB_MPP = 2.0
STAIN_METHOD = "wsics"


def hed_p90(rgb: np.ndarray) -> dict[str, float]:
    """90th percentile of the H, E, DAB concentrations (OD units) of ``(n, 3)`` uint8 pixels."""
    import torch

    from tupac.train.augment import rgb_to_hed

    x = torch.from_numpy(rgb.astype(np.float64) / 255.0).T.reshape(1, 3, -1, 1)
    hed = rgb_to_hed(x)[0, :, :, 0].numpy()
    return {s: float(np.percentile(hed[i], 90)) for i, s in enumerate("HED")}


def slide_hed(path: Path, mpp: float | None, reference) -> dict[str, float]:
    """:func:`hed_p90` of a slide's tissue pixels, as scanned and standardized towards ``reference``
    (keys ``std_H``, ...; fitted on the same thumbnail, as ``stain.fit_image`` does for an image)."""
    from tupac.preprocess import stain
    from tupac.preprocess.tissue import tissue_mask
    from tupac.slide import open_slide

    with open_slide(path, mpp=mpp) as reader:
        rgb = reader.thumbnail(max(THUMB_MPP, reader.mpp))
        mask_mpp = 8.0
        tm = tissue_mask(reader.thumbnail(mask_mpp), mask_mpp)
    k = mask_mpp / max(THUMB_MPP, float(mpp or 0.0))
    rows = np.minimum((np.arange(rgb.shape[0]) / k).astype(int), tm.shape[0] - 1)
    cols = np.minimum((np.arange(rgb.shape[1]) / k).astype(int), tm.shape[1] - 1)
    inside = tm.mask[np.ix_(rows, cols)]
    out = hed_p90(rgb[inside]) | {"tissue_pixels": int(inside.sum())}
    if reference is not None:
        std = stain.transform(rgb, stain.fit_image(rgb, method=reference.method), reference)
        out |= {f"std_{k}": v for k, v in hed_p90(std[inside]).items()}
    return out


def covering(rows: list[dict], prefix: str = "") -> dict[str, float]:
    """The jitter ranges that cover the slides' percentiles (see the module docstring)."""
    out = {}
    for s in "HE":
        v = np.array([r[prefix + s] for r in rows])
        ref = float(np.median(v))  # the middle slide: the one a network trained on "typical" staining sees
        out[f"{s}_p90_all"] = ref
        out[f"{s}_max_rel_dev"] = float(np.max(np.abs(v / ref - 1)))
        out[f"{s}_max_abs_dev"] = float(np.max(np.abs(v - ref)))
    out["sigma_covering"] = max(out["H_max_rel_dev"], out["E_max_rel_dev"])
    out["bias_covering"] = max(out["H_max_abs_dev"], out["E_max_abs_dev"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/tissue_mask_bench"))
    ap.add_argument("--result", type=Path, default=RESULT)
    a = ap.parse_args()
    from tupac.preprocess import stain
    from tupac.slide import open_slide

    phantom = []
    # The template the pipeline would standardize towards: one phantom slide of center A.
    first = sorted(a.root.glob("*/training_image_data/*.svs"))[0]
    with open_slide(first) as reader:
        reference = stain.fit(reader.thumbnail(THUMB_MPP), method=STAIN_METHOD)
    for cohort in sorted(p for p in a.root.iterdir() if (p / "cohort.json").exists() or (p / "truth").is_dir()):
        centers = {}
        meta = cohort / "truth" / "cohort.json"
        truth = json.loads(meta.read_text())["slides"] if meta.exists() else {}
        centers = {sid: (s["center"], s["stain"]["h_scale"], s["stain"]["e_scale"]) for sid, s in truth.items()}
        for path in sorted((cohort / "training_image_data").glob("*.svs")):
            center, h_scale, e_scale = centers.get(path.stem, (None, None, None))
            phantom.append({"cohort": cohort.name, "slide": path.stem, "center": center, "true_h_scale": h_scale,
                            "true_e_scale": e_scale, **slide_hed(path, None, reference)})
    real = [{"slide": f, **slide_hed(REAL / f, mpp, reference)} for f, mpp in REAL_SLIDES if (REAL / f).exists()]
    per_center = {}
    for c in sorted({r["center"] for r in phantom if r["center"]}):
        sel = [r for r in phantom if r["center"] == c]
        per_center[c] = {s: float(np.mean([r[s] for r in sel])) for s in "HE"} | {
            "slides": len(sel), "true_h_scale": sel[0]["true_h_scale"], "true_e_scale": sel[0]["true_e_scale"]}
    result = {
        "command": "python benchmarks/stain_variation.py " + " ".join(sys.argv[1:]),
        "phantom_slides": phantom, "phantom_per_center": per_center, "real_slides": real,
        "phantom": covering(phantom) if phantom else None,
        "real": covering(real) if len(real) > 1 else None,
        "all": covering(phantom + real),
        "standardized": {"method": STAIN_METHOD, "template": str(first),
                         "phantom": covering(phantom, "std_") if phantom else None,
                         "real": covering(real, "std_") if len(real) > 1 else None,
                         "all": covering(phantom + real, "std_")},
    }
    a.result.parent.mkdir(parents=True, exist_ok=True)
    a.result.write_text(json.dumps(result, indent=1, default=float))
    for r in phantom + real:
        print(f"{r.get('cohort', 'real'):20s} {r['slide']:30s} {r.get('center') or '-':2s} H {r['H']:.3f} E {r['E']:.3f}"
              f"  standardized H {r['std_H']:.3f} E {r['std_E']:.3f}")
    for k, c in [(k, result[k]) for k in ("phantom", "real", "all")] + [
            (f"std {k}", result["standardized"][k]) for k in ("phantom", "real", "all")]:
        if c:
            print(f"{k:8s} sigma covering {c['sigma_covering']:.3f} (H {c['H_max_rel_dev']:.3f}, E {c['E_max_rel_dev']:.3f}); "
                  f"bias covering {c['bias_covering']:.3f} OD")
    print(f"wrote {a.result}")


if __name__ == "__main__":
    main()
