"""Memory of a job's whole process tree (Linux ``/proc``): what "peak memory of the job" means.

A local ``tupac infer`` is a driver plus the Ray processes it starts (GCS, raylet, the model
actors, the slide-task workers), every one a descendant of the driver. Their resident sets
overlap: each Ray worker maps the same torch and CUDA libraries, and summing RSS counts those
pages once per process (on this machine ~0.6 GB per idle torch worker, most of it shared). The
proportional set size (PSS) splits each shared page between the processes that map it, so the
sum over the tree is the memory the job really holds. Both are recorded; PSS is the one to
compare between runs.

Used by ``benchmarks/real_size.py`` and by the memory-scaling test; no Ray import.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TreeMemory", "TreeMemorySampler", "descendants", "tree_memory"]

_PROC = Path("/proc")


def _children_map() -> dict[int, list[int]]:
    """Parent PID -> child PIDs of every process now alive."""
    kids: dict[int, list[int]] = {}
    for d in _PROC.iterdir():
        if not d.name.isdigit():
            continue
        try:
            # Field 4 of /proc/PID/stat is the parent; the command (field 2) may hold spaces, so
            # split after its closing parenthesis.
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited between listing and reading
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, grandchildren, ...), alive now."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def _rollup_kb(pid: int) -> tuple[int, int]:
    """``(Rss, Pss)`` in kB from ``/proc/PID/smaps_rollup``; (0, 0) for a process that is gone."""
    rss = pss = 0
    try:
        with open(_PROC / str(pid) / "smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss


@dataclass(frozen=True)
class TreeMemory:
    """Memory of a process tree at one instant.

    Attributes
    ----------
    pss_mb, rss_mb : float
        Summed proportional / resident set size of the tree (MiB).
    processes : int
        Processes in the tree.
    """

    pss_mb: float
    rss_mb: float
    processes: int


def tree_memory(pid: int) -> TreeMemory:
    """Summed PSS and RSS (MiB) of ``pid`` and its descendants."""
    pids = descendants(pid)
    rss = pss = 0
    for p in pids:
        r, s = _rollup_kb(p)
        rss += r
        pss += s
    return TreeMemory(pss / 1024.0, rss / 1024.0, len(pids))


@dataclass
class TreeMemorySampler:
    """Samples :func:`tree_memory` of ``pid`` every ``period_s`` on a background thread.

    Use as a context manager around the run; ``peak`` is the sample with the largest PSS.

    Parameters
    ----------
    pid : int
        Root of the tree (e.g. a ``subprocess.Popen``'s pid); default this process.
    period_s : float
        Seconds between samples (reading ``smaps_rollup`` of ~15 processes takes a few ms).
    """

    pid: int = field(default_factory=os.getpid)
    period_s: float = 0.25
    samples: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), tree_memory(self.pid)))
            self._stop.wait(self.period_s)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> TreeMemory:
        """The sample with the largest summed PSS (zeros before the first sample)."""
        if not self.samples:
            return TreeMemory(0.0, 0.0, 0)
        return max((m for _, m in self.samples), key=lambda m: m.pss_mb)

    def summary(self) -> dict:
        """Peak PSS, the RSS at that instant, the largest RSS seen, process count and sample count."""
        peak = self.peak
        return {"peak_pss_mb": round(peak.pss_mb, 1), "rss_mb_at_peak": round(peak.rss_mb, 1),
                "peak_rss_mb": round(max((m.rss_mb for _, m in self.samples), default=0.0), 1),
                "processes_at_peak": peak.processes, "samples": len(self.samples)}
