"""``tupac models``: the Fig. 2 table as JSON and as a table; bad options give one line, exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tupac.cli import app
from tupac.models.profile import profile_models


def test_profile_rows_count_layers_and_parameters():
    rows = {r["name"]: r for r in profile_models(["mitosnet", "locnet"], repeats=1)}
    m = rows["mitosnet"]
    # 4 convs + FC conv + classifier conv, 4 pools; parameters counted by hand from the layer list.
    hand = (3 * 16 * 16 + 16) + 3 * (16 * 16 * 9 + 16) + (16 * 200 * 9 + 200) + (200 * 2 + 2)
    assert (m["conv_layers"], m["pool_layers"], m["fc_layers"], m["params"]) == (6, 4, 0, hand)
    assert m["receptive_field"] == m["patch_size"] == 79 and m["forward_ms"] > 0
    assert rows["locnet"]["conv_layers"] == 12 and rows["locnet"]["receptive_field"] == 140


@pytest.mark.slow
def test_models_command_prints_every_registered_network():
    runner = CliRunner()
    res = runner.invoke(app, ["models", "--json", "--repeats", "1", "--task", "mitosis"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["name"] for r in rows} >= {"locnet", "mitosnet", "googlenet_fcn", "densenet121", "googlenet"}
    assert all(r["task"] == "mitosis" and r["mpp"] == 0.25 for r in rows)
    table = runner.invoke(app, ["models", "--repeats", "1"])
    assert table.exit_code == 0 and "mitosnet" in table.stdout and "37,146" in table.stdout


def test_bad_task_is_one_line_and_exit_2():
    res = CliRunner().invoke(app, ["models", "--task", "grade"])
    assert res.exit_code == 2 and "expected 'tumor' or 'mitosis'" in res.output
    assert "Traceback" not in res.output
