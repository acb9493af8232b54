"""``tupac info``: a summary for good slides, one line and a non-zero exit for bad ones."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tupac.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["info", *map(str, args)])


def test_info_text(real_dir):
    result = invoke(real_dir / "cmu-1-small-region.svs")
    assert result.exit_code == 0, result.output
    for text in ("aperio", "2220 x 2967", "0.499 um/px (slide)", "20x", "backend    cucim", "levels     1"):
        assert text in result.output


@pytest.mark.parametrize("backend", ["auto", "openslide", "cucim"])
def test_info_json_with_user_mpp(real_dir, backend):
    result = invoke(real_dir / "tcga-cr-7395-01a-01-ts1.svs", "--mpp", "0.5", "--json", "--backend", backend)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["mpp"] == 0.5 and info["mpp_source"] == "user" and info["objective_power"] is None
    assert [(lv["width"], lv["height"]) for lv in info["levels"]] == [(4443, 3567), (2221, 1783)]
    assert info["levels"][1]["downsample"] == pytest.approx(2.0005, abs=1e-4)
    assert info["backend"] == ("openslide" if backend == "openslide" else "cucim")


@pytest.mark.parametrize(
    "name,backend,problem",
    [
        ("tcga-cr-7395-01a-01-ts1.svs", "auto", "no microns-per-pixel"),
        ("broken.svs", "auto", "not a slide format"),
        ("broken.svs", "cucim", "not a TIFF"),
        ("unopenable.tiff", "auto", "Unsupported TIFF compression"),
        ("unopenable.tiff", "cucim", "52479"),
        ("unreadable.svs", "auto", "JPEG"),
        ("unreadable.svs", "openslide", "Bogus marker length"),
        ("boxes.tiff", "cucim", "cuCIM cannot read it"),
        ("does-not-exist.svs", "auto", "no such file"),
    ],
)
def test_bad_slides_give_one_line(real_dir, name, backend, problem):
    result = invoke(real_dir / name, "--backend", backend)
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert name in lines[0] and problem in lines[0] and "Traceback" not in result.output


def test_boxes_reads_with_auto(real_dir):
    result = invoke(real_dir / "boxes.tiff", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "openslide"
