"""Unexpected errors: one line on the terminal, the full traceback in a log file.

A ``TupacError`` is a message meant for the user and is printed as such by ``app.fail``. Anything
else that reaches the top of a command is a bug or an environment problem the code did not
foresee; the user gets its type and message on one line plus the path of a log holding the
traceback, to attach to a bug report. ``tupac --debug`` or ``TUPAC_DEBUG=1`` shows the traceback
instead.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

from tupac import __version__

DEBUG_ENV = "TUPAC_DEBUG"
MAX_MESSAGE_CHARS = 300


def debug_from_env() -> bool:
    """Whether ``TUPAC_DEBUG`` asks for full tracebacks (set and not 0 / false / no / off)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def user_log_dir() -> Path:
    """Where crash logs go when the command has no run folder: ``$XDG_STATE_HOME/tupac/logs``,
    by default ``~/.local/state/tupac/logs``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "tupac" / "logs"


def log_dirs(run_dir: Path | None) -> list[Path]:
    """Folders to try for a crash log, best first: ``RUN/logs`` when the run folder exists (a
    typo'd ``--run`` must not create one), then the user log folder."""
    dirs = [run_dir / "logs"] if run_dir is not None and run_dir.is_dir() else []
    return [*dirs, user_log_dir()]


def summary_line(exc: BaseException) -> str:
    """``<Type>: <message>`` on one line: the type with its module unless built in, the first
    non-empty line of the message, shortened to ``MAX_MESSAGE_CHARS``."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return name
    message = lines[0] if len(lines[0]) <= MAX_MESSAGE_CHARS else lines[0][: MAX_MESSAGE_CHARS - 1] + "…"
    return f"{name}: {message}"


def write_crash_log(exc: BaseException, argv: list[str], run_dir: Path | None) -> tuple[Path | None, str]:
    """Write the command line, versions and ``exc``'s full traceback (causes included) to
    ``tupac-<UTC time>-<pid>.log`` in the first writable folder of :func:`log_dirs`.

    Returns
    -------
    (Path or None, str)
        The log written, or None and why no folder would take it.
    """
    now = datetime.now(timezone.utc)
    name = f"tupac-{now:%Y%m%dT%H%M%SZ}-{os.getpid()}.log"
    text = _report(exc, argv, now)
    problems = []
    for folder in log_dirs(run_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path, ""
        except OSError as e:
            problems.append(f"{folder}: {e.strerror or e}")
    return None, "; ".join(problems)


def _report(exc: BaseException, argv: list[str], now: datetime) -> str:
    head = [
        f"command: {shlex.join(argv)}",
        f"cwd: {_cwd()}",
        f"time: {now.isoformat(timespec='seconds')}",
        f"tupac {__version__}, Python {platform.python_version()} ({sys.executable}), {platform.platform()}",
        "",
    ]
    return "\n".join(head) + "".join(traceback.format_exception(exc))


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError as e:  # the folder was removed under the process
        return f"unknown ({e.strerror})"
