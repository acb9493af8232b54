"""The ``SlideReader`` protocol: what every slide backend provides.

All coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)`` in pixels of the
level or resolution being read. Pixels are returned as ``uint8`` arrays of shape
``(height, width, 3)`` (RGB; alpha is composited onto white, as glass looks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class SlideReader(Protocol):
    """A whole-slide image opened for reading. Backends: OpenSlide, cuCIM."""

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
        """Read ``size`` pixels at ``level`` whose top-left is ``xy_l0``; out-of-slide area is white."""

    def read_regions(
        self, xys_l0: Sequence[tuple[int, int]] | np.ndarray, level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Batch read: ``(n, height, width, 3)`` uint8, one tile per origin."""

    def read_region_mpp(
        self, xy_l0: tuple[int, int], size: tuple[int, int], mpp: float, allow_upsample: bool = False
    ) -> np.ndarray:
        """Read ``size`` pixels at resolution ``mpp`` (um/px) whose top-left is ``xy_l0``."""

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` um/px (coarser than level 0), ``(h, w, 3)`` uint8."""

    def close(self) -> None:
        """Release the file handle."""
