"""Keep cuCIM's GPU-file layer (libcufile) out of the working directory and off a CPU terminal.

cuCIM initializes NVIDIA's cuFile (GPUDirect Storage) whenever ``libcufile.so.0`` is already in
the process, which it is once PyTorch's CUDA wheels have been imported (every model actor imports
torch before it opens a slide). Two side effects follow, measured with cucim-cu13 26.10 and
nvidia-cufile 1.15:

- libcufile appends its log to ``./cufile.log`` in the current directory unless the environment
  variable ``CUFILE_LOGFILE_PATH`` names another file (``CUFILE_LOGGING_LEVEL`` changes what is
  logged, never whether the file is made); a path in a missing folder makes it print
  "warn: error opening log file" instead.
- On a machine without an NVIDIA driver it prints "dlopen error libcuda.so.1 ...", " missing cuda
  symbols while dynamic loading" and " cuFile initialization failed" on stdout from C, once at
  ``import cucim`` and once when a ``CuImage`` is first built; no setting turns that off, and Ray
  forwards a worker's stdout to the driver's terminal. cuCIM decodes on the CPU regardless.

So tupac points ``CUFILE_LOGFILE_PATH`` at ``RUN/logs/cufile.log`` when a run folder is known and
at ``/dev/null`` otherwise (a value the user set is left alone), and, only where no driver can be
loaded, drops exactly those three lines from what cuCIM writes while it initializes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import tempfile
import threading
from pathlib import Path

CUFILE_LOG_VAR = "CUFILE_LOGFILE_PATH"
CUFILE_LOG_NAME = "cufile.log"

# What libcufile prints when libcuda.so.1 is missing; matched as substrings of one line.
NO_DRIVER_LINES = (
    "dlopen error libcuda.so",
    "missing cuda symbols while dynamic loading",
    "cuFile initialization failed",
)

# The value this process put in CUFILE_LOGFILE_PATH, so that a later run folder may replace it
# while a value from the user (or inherited from a parent tupac process) stands.
_ours: str | None = None
_window_lock = threading.RLock()


def route_cufile_log(log_dir: str | Path | None) -> dict[str, str]:
    """Send libcufile's log to ``log_dir/cufile.log`` (``None``: nowhere) for this process and the
    processes it starts, unless the user chose a file.

    Must run before cuCIM initializes in a process: libcufile reads the variable once. The folder
    is made only when cuCIM is about to use it (:func:`prepare_cufile_log`), so a command that
    never opens a slide leaves no empty ``logs/`` behind.

    Parameters
    ----------
    log_dir : str or Path, optional
        The folder for ``cufile.log`` (made absolute, since workers may run elsewhere).

    Returns
    -------
    dict of str to str
        The variable this call set (to hand to remote Ray workers), or empty when the user's own
        ``CUFILE_LOGFILE_PATH`` was kept.
    """
    global _ours
    current = os.environ.get(CUFILE_LOG_VAR)
    if current is not None and current != _ours:
        return {}
    target = str(Path(log_dir).absolute() / CUFILE_LOG_NAME) if log_dir is not None else os.devnull
    os.environ[CUFILE_LOG_VAR] = target
    _ours = target
    return {CUFILE_LOG_VAR: target}


def prepare_cufile_log() -> None:
    """Make sure libcufile will write nowhere unexpected: default ``CUFILE_LOGFILE_PATH`` to
    ``/dev/null`` when nothing chose a file, and make the chosen file's folder (a missing one
    would make libcufile print a warning on stdout). Call right before cuCIM initializes."""
    if CUFILE_LOG_VAR not in os.environ:
        route_cufile_log(None)
    folder = os.path.dirname(os.environ[CUFILE_LOG_VAR])
    if folder:
        with contextlib.suppress(OSError):  # unwritable: libcufile warns once and logs nothing
            os.makedirs(folder, exist_ok=True)


def cufile_child_env() -> dict[str, str]:
    """``os.environ`` for a child process that may import cuCIM (the probe), with the log routed."""
    prepare_cufile_log()
    return dict(os.environ)


@functools.lru_cache(maxsize=1)
def cuda_driver_present() -> bool:
    """Whether ``libcuda.so.1`` (the NVIDIA driver's user library) can be loaded in this process.

    Loading it does not initialize CUDA; a process that uses the GPU loads it anyway.
    """
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def is_no_driver_noise(line: str | bytes) -> bool:
    """Whether ``line`` is one of libcufile's "no NVIDIA driver here" lines."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    return any(part in text for part in NO_DRIVER_LINES)


@contextlib.contextmanager
def native_noise_filtered():
    """While cuCIM initializes, hold back what C code writes to file descriptors 1 and 2, then
    pass it on without libcufile's no-driver lines.

    A no-op where a CUDA driver loads: there those lines never appear, and anything cuFile says
    is about a real GPU setup. Everything else written in the window (other threads included)
    comes out afterwards, in order per descriptor. Windows are serialized by a lock.
    """
    if cuda_driver_present():
        yield
        return
    with _window_lock:
        _flush_all()
        held = [h for h in map(_hold, (1, 2)) if h is not None]
        try:
            for fd, _, buf in held:
                os.dup2(buf.fileno(), fd)
            yield
        finally:
            _flush_all()
            for fd, saved, buf in held:
                os.dup2(saved, fd)
                os.close(saved)
                _pass_on(buf, fd)


def _hold(fd: int):
    """(fd, a copy of it, a buffer file), or None when ``fd`` is closed or no buffer can be made:
    then that descriptor is left as it is rather than failing the slide open."""
    try:
        buf = tempfile.TemporaryFile()
    except OSError:
        return None
    try:
        return fd, os.dup(fd), buf
    except OSError:
        buf.close()
        return None


def _pass_on(buf, fd: int) -> None:
    with buf:
        buf.seek(0)
        kept = [line for line in buf.read().splitlines(keepends=True) if not is_no_driver_noise(line)]
    data = b"".join(kept)
    while data:
        data = data[os.write(fd, data):]


def _flush_all() -> None:
    """Flush Python's and C's stdio buffers, so that nothing written before (or inside) a window
    lands on the wrong side of it."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)
