"""No traceback on the terminal: an unexpected error is one line plus the path of a log file.

The end-to-end tests run ``python -m tupac`` in a child process on inputs that make a library
raise something tupac does not turn into a ``TupacError`` today (a file where ``report`` or
``synth`` needs a folder). Should one of those become a proper ``TupacError`` (exit 2), pick
another input that still reaches the top as a raw exception.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from tupac.cli import app
from tupac.cli.app import RUN_FOLDER_OPTIONS, run_folder_of
from tupac.cli.crashlog import MAX_MESSAGE_CHARS, log_dirs, summary_line, user_log_dir, write_crash_log

LOG_LINE = re.compile(r"^error: (?P<what>.+) \(full traceback: (?P<log>.+)\)$")
LOG_NAME = re.compile(r"^tupac-\d{8}T\d{6}Z-\d+\.log$")


def tupac(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m tupac ARGS`` in ``cwd``, with crash logs of commands without a run folder kept
    in ``cwd/state`` and no debug switch inherited from the caller."""
    e = {k: v for k, v in os.environ.items() if k != "TUPAC_DEBUG"}
    e.update({"XDG_STATE_HOME": str(cwd / "state"), **env})
    return subprocess.run([sys.executable, "-m", "tupac", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> re.Match:
    """The run printed exactly one line, ``error: ... (full traceback: LOG)``, and no traceback."""
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    match = LOG_LINE.match(lines[0])
    assert match, lines[0]
    return match


@pytest.fixture
def report_over_a_file(tmp_path) -> Path:
    """A run folder whose ``report`` is a file: ``tupac report`` fails in ``Path.mkdir``."""
    run = tmp_path / "RUN"
    run.mkdir()
    (run / "report").write_text("not a folder\n")
    return run


def test_unexpected_error_is_one_line_and_a_log_in_the_run_folder(tmp_path, report_over_a_file):
    proc = tupac(["report", "--run", "RUN"], tmp_path)
    assert proc.returncode == 1
    match = one_error_line(proc)
    assert match["what"].startswith("FileExistsError: [Errno 17] File exists:")
    log = Path(match["log"])
    assert log.parent == report_over_a_file / "logs" and LOG_NAME.match(log.name)
    text = log.read_text()
    assert text.startswith("command: tupac report --run RUN\n")
    assert "Traceback (most recent call last)" in text and "in build_report" in text
    assert text.rstrip().endswith(f"FileExistsError: [Errno 17] File exists: '{report_over_a_file / 'report'}'")
    assert not (tmp_path / "state").exists()


def test_without_a_run_folder_the_log_goes_to_the_user_state_folder(tmp_path):
    (tmp_path / "taken").write_text("a file where the cohort folder should go\n")
    proc = tupac(["synth", "taken", "--slides", "1"], tmp_path)
    assert proc.returncode == 1
    match = one_error_line(proc)
    assert match["what"].startswith("NotADirectoryError: ")
    log = Path(match["log"])
    assert log.parent == tmp_path / "state" / "tupac" / "logs"
    assert "NotADirectoryError" in log.read_text()


@pytest.mark.parametrize("how", [{"args": ["--debug"]}, {"env": {"TUPAC_DEBUG": "1"}}], ids=["--debug", "TUPAC_DEBUG"])
def test_debug_shows_the_full_traceback(tmp_path, report_over_a_file, how):
    proc = tupac([*how.get("args", []), "report", "--run", "RUN"], tmp_path, **how.get("env", {}))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("FileExistsError: [Errno 17] File exists:")
    assert not (report_over_a_file / "logs").exists()


def test_tupac_errors_stay_one_line_exit_2_without_a_log(tmp_path):
    proc = tupac(["report", "--run", "missing"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "full traceback" not in proc.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "missing").exists()


# A command added through the ordinary registration API, so that the guard sees exceptions no
# real input produces deterministically (a Ctrl-C, a multi-line message); the guard is unchanged.
EXTRA_COMMAND = """
from tupac.cli import app, main

@app.command("explode")
def explode(kind: str) -> None:
    if kind == "ctrl-c":
        raise KeyboardInterrupt
    raise RuntimeError("first line\\nsecond line")

main()
"""


def explode(kind: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TUPAC_DEBUG"}
    env["XDG_STATE_HOME"] = str(cwd / "state")
    return subprocess.run([sys.executable, "-c", EXTRA_COMMAND, "explode", kind], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    proc = explode("ctrl-c", tmp_path)
    assert proc.returncode == 130
    assert proc.stderr.strip() == "interrupted (Ctrl-C)"
    assert not (tmp_path / "state").exists()


def test_a_multi_line_message_is_cut_to_its_first_line(tmp_path):
    proc = explode("error", tmp_path)
    assert proc.returncode == 1
    match = one_error_line(proc)
    assert match["what"] == "RuntimeError: first line"
    assert "first line\nsecond line" in Path(match["log"]).read_text()


# --- the pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (["infer", "--data", "D", "--models", "M", "--out", "R"], "R"),
    (["--debug", "report", "--run=R/sub"], "R/sub"),
    (["fit", "--labels", "L.csv", "--run", "R"], "R"),
    (["demo"], "demo-out/run"),
    (["demo", "--out", "D"], "D/run"),
    (["tissue", "S.svs", "--out", "mask.png"], None),
    (["train", "tumor", "--data", "D", "--out", "M"], None),
    (["--help"], None),
    ([], None),
])
def test_run_folder_of_a_command_line(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_folder_of(args) == (None if expected is None else tmp_path / expected)


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), {opt for p in cmd.params for opt in p.opts}


def test_every_command_with_a_run_folder_is_listed():
    """A new command taking --run must name it in RUN_FOLDER_OPTIONS, or its crash logs and
    cuFile's log would miss the run folder; every entry must name a real option."""
    options = dict(_commands(typer.main.get_command(app)))
    with_run = {name for name, opts in options.items() if "--run" in opts}
    assert with_run <= set(RUN_FOLDER_OPTIONS)
    for name, spec in RUN_FOLDER_OPTIONS.items():
        assert spec.option in options[name], (name, spec.option)


def test_summary_line():
    assert summary_line(ValueError("bad\n  detail")) == "ValueError: bad"
    assert summary_line(KeyError()) == "KeyError"
    assert summary_line(subprocess.TimeoutExpired("cmd", 1)).startswith("subprocess.TimeoutExpired: Command 'cmd'")
    long = summary_line(RuntimeError("x" * 1000))
    assert len(long) == len("RuntimeError: ") + MAX_MESSAGE_CHARS and long.endswith("…")


def test_a_missing_run_folder_is_not_created_for_a_log(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert log_dirs(tmp_path / "typo") == [user_log_dir()]
    try:
        raise OSError("disk on fire")
    except OSError as e:
        log, why = write_crash_log(e, ["tupac", "x"], tmp_path / "typo")
    assert why == "" and log.parent == tmp_path / "state" / "tupac" / "logs"
    assert not (tmp_path / "typo").exists()
    assert "OSError: disk on fire" in log.read_text()


def test_no_writable_folder_says_why(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))  # a file: no folder can be made inside
    log, why = write_crash_log(RuntimeError("x"), ["tupac"], None)
    assert log is None and str(blocker / "tupac" / "logs") in why
