"""The ``SlideReader`` protocol: what every slide backend provides, and the shared implementation.

All coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)`` in pixels of the
level or resolution being read. Pixels are returned as ``uint8`` arrays of shape
``(height, width, 3)`` (RGB; alpha is composited onto white, as glass looks). Area outside the
slide is white (255), never an exception.

A read at ``level`` starts at level pixel ``floor(x / downsample)``, the same integer convention
for every backend (cuCIM's own; OpenSlide is asked for the level-0 point of that level pixel).

``BaseSlideReader`` holds everything that does not depend on the decoder (MPP level choice,
resampling, thumbnails in strips, batch reads, the context manager); a backend supplies
``_read_level`` (one window in level pixels) and ``_close``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from tupac.errors import ConfigError, ResolutionError, SlideOpenError
from tupac.geometry import size_at_mpp
from tupac.slide.metadata import SlideInfo
from tupac.slide.resample import LevelPlan, plan_level, resize_window, source_window, strip_rows

WHITE = 255


@runtime_checkable
class SlideReader(Protocol):
    """A whole-slide image opened for reading. Backends: OpenSlide, cuCIM.

    Readers are context managers: ``with open_slide(p) as s: ...`` closes the file handle.
    """

    path: Path
    backend: str
    """Name of the backend that reads pixels ("openslide" or "cucim")."""

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each pyramid level, level 0 first."""

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each level relative to level 0."""

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""

    @property
    def mpp(self) -> float:
        """Level-0 resolution in micrometers per pixel (from the slide, or the caller's ``mpp=``)."""

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification (e.g. 20 or 40), when the metadata gives it."""

    @property
    def vendor(self) -> str | None:
        """Format vendor as OpenSlide names it ("aperio", "generic-tiff", ...)."""

    def read_region(self, xy_l0: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` pixels at ``level`` whose top-left is ``xy_l0``; out-of-slide area is white.

        Returns ``(height, width, 3)`` uint8. Raises ``SlideDecodeError`` when tile data is corrupt.
        """

    def read_regions(
        self, xys_l0: Sequence[tuple[int, int]] | np.ndarray, level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Batch read: ``(n, height, width, 3)`` uint8, one tile per origin (``(n, 2)`` level-0 x, y).

        Backends accept ``num_workers=`` (decoder threads) as an optional keyword.
        """

    def read_region_mpp(
        self, xy_l0: tuple[int, int], size: tuple[int, int], mpp: float, allow_upsample: bool = False
    ) -> np.ndarray:
        """Read ``size`` pixels at resolution ``mpp`` (um/px) whose top-left is ``xy_l0``.

        Reads the coarsest level at or finer than ``mpp`` (5% tolerance) and area-averages down;
        a target finer than level 0 raises ``ResolutionError`` unless ``allow_upsample``.
        """

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` um/px (coarser than level 0), ``(h, w, 3)`` uint8,
        ``(w, h) = geometry.size_at_mpp(dimensions, self.mpp, mpp)``."""

    def close(self) -> None:
        """Release the file handle."""


def _size(size: Sequence[int], source: Path) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: size must be (width, height), got {size!r}") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"{source}: size must be positive, got {size!r}")
    return w, h


class BaseSlideReader:
    """Shared implementation of ``SlideReader``; backends subclass it.

    Parameters
    ----------
    path : Path
        The slide file.
    info : SlideInfo
        Geometry and metadata, already validated (MPP present).
    """

    backend = "base"
    max_window_px = 8 * 1024 * 1024
    """Most source pixels one ``thumbnail`` strip reads (24 MiB of RGB; the sums at a 2x
    reduction take about 4x that, less at larger reductions)."""

    def __init__(self, path: Path, info: SlideInfo) -> None:
        self.path = Path(path)
        self.info = info
        self.closed = False

    # --- metadata -------------------------------------------------------------------------
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self.info.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.info.level_downsamples

    @property
    def level_count(self) -> int:
        return len(self.info.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.info.level_dimensions[0]

    @property
    def mpp(self) -> float:
        return self.info.mpp

    @property
    def objective_power(self) -> float | None:
        return self.info.objective_power

    @property
    def vendor(self) -> str | None:
        return self.info.vendor

    def level_mpp(self, level: int) -> float:
        """Micrometers per pixel of ``level``."""
        return self.mpp * self.level_downsamples[self._level(level)]

    # --- pixels ---------------------------------------------------------------------------
    def read_region(self, xy_l0: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        level = self._level(level)
        w, h = _size(size, self.path)
        self._check_open()
        x_lv, y_lv = self._to_level(xy_l0, level)
        return self._read_level(x_lv, y_lv, level, w, h)

    def read_regions(
        self,
        xys_l0: Sequence[tuple[int, int]] | np.ndarray,
        level: int,
        size: tuple[int, int],
        num_workers: int = 1,
    ) -> np.ndarray:
        level = self._level(level)
        w, h = _size(size, self.path)
        self._check_open()
        xys = _origins(xys_l0, self.path)
        out = np.empty((len(xys), h, w, 3), dtype=np.uint8)
        ds = self.level_downsamples[level]
        lv = np.floor(xys / ds).astype(np.int64) if ds != 1.0 else xys

        def one(i: int) -> None:
            out[i] = self._read_level(int(lv[i, 0]), int(lv[i, 1]), level, w, h)

        if num_workers > 1 and len(xys) > 1:
            # Decoders release the GIL (OpenSlide through ctypes), so threads read in parallel.
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                list(pool.map(one, range(len(xys))))
        else:
            for i in range(len(xys)):
                one(i)
        return out

    def read_region_mpp(
        self, xy_l0: tuple[float, float], size: tuple[int, int], mpp: float, allow_upsample: bool = False
    ) -> np.ndarray:
        w, h = _size(size, self.path)
        self._check_open()
        plan = plan_level(self.mpp, self.level_downsamples, mpp, allow_upsample, source=str(self.path))
        return self._read_plan(float(xy_l0[0]), float(xy_l0[1]), w, h, plan)

    def thumbnail(self, mpp: float) -> np.ndarray:
        self._check_open()
        plan = plan_level(self.mpp, self.level_downsamples, mpp, allow_upsample=False, source=str(self.path))
        w, h = size_at_mpp(self.dimensions, self.mpp, mpp)
        out = np.empty((h, w, 3), dtype=np.uint8)
        rows = strip_rows(h, w, plan.scale, self.max_window_px)
        l0_per_px = mpp / self.mpp
        for r0 in range(0, h, rows):
            n = min(rows, h - r0)
            out[r0 : r0 + n] = self._read_plan(0.0, r0 * l0_per_px, w, n, plan)
        return out

    def _read_plan(self, x0: float, y0: float, w: int, h: int, plan: LevelPlan) -> np.ndarray:
        """Read ``w x h`` output pixels whose top-left is level-0 point ``(x0, y0)`` as ``plan`` says."""
        ds = self.level_downsamples[plan.level]
        ox, oy = x0 / ds, y0 / ds
        if not plan.resample:
            return self._read_level(math.floor(ox), math.floor(oy), plan.level, w, h)
        sx, lw, fx = source_window(ox, w, plan.scale)
        sy, lh, fy = source_window(oy, h, plan.scale)
        window = self._read_level(sx, sy, plan.level, lw, lh)
        return resize_window(window, (fx, fy), (w, h), plan.scale)

    # --- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.dimensions[0]}x{self.dimensions[1]} @ {self.mpp:g} um/px"
        return f"<{type(self).__name__} {self.path.name} {state}>"

    # --- for backends ---------------------------------------------------------------------
    def _read_level(self, x_lv: int, y_lv: int, level: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 at ``level`` from level pixel ``(x_lv, y_lv)``; white outside."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _level(self, level: int) -> int:
        if not (isinstance(level, (int, np.integer)) and 0 <= level < self.level_count):
            raise ResolutionError(f"{self.path}: level {level!r} does not exist (the slide has {self.level_count})")
        return int(level)

    def _to_level(self, xy_l0: Sequence[float], level: int) -> tuple[int, int]:
        ds = self.level_downsamples[level]
        return math.floor(xy_l0[0] / ds), math.floor(xy_l0[1] / ds)

    def _check_open(self) -> None:
        if self.closed:
            raise SlideOpenError(self.path, "the slide reader is closed")

    def _clip(self, x_lv: int, y_lv: int, level: int, w: int, h: int):
        """The part of a level window inside the level: ``(x, y, w, h)`` in level pixels and
        its offset ``(dx, dy)`` in the window, or None when the window misses the slide."""
        lw, lh = self.level_dimensions[level]
        x1, y1 = max(x_lv, 0), max(y_lv, 0)
        x2, y2 = min(x_lv + w, lw), min(y_lv + h, lh)
        if x2 <= x1 or y2 <= y1:
            return None
        return (x1, y1, x2 - x1, y2 - y1), (x1 - x_lv, y1 - y_lv)


def _origins(xys_l0, source: Path) -> np.ndarray:
    xys = np.asarray(xys_l0)
    if xys.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if xys.ndim != 2 or xys.shape[1] != 2:
        raise ConfigError(f"{source}: origins must have shape (n, 2), got {xys.shape}")
    return np.floor(xys).astype(np.int64)


def white(h: int, w: int) -> np.ndarray:
    """A white ``(h, w, 3)`` uint8 canvas (the glass around the tissue)."""
    return np.full((h, w, 3), WHITE, dtype=np.uint8)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA (straight alpha) to ``(h, w, 3)`` RGB over white."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    # Rounded integer blend: rgb*a/255 + 255*(255-a)/255.
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)
