"""Is a file safe to hand to cuCIM? Ask a child process first.

cuCIM is native code that can take the whole process down on a file it does not support (for
example a deflate-compressed TIFF: libtiff complains, then a segmentation fault). A Python
``try`` cannot catch that, so before the caller's process trusts cuCIM with a file, a child
process opens it and reads a small region at every level, under a timeout. The verdict is cached
per (path, size, mtime, cuCIM version): in memory for the process, and on disk
(``$TUPAC_CACHE_DIR`` or ``~/.cache/tupac``) so later processes, CLI runs and workers pay it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from tupac.slide.quiet import cufile_child_env, is_no_driver_noise

PROBE_TIMEOUT_S = 60.0

# Runs in the child; the path arrives as argv[1], never interpolated into code.
_PROBE_SCRIPT = r"""
import json, sys
import numpy as np
from cucim import CuImage
img = CuImage(sys.argv[1])
dims = [tuple(int(v) for v in d) for d in img.resolutions["level_dimensions"]]
if not dims or min(dims[0]) <= 0:
    raise SystemExit("cuCIM reports no pyramid levels")
for level, (w, h) in enumerate(dims):
    ds = img.resolutions["level_downsamples"][level]
    size = (min(64, w), min(64, h))
    for fx, fy in ((0, 0), (w // 2, h // 2)):
        x, y = min(fx, w - size[0]), min(fy, h - size[1])
        a = np.asarray(img.read_region((int(x * ds), int(y * ds)), size, level))
        if a.shape != (size[1], size[0], 3) or a.dtype != np.uint8:
            raise SystemExit(f"cuCIM returned {a.shape} {a.dtype} for a {size} read at level {level}")
print("TUPAC-PROBE " + json.dumps({"ok": True, "levels": dims}))
"""


@dataclass(frozen=True)
class ProbeVerdict:
    """Outcome of a cuCIM probe: ``ok``, or why not (``reason``)."""

    ok: bool
    reason: str = ""


_memo: dict[tuple, ProbeVerdict] = {}
_memo_lock = threading.Lock()


def cucim_version() -> str | None:
    """The installed cuCIM distribution's version, without importing it (None if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("cucim-cu13", "cucim-cu12", "cucim-cu11", "cucim"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, cucim_version())


def cache_dir() -> Path:
    """Where probe verdicts are kept across processes."""
    root = os.environ.get("TUPAC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tupac"
    )
    return Path(root) / "cucim-probe"


def _cache_file(key: tuple) -> Path:
    return cache_dir() / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".json")


def _load(key: tuple) -> ProbeVerdict | None:
    try:
        data = json.loads(_cache_file(key).read_text())
        if data.get("key") == list(key):
            return ProbeVerdict(bool(data["ok"]), str(data.get("reason", "")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _store(key: tuple, verdict: ProbeVerdict) -> None:
    """Atomic write (one file per key), so concurrent workers never see half a verdict."""
    target = _cache_file(key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": list(key), **asdict(verdict)}))
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only home only costs a re-probe


def probe_cucim(path: str | Path, timeout: float = PROBE_TIMEOUT_S, use_cache: bool = True) -> ProbeVerdict:
    """Open ``path`` with cuCIM in a child process and read a little of every level.

    Parameters
    ----------
    path : str or Path
        The slide file.
    timeout : float
        Seconds before the child is killed and the file declared unsafe.
    use_cache : bool
        Reuse (and record) the verdict for this file version.

    Returns
    -------
    ProbeVerdict
        ``ok`` when cuCIM read the file cleanly; otherwise ``reason`` says how it failed
        (crash with the signal name, timeout, or cuCIM's own error message).
    """
    path = Path(path)
    if cucim_version() is None:
        return ProbeVerdict(False, "cuCIM is not installed")
    key = _key(path)
    if use_cache:
        with _memo_lock:
            hit = _memo.get(key)
        if hit is None:
            hit = _load(key)
        if hit is not None:
            with _memo_lock:
                _memo[key] = hit
            return hit
    verdict, durable = _run_child(path, timeout)
    if use_cache:
        with _memo_lock:
            _memo[key] = verdict
        if durable:
            _store(key, verdict)
    return verdict


def _run_child(path: Path, timeout: float) -> tuple[ProbeVerdict, bool]:
    """Run the probe; returns the verdict and whether it may be cached on disk."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE_SCRIPT, str(path.resolve())],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env=cufile_child_env(),  # its cuFile log goes where this process's goes, never to ./cufile.log
        )
    except subprocess.TimeoutExpired:
        # Not cached on disk: a loaded machine can be slow without the file being at fault.
        return ProbeVerdict(False, f"cuCIM did not finish reading it within {timeout:g} s"), False
    for line in reversed(proc.stdout.splitlines()):
        if proc.returncode == 0 and line.startswith("TUPAC-PROBE "):
            return ProbeVerdict(True), True
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return ProbeVerdict(False, f"cuCIM crashed on it ({name}) in a probe process"), True
    return ProbeVerdict(False, f"cuCIM cannot read it: {_last_error(proc.stderr)}"), True


def _last_error(stderr: str) -> str:
    """The most telling line of a child's stderr (the exception, not cuFile noise)."""
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and "cufile" not in ln.lower() and not is_no_driver_noise(ln)]
    return lines[-1] if lines else "the probe process failed without a message"
