"""The job's slide tasks measure the out-of-distribution statistics and commit the verdict (no Ray:
the tasks are called directly, the way a Ray worker calls them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from test_job_support import make_cohort, make_models, slides_of


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def slide_and_cards(tmp_path_factory, models):
    from tupac.heatmaps.prepare import CardInfo

    cohort = make_cohort(tmp_path_factory.mktemp("cohort") / "root", n=1)
    cards = {t: CardInfo.from_dir(t, models / t) for t in ("tumor", "mitosis")}
    return slides_of(cohort)[0], cards


def _with_reference(info, ref):
    from tupac.features.ood import REFERENCE_KEY

    return dataclasses.replace(info, card=info.card.with_metadata(extra={**info.card.extra, REFERENCE_KEY: ref}))


def _prepare_and_finalize(slide: Path, cards, out: Path, tumor_area_mm2: float = 0.2, thresholds=None):
    from tupac.heatmaps import read_commit
    from tupac.heatmaps.commit import input_fingerprint
    from tupac.infer.slide_task import finalize_slide, prepare_slide

    store = str(out / "slides" / f"{slide.stem}.zarr")
    plan = prepare_slide(slide.stem, str(slide), None, store, cards, {"tumor": 16, "mitosis": 32})
    # No model runs here: nothing but the tissue mask is written, so the commit vouches for no tumor window.
    plan = dataclasses.replace(plan, tumor_windows=np.zeros((0, 2), np.int64))
    finalize_slide(slide.stem, str(slide), store, plan, cards, input_fingerprint(slide), np.zeros((0, 2), np.int64),
                   {}, {"tumor_area_mm2": tumor_area_mm2}, {"sigma_px": 8.0, "nms_radius_px": 30.0}, thresholds)
    return plan, read_commit(store)


def test_the_job_measures_the_slide_and_commits_the_verdict(slide_and_cards, tmp_path):
    from tupac.features.ood import NO_REFERENCE, reference_from_stats
    from tupac.infer.job import _ood_slides

    slide, cards = slide_and_cards
    plan, record = _prepare_and_finalize(slide, cards, tmp_path / "old")
    # Per model resolution, the pixel statistics; the cards (like every card trained before) have no reference.
    assert set(plan.qc) == {"tumor", "mitosis"} and plan.qc["tumor"]["h_od_p50"] > 0
    assert plan.qc["tumor"]["sharpness"] != plan.qc["mitosis"]["sharpness"]  # two resolutions, two textures
    assert "qc_s" in plan.steps_s  # the driver puts the plan's steps in the commit's timings
    ood = record.extra["ood"]
    assert ood["ood"] is False and ood["note"] == f"{NO_REFERENCE} (mitosis, tumor)"
    assert ood["stats"]["tumor"]["tumor_fraction"] > 0 and ood["stats"]["mitosis"]["mitoses_per_mm2"] == 0

    # A reference from slides like this one: in distribution.
    like = {t: _with_reference(c, reference_from_stats([plan.qc[t]] * 5)) for t, c in cards.items()}
    _, record = _prepare_and_finalize(slide, like, tmp_path / "like")
    assert record.extra["ood"]["ood"] is False and "tumor:h_od_p50" in record.extra["ood"]["checked"]

    # A reference from much paler training slides (OD a third of this slide's): flagged, with reasons.
    pale = {t: {k: v / 3 for k, v in plan.qc[t].items()} for t in cards}
    unlike = {t: _with_reference(c, reference_from_stats([pale[t]] * 5)) for t, c in cards.items()}
    _, record = _prepare_and_finalize(slide, unlike, tmp_path / "unlike")
    ood = record.extra["ood"]
    assert ood["ood"] is True
    assert any(r.startswith("hematoxylin OD (median)") and "above the training range" in r and "(tumor model" in r
               for r in ood["reasons"]), ood["reasons"]
    assert _ood_slides(tmp_path / "unlike", [slide.stem]) == [{"slide_id": slide.stem, "reasons": "; ".join(ood["reasons"])}]
    assert _ood_slides(tmp_path / "like", [slide.stem]) == []

    # The thresholds are the job's options: a z-score limit no statistic reaches flags nothing.
    _, record = _prepare_and_finalize(slide, unlike, tmp_path / "lenient", thresholds={"max_z": 1e9, "margin": 0.25})
    assert record.extra["ood"]["ood"] is False and record.extra["ood"]["checked"]


def test_the_infer_summary_prints_a_yellow_warning_per_flagged_slide(monkeypatch, tmp_path):
    from io import StringIO

    from rich.console import Console

    import tupac.cli.infer_cmds as infer_cmds

    buf = StringIO()
    monkeypatch.setattr(infer_cmds, "console", Console(file=buf, width=300, force_terminal=True))
    summary = {"counts": {"DONE": 2, "FAILED": 0}, "skipped": [], "unfinished": [], "failed": [],
               "ood": [{"slide_id": "dark", "reasons": "mean optical density 0.97 above the training range 0.34-0.42"}]}
    infer_cmds._print_summary(summary, tmp_path)
    out = buf.getvalue()
    assert "\x1b[33mwarning:" in out  # yellow
    plain = " ".join(out.split())
    assert "dark: out of distribution for the models (mean optical density 0.97 above the training range 0.34-0.42)" in plain


def test_ood_reference_records_the_training_distribution_in_an_existing_card(slide_and_cards, models, tmp_path):
    import shutil

    from PIL import Image
    from typer.testing import CliRunner

    from tupac.cli import app
    from tupac.features.ood import REFERENCE_KEY
    from tupac.heatmaps.prepare import CardInfo
    from tupac.models.io import load_card

    slide, cards = slide_and_cards
    m = tmp_path / "models"
    shutil.copytree(models, m)
    r = CliRunner().invoke(app, ["ood-reference", "--model", str(m / "tumor"), str(slide.parent)])
    assert r.exit_code == 0, r.output
    assert "1 of 1 input(s) with tissue; 6 statistics" in " ".join(r.output.split())
    new = CardInfo.from_dir("tumor", m / "tumor")
    assert new.weights_sha256 == cards["tumor"].weights_sha256  # weights untouched: no output goes stale
    assert new.card.extra["threshold"] == cards["tumor"].card.extra["threshold"]
    ref = new.card.extra[REFERENCE_KEY]
    assert ref["n"] == 1 and ref["stats"]["h_od_p50"]["median"] > 0
    # One training slide says too little about a distribution: the job checks nothing against it, and says so.
    _, record = _prepare_and_finalize(slide, {**cards, "tumor": new}, tmp_path / "run")
    ood = record.extra["ood"]
    assert ood["ood"] is False and ood["checked"] == []
    assert "reference from fewer than 3 training items (tumor: 1): not checked" in ood["note"]

    # Images (the mitosis training fields) are measured whole.
    (tmp_path / "fields").mkdir()
    rgb = np.asarray(Image.open(Path(__file__).parents[1] / "fixtures" / "real" / "he-tumor-target.png").convert("RGB"))
    Image.fromarray(rgb[:300, :300]).save(tmp_path / "fields" / "a.png")
    Image.fromarray(rgb[300:600, :300]).save(tmp_path / "fields" / "b.tif")
    r = CliRunner().invoke(app, ["ood-reference", "--model", str(m / "mitosis"), "--images", str(tmp_path / "fields")])
    assert r.exit_code == 0, r.output
    assert load_card(m / "mitosis").extra[REFERENCE_KEY]["n"] == 2

    # From a run over the training cohort: the job's own statistics, tumor fraction and mitotic density included.
    r = CliRunner().invoke(app, ["ood-reference", "--model", str(m / "tumor"), "--run", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    stats = load_card(m / "tumor").extra[REFERENCE_KEY]["stats"]
    assert stats["tumor_fraction"]["median"] == pytest.approx(ood["stats"]["tumor"]["tumor_fraction"], rel=1e-5)
    r = CliRunner().invoke(app, ["ood-reference", "--model", str(m / "mitosis"), "--run", str(tmp_path / "run")])
    assert "mitoses_per_mm2" in load_card(m / "mitosis").extra[REFERENCE_KEY]["stats"]
    r = CliRunner().invoke(app, ["ood-reference", "--model", str(m / "mitosis")])
    assert r.exit_code != 0 and "either training inputs or --run" in r.output
