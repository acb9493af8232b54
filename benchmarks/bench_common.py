"""Small helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this
folder is on ``sys.path``)."""

from __future__ import annotations

import os
import resource
import threading
import time


def load_avg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: recorded with every figure (shared machines)."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (all threads, user + system)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


class PeakSampler:
    """Calls ``measure()`` every ``period`` seconds on a background thread, from ``__enter__`` to
    ``__exit__``, and keeps ``(time.time(), value)`` samples (e.g. summed RSS in bytes).

    Parameters
    ----------
    measure : callable () -> int
    period : float
        Seconds between samples.
    """

    def __init__(self, measure, period: float = 0.2) -> None:
        self.measure, self.period, self.samples = measure, period, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.measure()))
            self._stop.wait(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def peak(self, t0: float = float("-inf"), t1: float = float("inf")) -> int:
        """Largest sample taken between ``t0`` and ``t1`` (``time.time()`` seconds); 0 without one."""
        inside = [v for t, v in self.samples if t0 <= t <= t1]
        return max(inside) if inside else 0
