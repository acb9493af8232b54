"""The out-of-distribution verdict of the job's commit record surfaces in the features stage:
the table's ``qc_ood`` flag, ``features/qc.csv`` with the reasons, the summary and a CLI warning."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from feature_stores import write_run_slide
from typer.testing import CliRunner

from tupac.cli import app
from tupac.predict.cohort import read_feature_table

REASON = "hematoxylin OD (median) 0.92 above the training range 0.41-0.63 (tumor model, z=+9.1)"


def _slide(tmp_path, run, sid, ood):
    f = tmp_path / f"{sid}.svs"
    f.write_bytes(b"not really a slide")
    tumor = np.zeros((20, 20), np.float32)
    tumor[5:15, 5:15] = 0.9
    det = pd.DataFrame({"x": [700.0, 800.0], "y": [700.0, 900.0], "prob": [0.9, 0.8]})
    extra = {} if ood is None else {"ood": ood}
    write_run_slide(run, sid, f, {"tumor": (tumor, 16.0, None, 8)}, det, extra=extra)


def test_flagged_slides_get_the_flag_the_reasons_and_a_warning_and_the_fit_ignores_them(tmp_path):
    run = tmp_path / "run"
    _slide(tmp_path, run, "dark", {"ood": True, "reasons": [REASON], "checked": ["tumor:h_od_p50"], "note": "",
                                   "stats": {}})
    _slide(tmp_path, run, "fine", {"ood": False, "reasons": [], "checked": ["tumor:h_od_p50"], "note": "",
                                   "stats": {}})
    _slide(tmp_path, run, "old", None)  # committed before the check existed
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path,mpp\n" + "".join(f"{s},{tmp_path / s}.svs,0.25\n" for s in ("dark", "fine", "old")))
    r = CliRunner().invoke(app, ["features", "--run", str(run), "--no-pixels", "--slides", str(manifest)])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"warning: dark: out of distribution for the models ({REASON})" in out
    assert "fine: out of distribution" not in out and "old: out of distribution" not in out

    t = pd.read_parquet(run / "features.parquet").set_index("slide_id")
    assert t["qc_ood"].to_dict() == {"dark": 1.0, "fine": 0.0, "old": 0.0}
    assert np.isfinite(t.to_numpy()).all()  # the table stays numeric
    d = pd.read_csv(run / "features" / "dictionary.csv")
    assert list(d["name"]) == list(t.columns) and d.set_index("name").loc["qc_ood", "group"] == "flags"
    qc = pd.read_csv(run / "features" / "qc.csv", keep_default_na=False).set_index("slide_id")
    assert qc.loc["dark", "qc_ood_reasons"] == REASON and qc.loc["fine", "qc_ood_reasons"] == ""
    assert qc.loc["old", "qc_ood_reasons"].startswith("not checked")
    summary = json.loads((run / "features" / "summary.json").read_text())
    assert summary["ood"] == [{"slide_id": "dark", "reasons": REASON}]
    # Quality control, not a feature: the fit stage's reader drops it.
    assert "qc_ood" not in read_feature_table(run / "features.parquet").columns
