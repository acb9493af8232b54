"""Coordinate frames and their conversions, in one place.

Frames (suffix names the frame, as everywhere in tupac):

- ``*_l0``: level-0 pixels of the slide, origin at the top-left, ``x`` to the right, ``y`` down.
- ``*_mpp``: a raster at a given resolution in micrometers per pixel (``mpp``).
- ``*_um``: micrometers from the slide origin.

Magnification is always chosen by MPP (40x = 0.25 um/px, 10x = 1.0 um/px), never by level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MPP_40X = 0.25
"""Microns per pixel of a "40x" scan (TUPAC16 level 0)."""
MPP_10X = 1.0
"""Microns per pixel of the "10x" resolution at which tumor is localized."""


def scale_factor(from_mpp: float, to_mpp: float) -> float:
    """Pixels of ``to_mpp`` per pixel of ``from_mpp`` (> 1 means downsampling)."""
    return to_mpp / from_mpp


def l0_to_mpp(xy_l0: np.ndarray | float, slide_mpp: float, mpp: float) -> np.ndarray | float:
    """Convert level-0 pixel coordinates to pixel coordinates of a raster at ``mpp``."""
    return np.asarray(xy_l0, dtype=np.float64) * (slide_mpp / mpp)


def mpp_to_l0(xy_mpp: np.ndarray | float, slide_mpp: float, mpp: float) -> np.ndarray | float:
    """Convert pixel coordinates of a raster at ``mpp`` to level-0 pixel coordinates."""
    return np.asarray(xy_mpp, dtype=np.float64) * (mpp / slide_mpp)


def size_at_mpp(size_l0: tuple[int, int], slide_mpp: float, mpp: float) -> tuple[int, int]:
    """(width, height) in pixels of a level-0 extent resampled to ``mpp`` (rounded up)."""
    f = slide_mpp / mpp
    return (max(1, math.ceil(size_l0[0] * f)), max(1, math.ceil(size_l0[1] * f)))


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of square tiles, defined in the frame of a raster at ``mpp``.

    Attributes
    ----------
    origins_l0 : ndarray of int64, shape (n, 2)
        Top-left ``(x, y)`` of each kept tile in level-0 pixels.
    tile_px : int
        Tile edge in pixels at ``mpp``.
    stride_px : int
        Step between tiles in pixels at ``mpp``.
    mpp : float
        Resolution of the tiles in micrometers per pixel.
    slide_mpp : float
        Level-0 resolution of the slide in micrometers per pixel.
    rc : ndarray of int64, shape (n, 2)
        ``(row, col)`` index of each kept tile in the full grid.
    grid_shape : tuple of int
        ``(rows, cols)`` of the full grid over the slide.
    """

    origins_l0: np.ndarray
    tile_px: int
    stride_px: int
    mpp: float
    slide_mpp: float
    rc: np.ndarray
    grid_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if self.tile_px <= 0 or self.stride_px <= 0:
            raise ValueError(f"tile_px and stride_px must be positive, got {self.tile_px}, {self.stride_px}")
        if self.origins_l0.shape != self.rc.shape or self.origins_l0.ndim != 2:
            raise ValueError("origins_l0 and rc must both have shape (n, 2)")

    def __len__(self) -> int:
        return int(self.origins_l0.shape[0])

    @property
    def tile_l0(self) -> float:
        """Tile edge in level-0 pixels (may be fractional)."""
        return self.tile_px * self.mpp / self.slide_mpp


def full_grid(
    dimensions_l0: tuple[int, int], slide_mpp: float, mpp: float, tile_px: int, stride_px: int | None = None
) -> TileGrid:
    """Every tile of a grid covering the slide (edge tiles may extend past it).

    Parameters
    ----------
    dimensions_l0 : (width, height)
        Slide size in level-0 pixels.
    slide_mpp, mpp : float
        Level-0 and tile resolutions in um/px.
    tile_px, stride_px : int
        Tile edge and step in pixels at ``mpp``; ``stride_px`` defaults to ``tile_px``.
    """
    stride_px = stride_px or tile_px
    w_mpp, h_mpp = size_at_mpp(dimensions_l0, slide_mpp, mpp)
    cols = max(1, math.ceil(max(w_mpp - tile_px, 0) / stride_px) + 1)
    rows = max(1, math.ceil(max(h_mpp - tile_px, 0) / stride_px) + 1)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    rc = np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64)
    xy_mpp = rc[:, ::-1] * stride_px
    origins = np.floor(mpp_to_l0(xy_mpp, slide_mpp, mpp)).astype(np.int64)
    return TileGrid(origins, tile_px, stride_px, mpp, slide_mpp, rc, (rows, cols))


def grid_boxes(grid: TileGrid, raster_mpp: float) -> np.ndarray:
    """Each tile's extent in the pixel frame of a raster at ``raster_mpp`` (e.g. a tissue mask).

    Parameters
    ----------
    grid : TileGrid
    raster_mpp : float
        Resolution of the target raster in um/px.

    Returns
    -------
    ndarray of float64, shape (n, 4)
        ``(x0, y0, x1, y1)`` per tile, half-open, in (fractional) raster pixels.
    """
    xy0 = l0_to_mpp(grid.origins_l0, grid.slide_mpp, raster_mpp)
    edge = grid.tile_px * grid.mpp / raster_mpp
    return np.concatenate([xy0, xy0 + edge], axis=1)


def select_tiles(grid: TileGrid, keep: np.ndarray) -> TileGrid:
    """The sub-grid of tiles where ``keep`` (bool, shape (n,)) is true; ``grid_shape`` is unchanged."""
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(grid),):
        raise ValueError(f"keep must have shape ({len(grid)},), got {keep.shape}")
    return TileGrid(
        grid.origins_l0[keep], grid.tile_px, grid.stride_px, grid.mpp, grid.slide_mpp, grid.rc[keep], grid.grid_shape
    )
