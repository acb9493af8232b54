"""``tupac stain fit`` / ``tupac stain apply`` on real files: outputs written, errors one line."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from tupac.cli import app

runner = CliRunner()


def test_fit_image_then_apply_to_image_and_slide(tmp_path, real_dir):
    ref = tmp_path / "ref.json"
    r = runner.invoke(app, ["stain", "fit", str(real_dir / "he-tumor-target.png"), "--method", "macenko", "--out", str(ref)])
    assert r.exit_code == 0, r.output
    doc = json.loads(ref.read_text())
    assert doc["method"] == "macenko" and len(doc["params"]["stain_matrix"]) == 3

    # an image: full resolution, own statistics
    src = real_dir / "he-tumor-target.png"
    out, pair = tmp_path / "img.png", tmp_path / "pair.png"
    r = runner.invoke(app, ["stain", "apply", str(src), "--ref", str(ref), "--out", str(out), "--before-after", str(pair)])
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(out)).shape == (1000, 1000, 3)
    assert Image.open(pair).size == (2000, 1000)

    # a slide: at --mpp (CMU-1 small region is 0.499 um/px, 2220 x 2967)
    out = tmp_path / "slide.png"
    r = runner.invoke(app, ["stain", "apply", str(real_dir / "cmu-1-small-region.svs"), "--ref", str(ref), "--out", str(out), "--mpp", "8"])
    assert r.exit_code == 0, r.output
    w, h = Image.open(out).size
    assert abs(w - 2220 * 0.499 / 8) <= 1 and abs(h - 2967 * 0.499 / 8) <= 1


def test_fit_on_a_slide_without_mpp_needs_slide_mpp(tmp_path, real_dir):
    svs = str(real_dir / "tcga-cr-7395-01a-01-ts1.svs")
    ref = tmp_path / "ref.json"
    r = runner.invoke(app, ["stain", "fit", svs, "--method", "reinhard", "--out", str(ref)])
    assert r.exit_code != 0 and "--slide-mpp" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["stain", "fit", svs, "--method", "reinhard", "--out", str(ref), "--slide-mpp", "0.5"])
    assert r.exit_code == 0, r.output
    assert json.loads(ref.read_text())["n_tiles"] > 1  # tiles sampled across the slide


def test_bad_inputs_are_one_line_errors(tmp_path, real_dir):
    ref = tmp_path / "ref.json"
    cases = [
        (["stain", "fit", str(tmp_path / "missing.png"), "--out", str(ref)], "missing.png"),
        (["stain", "fit", str(real_dir / "broken.svs"), "--out", str(ref)], "broken.svs"),
        (["stain", "fit", str(real_dir / "he-tumor-target.png"), "--method", "vahadane", "--out", str(ref)], "vahadane"),
        (["stain", "apply", str(real_dir / "he-tumor-target.png"), "--ref", str(real_dir / "PROVENANCE.md"), "--out", str(tmp_path / "o.png")], "PROVENANCE.md"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args)
        assert r.exit_code != 0, args
        assert needle in r.output and "Traceback" not in r.output, r.output
