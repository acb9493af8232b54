"""One job per run folder: an OS-level lock on ``RUN/run.lock``, held from start to end.

Two jobs writing one run folder corrupt it: the second treats the first one's RUNNING slides as
interrupted and replaces their half-written stores, and the first then commits what is left. So
every command that computes into a run folder (``tupac infer``, ``run``, ``demo``, ``features``,
``fit``, ``jobs/infer_cohort.py``) takes this lock first, and a second job exits at once with
one line naming the folder and the owner.

Why ``flock`` on a file and not a PID file: the kernel releases the lock when the owning process
dies (killed, crashed, out of memory), so a lock can never go stale and nobody has to guess whether
a PID still means the same process. The file itself stays (deleting it would race with a process
that has just opened it); its content, the owner's host, pid, command and start time, is only
read to word the refusal, and is cleared on release. On Linux, ``flock`` on NFS is mapped to
POSIX byte-range locks, so the lock also holds between nodes that share the run folder over NFS.

The lock is re-entrant within a process: ``tupac run`` holds it and the stages it calls
(inference, features, fit) take it again without blocking themselves.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tupac.errors import RunFolderBusyError

__all__ = ["LOCK_FILE", "run_lock", "read_owner"]

LOCK_FILE = "run.lock"

_held: dict[Path, list[int]] = {}  # resolved run folder -> [fd, depth]; re-entrancy within this process
_guard = threading.Lock()


def read_owner(run_dir: str | Path) -> dict | None:
    """The owner recorded in ``RUN/run.lock`` (``host``, ``pid``, ``command``, ``started``), or None.

    Informational only: whether the folder is locked is decided by the kernel lock, not by this.
    """
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text()
        owner = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: dict | None) -> str:
    if not owner:
        return "owner not recorded yet (the other job is starting)"
    return (f"{owner.get('command', 'a tupac job')}, pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, "
            f"started {owner.get('started', '?')}")


def _refusal(run_dir: Path) -> RunFolderBusyError:
    # The owner writes its record right after taking the lock; give a job that started at the
    # same moment a short while to do so, so that the message can name it.
    owner = read_owner(run_dir)
    for _ in range(20):
        if owner:
            break
        time.sleep(0.05)
        owner = read_owner(run_dir)
    return RunFolderBusyError(
        run_dir, f"run folder is in use by another tupac job ({_describe(owner)}); wait for it to finish "
                 "or write to another folder")


def _acquire(run_dir: Path, command: str) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(run_dir) from None
    except BaseException:
        os.close(fd)
        raise
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
             "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    os.fsync(fd)
    return fd


def _release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # no stale owner for a later reader
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | Path, command: str, create: bool = True) -> Iterator[Path | None]:
    """Hold the run folder's lock for the duration of the ``with`` block.

    Parameters
    ----------
    run_dir : path-like
        The run folder (created if missing, as the job would).
    command : str
        What is running (``"tupac infer"``), recorded for the refusal message of a second job.
    create : bool
        Create a missing run folder (commands that make one). Commands that only read and add to
        an existing run (features, fit) pass False: with no folder there is nothing to
        protect, no lock is taken (None is yielded) and the command reports the missing folder
        in its own words.

    Yields
    ------
    Path or None
        The lock file; None when the folder is missing and ``create`` is False.

    Raises
    ------
    RunFolderBusyError
        Another process holds the folder; the message names the folder and that job's command,
        pid, host and start time.
    """
    key = Path(run_dir).resolve()
    if not create and not key.is_dir():
        yield None
        return
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            _held[key] = [_acquire(key, command), 1]
    try:
        yield key / LOCK_FILE
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                _release(entry[0])
