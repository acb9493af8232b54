"""``tupac synth`` and ``tupac demo`` on the command line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tupac.cli import app


def test_synth_command_writes_a_cohort_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["synth", str(out), "--slides", "1", "--seed", "2", "--size-um", "600x500",
                                   "--mitosis-images", "1"])
    assert res.exit_code == 0, res.output
    assert "TUPAC-TR-001" in res.output
    assert (out / "training_image_data" / "TUPAC-TR-001.svs").is_file()
    assert (out / "mitoses" / "mitoses_image_data" / "01" / "01.tif").is_file()
    assert len((out / "training_ground_truth.csv").read_text().splitlines()) == 1


def test_synth_bad_size_is_one_line_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), "--size-um", "big"])
    assert res.exit_code != 0
    assert "--size-um" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), "--size-um", "10x10"])
    assert res.exit_code != 0 and "size_um" in res.output and "Traceback" not in res.output
