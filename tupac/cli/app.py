"""The Typer application object, options shared by every command, and the top-level error guard.

Command modules (``tupac/cli/*_cmds.py``) register themselves on ``app``; they import the heavy
stages (torch, ray, slide readers) inside the command body so that ``tupac --help`` stays fast.

Errors reach the user in one of two ways. A ``TupacError`` (bad input, named file and problem) is
printed by :func:`fail` as one line, exit 2. Anything else is unexpected: :func:`guarded_main`
prints ``error: <Type>: <message> (full traceback: <log>)``, exit 1, with the log in
``RUN/logs/`` for a command that has a run folder (:data:`RUN_FOLDER_OPTIONS`) and in the user log
folder otherwise; ``tupac --debug`` or ``TUPAC_DEBUG=1`` lets the traceback through instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tupac import __version__
from tupac.cli.crashlog import debug_from_env, summary_line, write_crash_log
from tupac.errors import TupacError

app = typer.Typer(
    name="tupac",
    help="Tumor proliferation assessment in breast-cancer H&E whole-slide images (TUPAC16 setting).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


@dataclass(frozen=True)
class RunFolder:
    """Which option of a command names its run folder: ``option``'s value (or ``default``), then
    ``below`` inside it."""

    option: str
    default: str | None = None
    below: str = ""


# Commands whose run folder receives crash logs and cuFile's log (RUN/logs/). Every command with a
# --run option must be listed (tests/test_cli_errors.py checks it); --out is a run folder only here.
RUN_FOLDER_OPTIONS: dict[str, RunFolder] = {
    "infer": RunFolder("--out"),
    "run": RunFolder("--out"),
    "demo": RunFolder("--out", default="demo-out", below="run"),
    "features": RunFolder("--run"),
    "fit": RunFolder("--run"),
    "predict": RunFolder("--run"),
    "report": RunFolder("--run"),
    "export-qupath": RunFolder("--run"),
    "mlflow-ui": RunFolder("--run"),
    # A run over the training cohort, read for its statistics: its logs/ is where a crash belongs.
    "ood-reference": RunFolder("--run"),
}


@dataclass
class _Invocation:
    debug: bool = False


_invocation = _Invocation()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tupac {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug",
        help="On an unexpected error, show the full traceback instead of one line and a log file "
             "(same as TUPAC_DEBUG=1).",
    ),
) -> None:
    """Tumor proliferation assessment in breast-cancer H&E whole-slide images."""
    _invocation.debug = debug


def fail(error: BaseException, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error`` as one line on stderr (no traceback) and exit with ``code``."""
    # escape: messages quote user paths and values, whose brackets rich would read as markup
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; turn a ``TupacError`` into a one-line message and a non-zero exit."""
    try:
        return fn(*args, **kwargs)
    except TupacError as e:
        fail(e)
    except FileNotFoundError as e:
        fail(e)


def is_tty() -> bool:
    return sys.stderr.isatty()


def run_folder_of(args: list[str]) -> Path | None:
    """The run folder named on a ``tupac`` command line (absolute), or None.

    Read from the words themselves, before Typer parses them, so that cuFile's log can be routed
    before any command code runs: the command is the first word after the root options, its run
    folder the value of its :data:`RUN_FOLDER_OPTIONS` entry (``--out RUN`` or ``--out=RUN``).
    """
    words = [w for w in args if w != "--"]
    command = next((w for w in words if not w.startswith("-")), None)
    spec = RUN_FOLDER_OPTIONS.get(command or "")
    if spec is None:
        return None
    rest = words[words.index(command) + 1:]
    value = spec.default
    for i, word in enumerate(rest):
        if word == spec.option and i + 1 < len(rest):
            value = rest[i + 1]
        elif word.startswith(spec.option + "="):
            value = word[len(spec.option) + 1:]
    if not value:
        return None
    return (Path(value) / spec.below).absolute()


def guarded_main(args: list[str] | None = None) -> None:
    """Run ``app`` on ``args`` (default ``sys.argv[1:]``) so that no error reaches the terminal as a
    traceback.

    Exits with the command's code; 1 after an unexpected exception (one line, traceback logged),
    130 after Ctrl-C (one line). ``--debug`` / ``TUPAC_DEBUG=1`` re-raise unexpected exceptions.
    """
    args = list(sys.argv[1:] if args is None else args)
    _invocation.debug = False
    run_dir = run_folder_of(args)
    if run_dir is not None:
        _route_cufile_log(run_dir / "logs")
    try:
        app(args=args, prog_name="tupac")
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED and _caused_by_ctrl_c(e):
            _interrupted()
        raise
    except Exception as e:
        if _invocation.debug or debug_from_env():
            raise
        _unexpected(e, ["tupac", *args], run_dir)


def _route_cufile_log(log_dir: Path) -> None:
    """cuFile's log into the run folder, set before any command code runs: libcufile reads the
    variable once, when cuCIM first initializes, and child processes (the cuCIM probe, a local
    Ray's workers) inherit it. Without a run folder cuCIM's reader switches that log off itself."""
    # Deferred: the tupac.slide package imports numpy, which `tupac --help` should not pay for.
    from tupac.slide.quiet import route_cufile_log

    route_cufile_log(log_dir)


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    """Typer turns a KeyboardInterrupt into a silent ``Exit(130)``; find it in the chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted() -> NoReturn:
    err_console.print("[bold red]interrupted[/] (Ctrl-C)", highlight=False)
    raise SystemExit(EXIT_INTERRUPTED)


def _unexpected(exc: Exception, argv: list[str], run_dir: Path | None) -> NoReturn:
    log, why_not = write_crash_log(exc, argv, run_dir)
    where = f"full traceback: {log}" if log else f"no log written ({why_not}); rerun with tupac --debug"
    err_console.print(f"[bold red]error:[/] {escape(summary_line(exc))} ({escape(where)})",
                      highlight=False, soft_wrap=True)
    raise SystemExit(EXIT_UNEXPECTED)
