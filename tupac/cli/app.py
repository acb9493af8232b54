"""The Typer application object and options shared by every command.

Command modules (``tupac/cli/*_cmds.py``) register themselves on ``app``; they import the heavy
stages (torch, ray, slide readers) inside the command body so that ``tupac --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

from tupac import __version__
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


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tupac {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Tumor proliferation assessment in breast-cancer H&E whole-slide images."""


def fail(error: BaseException, code: int = 2) -> NoReturn:
    """Print ``error`` as one line on stderr (no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
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
