"""The HTML report and the QuPath export on small run folders built through the real store API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from runs import phantom_run, write_predict, write_summary  # noqa: E402

from tupac.cli import app  # noqa: E402
from tupac.report.geojson import polygon_area, validate_feature_collection  # noqa: E402
from tupac.report.html import SECTIONS, build_report  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
IDS = ["TUPAC-TR-001", "TUPAC-TR-002", "TUPAC-TR-003"]
FAILED = ("TUPAC-TR-004", "TUPAC-TR-004.svs: SlideDecodeError: tile (3, 7) at level 0 is corrupt")


@pytest.fixture(scope="module")
def predict_dir(tmp_path_factory) -> Path:
    """A real ``RUN/predict`` (light fit on synthetic features), copied into runs that need it."""
    return write_predict(tmp_path_factory.mktemp("pred"))


@pytest.fixture(scope="module")
def run_dir(small_cohort, tmp_path_factory) -> Path:
    """Three done slides (truth-derived heatmaps and detections), no predict outputs."""
    run = tmp_path_factory.mktemp("run") / "run"
    phantom_run(small_cohort, run)
    return run


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


# -- QuPath export ------------------------------------------------------------------------------
def test_export_qupath_cli_writes_valid_level0_geojson(run_dir: Path, small_cohort: Path, tmp_path: Path) -> None:
    from tupac.heatmaps.store import HeatmapStore
    from tupac.slide import open_slide

    out = tmp_path / "qp"
    res = CliRunner().invoke(app, ["export-qupath", "--run", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for sid in IDS:
        tumor = json.loads((out / f"{sid}.tumor.geojson").read_text())
        mit = json.loads((out / f"{sid}.mitoses.geojson").read_text())
        with open_slide(small_cohort / "training_image_data" / f"{sid}.svs", backend="openslide") as s:
            size, mpp = s.dimensions, s.mpp
        assert validate_feature_collection(tumor, size) == []
        assert validate_feature_collection(mit, size) == []
        # Points are the detections, exactly
        det = pd.read_csv(run_dir / "slides" / f"{sid}.mitoses.csv")
        pts = np.array([f["geometry"]["coordinates"] for f in mit["features"]])
        assert np.array_equal(pts, det[["x", "y"]].to_numpy())
        assert [f["properties"]["measurements"]["prob"] for f in mit["features"]] == det["prob"].tolist()
        # Polygons cover the thresholded heatmap: area (level-0 px² -> µm²) within 3 % of the mask's
        store = HeatmapStore.open(run_dir / "slides" / f"{sid}.zarr", mode="r")
        mask_um2 = float((store.read("tumor") >= 0.5).sum()) * store.mpp("tumor") ** 2
        poly_um2 = sum(polygon_area(f["geometry"]["coordinates"]) for f in tumor["features"]) * mpp**2
        assert tumor["features"], sid
        assert poly_um2 == pytest.approx(mask_um2, rel=0.03)
        # and they lie where the phantom's true tumor is: most of each region's vertices fall in truth tumor
        from PIL import Image

        truth = np.asarray(Image.open(small_cohort / "truth" / sid / "tumor.png")) > 0  # 4 µm/px
        xy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in tumor["features"]])
        r = np.clip((xy[:, 1] * mpp / 4.0).astype(int), 0, truth.shape[0] - 1)
        c = np.clip((xy[:, 0] * mpp / 4.0).astype(int), 0, truth.shape[1] - 1)
        from scipy import ndimage

        near = ndimage.binary_dilation(truth, iterations=3)  # outlines sit on the edge: allow 12 µm
        assert near[r, c].mean() > 0.95


def test_export_qupath_options_and_errors(run_dir: Path, tmp_path: Path) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    runner = CliRunner()
    res = runner.invoke(app, ["export-qupath", "--run", str(run), "--slide", IDS[1], "--threshold", "0.99",
                              "--mitosis-object", "annotation"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (run / "qupath").iterdir()) == [f"{IDS[1]}.mitoses.geojson", f"{IDS[1]}.tumor.geojson"]
    tumor = json.loads((run / "qupath" / f"{IDS[1]}.tumor.geojson").read_text())
    assert tumor == {"type": "FeatureCollection", "features": []}  # nothing reaches 0.99: empty, still valid
    mit = json.loads((run / "qupath" / f"{IDS[1]}.mitoses.geojson").read_text())
    assert {f["properties"]["objectType"] for f in mit["features"]} == {"annotation"}

    res = runner.invoke(app, ["export-qupath", "--run", str(run), "--slide", "TUPAC-TR-999"])
    assert res.exit_code != 0 and "no slide 'TUPAC-TR-999'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["export-qupath", "--run", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "no such run folder" in res.output
    # an uncommitted slide is skipped (and refused when asked for by name)
    (run / "slides" / f"{IDS[0]}.zarr" / "commit.json").unlink()
    res = runner.invoke(app, ["export-qupath", "--run", str(run)])
    assert res.exit_code == 0 and f"skipped {IDS[0]}" in res.output
    res = runner.invoke(app, ["export-qupath", "--run", str(run), "--slide", IDS[0]])
    assert res.exit_code != 0 and "not done" in res.output
    # a slide file that is gone: one line asking for --slide-mpp; with it the export works
    run2 = _copy_run(run_dir, tmp_path / "run2")
    rec = json.loads((run2 / "slides" / f"{IDS[2]}.zarr" / "commit.json").read_text())
    rec["input_path"] = str(tmp_path / "moved.svs")
    (run2 / "slides" / f"{IDS[2]}.zarr" / "commit.json").write_text(json.dumps(rec))
    res = runner.invoke(app, ["export-qupath", "--run", str(run2), "--slide", IDS[2]])
    assert res.exit_code != 0 and "--slide-mpp" in res.output
    res = runner.invoke(app, ["export-qupath", "--run", str(run2), "--slide", IDS[2], "--slide-mpp", "0.25"])
    assert res.exit_code == 0, res.output


# -- the report ---------------------------------------------------------------------------------
def _sections(html: str) -> dict[str, str]:
    parts = re.split(r'<section id="(\w+)">', html)[1:]
    return dict(zip(parts[::2], parts[1::2]))


def test_report_with_everything(run_dir: Path, predict_dir: Path, tmp_path: Path) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    shutil.copytree(predict_dir, run / "predict")
    write_summary(run, IDS, [FAILED], {"tiles_per_s": 3.2, "slides_per_h": 95.0, "seconds": 113.0, "tiles": 362})
    (run / "models.json").write_text(json.dumps([{
        "name": "locnet", "architecture": "LocNet", "task": "tumor", "mpp": 1.0, "patch_size": 140,
        "params": 1412345, "receptive_field": 140, "output_stride": 16, "fully_convolutional": True,
        "conv_layers": 12, "pool_layers": 4, "fc_layers": 0, "forward_ms": 44.0}]))
    pd.DataFrame({"slide_id": IDS, "tumor_area_mm2": [0.3, 0.3, 0.4]}).to_parquet(run / "features.parquet")
    CliRunner().invoke(app, ["export-qupath", "--run", str(run)])
    res = CliRunner().invoke(app, ["report", "--run", str(run), "--no-profile-networks", "--thumb-px", "320"])
    assert res.exit_code == 0, res.output
    html = (run / "report" / "index.html").read_text()
    sec = _sections(html)
    assert list(sec) == list(SECTIONS)
    for key, body in sec.items():
        assert "Not computed" not in body, (key, body[:300])
    # thumbnails and figures exist, referenced relatively, and are real PNGs of the asked size
    from PIL import Image

    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == 2 * len(IDS) + 2
    for src in srcs:
        assert not src.startswith("/") and (run / "report" / src).is_file()
    im = Image.open(run / "report" / "slides" / f"{IDS[0]}.overlay.png")
    assert max(im.size) == 320
    # metrics beside the published figures, labelled as such, with CIs
    m = sec["metrics"]
    assert "0.567 [0.464, 0.671]" in m and "0.617 [0.581, 0.651]" in m and "as reported by the papers" in m
    metrics = json.loads((run / "predict" / "metrics.json").read_text())
    kappa = metrics["summary"]["best"]["grade"]["kappa_quadratic_mean"]
    assert f"{kappa:.3f}" in m
    lo, hi = (float(v) for v in re.search(r"κ</td><td>[^<]*</td><td>\[([\d.]+), ([\d.]+)\]", m).groups())
    assert lo < hi
    # failed slide with its reason; throughput from the summary; QuPath links; networks
    assert FAILED[0] in sec["failed"] and "tile (3, 7) at level 0 is corrupt" in sec["failed"]
    assert "95.0" in sec["timings"] and "finalize" in sec["timings"]
    assert f"../qupath/{IDS[0]}.tumor.geojson" in sec["slides"]
    assert "LocNet" in sec["networks"] and "1.41 M" in sec["networks"]
    assert "3 slides × 1 features" in sec["features"]


def test_report_degrades_without_inputs(run_dir: Path, tmp_path: Path) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    # one slide never committed (interrupted), no predict outputs, no summary, no models table
    (run / "slides" / f"{IDS[2]}.zarr" / "commit.json").unlink()
    res = build_report(run, tmp_path / "elsewhere", max_side=200)
    html = res.index.read_text()
    sec = _sections(html)
    assert set(res.missing) == {"summary", "metrics", "biomarkers", "features", "networks"}
    for key in ("metrics", "biomarkers", "features", "networks"):
        assert "Not computed" in sec[key]
    assert "metrics.json not found" in sec["metrics"]
    assert IDS[2] in sec["failed"] and "not committed" in sec["failed"]
    assert sec["slides"].count('class="slide"') == 2
    for src in re.findall(r'<img src="([^"]+)"', html):
        assert (res.index.parent / src).is_file()
    # an empty run folder still gives a page
    empty = tmp_path / "empty"
    empty.mkdir()
    res = build_report(empty)
    assert "no committed slide" in res.index.read_text() and "slides" in res.missing
    with pytest.raises(Exception, match="no such run folder"):
        build_report(tmp_path / "missing")


def test_report_on_a_broken_input_keeps_other_sections(run_dir: Path, predict_dir: Path, tmp_path: Path) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    shutil.copytree(predict_dir, run / "predict")
    (run / "predict" / "biomarkers.csv").write_text("not,a\nbiomarker,table\n")
    (run / "slides" / f"{IDS[0]}.mitoses.csv").write_text("a,b\n1,2\n")
    res = build_report(run, max_side=200)
    sec = _sections(res.index.read_text())
    assert "Not computed" in sec["biomarkers"] and "biomarkers" in res.missing
    assert "Not computed" not in sec["metrics"]
    assert "thumbnail" in sec["slides"] and sec["slides"].count("<img") == 4  # the two good slides


def test_bootstrap_cis_agree_with_point_estimates() -> None:
    from scipy.stats import spearmanr

    from tupac.predict.metrics import quadratic_weighted_kappa
    from tupac.report.tables import _kappa_from_counts, bootstrap_kappa_ci, bootstrap_spearman_ci

    rng = np.random.default_rng(3)
    t = rng.integers(1, 4, 80)
    p = np.clip(t + rng.integers(-1, 2, 80), 1, 3)
    counts = np.zeros((1, 3, 3))
    np.add.at(counts[0], (t - 1, p - 1), 1)
    assert _kappa_from_counts(counts)[0] == pytest.approx(quadratic_weighted_kappa(t, p))
    lo, hi = bootstrap_kappa_ci(t, p, n_boot=500, seed=1)
    assert lo < quadratic_weighted_kappa(t, p) < hi and hi - lo < 0.4
    assert bootstrap_kappa_ci(t, p, n_boot=500, seed=1) == (lo, hi)  # seeded
    y = rng.normal(size=60)
    yhat = y + rng.normal(0, 0.7, 60)
    lo, hi = bootstrap_spearman_ci(y, yhat, n_boot=500, seed=0)
    assert lo < spearmanr(y, yhat).statistic < hi


def test_report_renders_in_headless_chromium(run_dir: Path, predict_dir: Path, tmp_path: Path, artifacts_dir: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium) - cannot render the report")
    run = _copy_run(run_dir, tmp_path / "run")
    shutil.copytree(predict_dir, run / "predict")
    write_summary(run, IDS, [FAILED])
    res = build_report(run, max_side=320)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,3000"]
    url = res.index.as_uri()
    dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for key in SECTIONS:
        assert f'<section id="{key}">' in dom.stdout
    srcs = re.findall(r'<img src="([^"]+)"', dom.stdout)
    assert len(srcs) == 2 * len(IDS) + 2
    for src in srcs:
        assert (res.index.parent / src).is_file(), src
    shot = artifacts_dir / "report_screenshot.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    from PIL import Image

    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (3000, 1400)
    assert im.reshape(-1, 3).std(axis=0).mean() > 20  # something was drawn, not a blank page


def test_report_warns_about_slides_without_tissue(run_dir: Path, tmp_path: Path) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    record = run / "slides" / f"{IDS[1]}.zarr" / "commit.json"
    data = json.loads(record.read_text())
    data["extra"]["no_tissue"] = True  # what the job records for a blank slide
    record.write_text(json.dumps(data))
    sec = _sections(build_report(run, tmp_path / "report", max_side=200).index.read_text())
    assert (f'<p class="warning">Warning: no tissue found on 1 slide(s): {IDS[1]}. They are committed with empty '
            "heatmaps") in sec["summary"]
    clean = _sections(build_report(run_dir, tmp_path / "clean", max_side=200).index.read_text())
    assert "no tissue found" not in clean["summary"]
