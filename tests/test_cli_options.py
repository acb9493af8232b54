"""The command line's config options come from the stage config classes (tupac/cli/options.py).

A default or a help is written once, with the field (``tupac.config_check.option``); these tests
check that every command built from a config class shows the class's defaults and help, that every
field of the class is either an option or listed with the reason it is not, and that the values
given on the command line reach the class.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from tupac.cli import app
from tupac.cli.options import ConfigCommand, nest
from tupac.config_check import HELP


def _config_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _config_commands(cmd, (*prefix, name))
        elif isinstance(cmd, ConfigCommand):
            yield " ".join((*prefix, name)), cmd


COMMANDS = dict(_config_commands(typer.main.get_command(app)))


def test_the_stage_commands_are_built_from_their_config_classes():
    assert set(COMMANDS) == {"infer", "features", "fit", "report", "train tumor", "train mitosis"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_shows_its_fields_default_and_help(name):
    cmd = COMMANDS[name]
    spec = cmd.options
    cls = spec.load()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # Every field is an option or has a reason not to be one (options.parameters raises otherwise).
    exposed = {key.split(".")[0] for key in spec.flags}
    assert set(fields) == exposed | set(spec.not_exposed), name
    assert all(reason for reason in spec.not_exposed.values())
    params = {p.name: p for p in cmd.get_params(click.Context(cmd))}
    for key, flag in spec.flags.items():
        param = params[key.replace(".", "__")]
        assert set(param.opts) | set(param.secondary_opts) >= {d for decl in flag.decls for d in decl.split("/")}
        head, _, inner = key.partition(".")
        f = fields[head]
        if inner:  # a key of a nested mapping: documented by its own class, defaulted by the stage's mapping
            owner_field = next(g for g in dataclasses.fields(f.metadata["schema"]) if g.name == inner)
            help_text, default = owner_field.metadata[HELP], f.default_factory()[inner]
        else:
            help_text = f.metadata[HELP]
            default = f.default if f.default is not dataclasses.MISSING else None
        assert help_text.rstrip(".") in param.help, (name, key)
        if flag.optional:
            assert param.default is None and f"(default: {default})" in param.help
        elif default is not None:
            assert param.default == default, (name, key)
        else:
            assert param.default is None or param.required


def test_tupac_infer_help_shows_jobconfig_help_and_defaults():
    from tupac.infer.job import JobConfig

    result = CliRunner().invoke(app, ["infer", "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in ("max_attempts", "gpu_tf32", "num_gpus_per_actor", "backend"):
        assert next(f for f in dataclasses.fields(JobConfig) if f.name == name).metadata[HELP] in text, name
    assert "[default: 3]" in text and "--tumor-chunk" in text and "--dashboard" in text
    assert "--tissue-mpp" not in text  # listed as config-file only


def test_the_command_line_values_reach_the_config_class(monkeypatch, tmp_path):
    import tupac.cli.infer_cmds as infer_cmds
    import tupac.data.manifest as manifest

    seen = {}

    def fake_run(entries, cfg):
        seen["cfg"] = cfg
        return {"ok": True, "counts": {"DONE": 0, "FAILED": 0}, "skipped": [], "unfinished": [], "failed": []}

    monkeypatch.setattr(manifest, "load_cohort", lambda **kw: [])
    monkeypatch.setattr(infer_cmds, "_run", fake_run)
    result = CliRunner().invoke(app, ["infer", "--data", str(tmp_path), "--models", str(tmp_path / "M"),
                                      "--out", str(tmp_path / "R"), "--actors", "2", "--no-dashboard",
                                      "--gpu-tf32", "--tumor-chunk", "32"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.models, cfg.out) == (tmp_path / "M", tmp_path / "R")
    assert (cfg.actors, cfg.include_dashboard, cfg.gpu_tf32, cfg.tumor_chunk) == (2, False, True, 32)
    assert (cfg.max_attempts, cfg.backend, cfg.batch_size) == (3, "auto", None)  # the class's defaults


def test_listing_the_commands_imports_no_stage_module():
    # `tupac --help` builds every command; the config classes load only when one command is parsed.
    code = ("import sys, typer; from tupac.cli import app; typer.main.get_command(app); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'sklearn', 'numpy') "
            "or m.startswith(('tupac.infer', 'tupac.features', 'tupac.predict', 'tupac.tumor', 'tupac.mitosis'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_nest():
    assert nest({"train.epochs": 3, "train.lr": 0.1, "seed": 1}) == {"train": {"epochs": 3, "lr": 0.1}, "seed": 1}
