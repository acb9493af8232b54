"""Live progress of a cohort run: slides and tiles bars, throughput, the Ray dashboard link.

A rich display on a terminal; on a pipe (``ray job submit`` logs, CI) one line per finished
slide instead, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["CohortProgress"]


class CohortProgress:
    """Slides and tiles progress with tiles/s and slides/h.

    Parameters
    ----------
    total_slides : int
        Slides this run computes.
    console : rich.console.Console, optional
        Where to draw (default: stderr).
    live : bool, optional
        Draw live bars (default: when the console is a terminal).
    """

    def __init__(self, total_slides: int, console=None, live: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.t0 = time.monotonic()
        self.tiles_done = 0
        self.slides_done = 0
        self.failed = 0
        self._progress = Progress(
            TextColumn("{task.description:<7}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), console=self.console, disable=not self.live, transient=False,
        )
        self._slides = self._progress.add_task("slides", total=total_slides, rate="")
        self._tiles = self._progress.add_task("tiles", total=0, rate="")

    def __enter__(self) -> "CohortProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._refresh()
        self._progress.stop()

    def say(self, message: str) -> None:
        """A line above the bars (or on its own without them)."""
        self.console.print(message, highlight=False, soft_wrap=True)

    def rates(self) -> dict[str, float]:
        """``tiles_per_s`` and ``slides_per_h`` since the start."""
        dt = max(time.monotonic() - self.t0, 1e-9)
        return {"tiles_per_s": self.tiles_done / dt, "slides_per_h": self.slides_done * 3600.0 / dt, "seconds": dt}

    def add_tiles(self, n: int) -> None:
        """``n`` more tiles (windows) are known to be needed."""
        task = self._progress.tasks[self._tiles]
        self._progress.update(self._tiles, total=(task.total or 0) + n)

    def tiles(self, n: int) -> None:
        self.tiles_done += n
        self._progress.advance(self._tiles, n)
        self._refresh()

    def slide(self, slide_id: str, ok: bool, detail: str) -> None:
        self.slides_done += 1
        self.failed += not ok
        self._progress.advance(self._slides, 1)
        mark = "[green]DONE[/]" if ok else "[red]FAILED[/]"
        self.say(f"{mark} {slide_id}: {detail}")
        self._refresh()

    def _refresh(self) -> None:
        r = self.rates()
        failed = f", {self.failed} failed" if self.failed else ""
        self._progress.update(self._slides, rate=f"{r['slides_per_h']:.1f} slides/h{failed}")
        self._progress.update(self._tiles, rate=f"{r['tiles_per_s']:.2f} tiles/s")
