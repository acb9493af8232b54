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


@dataclass(frozen=True)
class Frame:
    """Where a raster (a heatmap, a mask) lies on the slide: the one frame type of tupac.

    Attributes
    ----------
    mpp : float
        µm per raster pixel.
    offset_um : (float, float), optional
        ``(y, x)`` µm from the slide's level-0 origin to the *centre* of raster pixel (0, 0).
        Default ``(mpp / 2, mpp / 2)``: pixel (0, 0) covers ``[0, mpp)`` from the origin.
    shape : (int, int) or None
        ``(rows, cols)`` of the raster, when known.
    slide_mpp : float or None
        Level-0 µm/px of the slide, when known (needed for level-0 pixel coordinates).
    slide_size : (int, int) or None
        Level-0 ``(width, height)`` of the slide, when known; level-0 geometry is kept inside it.
    """

    mpp: float
    offset_um: tuple[float, float] | None = None
    shape: tuple[int, int] | None = None
    slide_mpp: float | None = None
    slide_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ValueError(f"Frame.mpp must be a positive µm/px, got {self.mpp!r}")
        if self.offset_um is None:
            object.__setattr__(self, "offset_um", (self.mpp / 2, self.mpp / 2))
        offset = tuple(float(v) for v in self.offset_um)
        if len(offset) != 2 or not all(map(math.isfinite, offset)):
            raise ValueError(f"Frame.offset_um must be two finite µm values (y, x), got {self.offset_um!r}")
        object.__setattr__(self, "offset_um", offset)
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        if self.slide_mpp is not None and not (math.isfinite(self.slide_mpp) and self.slide_mpp > 0):
            raise ValueError(f"Frame.slide_mpp must be a positive µm/px, got {self.slide_mpp!r}")

    @classmethod
    def of_model(cls, shape: tuple[int, int], stride_px: int, offset_px: float, mpp: float,
                 slide_mpp: float | None = None) -> "Frame":
        """A model's heatmap: cell 0 centred ``offset_px`` input pixels (at ``mpp``) from the origin,
        ``stride_px`` input pixels between cells."""
        return cls(stride_px * mpp, (offset_px * mpp,) * 2, shape, slide_mpp)

    def on_slide(self, slide_mpp: float, slide_size: tuple[int, int] | None = None) -> "Frame":
        """The same raster, placed on a slide of level-0 ``slide_mpp`` (and ``slide_size``)."""
        return Frame(self.mpp, self.offset_um, self.shape, slide_mpp, slide_size)

    @property
    def origin_um(self) -> np.ndarray:
        """``(y, x)`` µm from the slide origin to the top-left corner of pixel (0, 0), float64."""
        return np.asarray(self.offset_um, dtype=np.float64) - self.mpp / 2.0

    def rc_to_l0(self, rc: np.ndarray) -> np.ndarray:
        """Raster ``(row, col)`` (float, shape (n, 2)) to level-0 ``(x, y)`` pixels, shape (n, 2)."""
        rc = np.asarray(rc, np.float64)
        y_um = self.offset_um[0] + self.mpp * rc[:, 0]
        x_um = self.offset_um[1] + self.mpp * rc[:, 1]
        xy = np.stack([x_um, y_um], axis=1) / self.slide_mpp
        if self.slide_size is not None:
            # The outline lies half a heatmap cell outside the outermost kept cell centre; clamping
            # to the slide edge moves those points onto the edge line, which keeps rings simple.
            xy[:, 0] = np.clip(xy[:, 0], 0.0, float(self.slide_size[0]))
            xy[:, 1] = np.clip(xy[:, 1], 0.0, float(self.slide_size[1]))
        return xy

    def centres_inside(self, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """Bool mask, shape ``shape`` (default the frame's): pixels whose centre lies on the slide
        (None = all, or the slide's size is unknown)."""
        if self.slide_size is None:
            return None
        shape = self.shape if shape is None else shape
        w_um, h_um = self.slide_size[0] * self.slide_mpp, self.slide_size[1] * self.slide_mpp
        ys = self.offset_um[0] + self.mpp * np.arange(shape[0])
        xs = self.offset_um[1] + self.mpp * np.arange(shape[1])
        return ((ys >= 0) & (ys <= h_um))[:, None] & ((xs >= 0) & (xs <= w_um))[None, :]


def pixels_under(n: int, start: int, mpp: float, origin_um: float, to_mpp: float, to_origin_um: float,
                 size: int) -> np.ndarray:
    """Along one axis: indices into a raster (``to_mpp``, top-left at ``to_origin_um``, ``size`` pixels)
    of the pixels under the centres of pixels ``start .. start + n - 1`` of another (``mpp``, top-left
    at ``origin_um``); clipped to the edge. The primitive form of :func:`resample_onto`, for Dask blocks."""
    centre_um = origin_um + (np.arange(start, start + n) + 0.5) * mpp
    return np.clip(np.floor((centre_um - to_origin_um) / to_mpp).astype(np.int64), 0, size - 1)


def resample_onto(src: np.ndarray, src_mpp: float, src_origin_um, shape: tuple[int, int], mpp: float, origin_um) -> np.ndarray:
    """Nearest-neighbour resampling of ``src`` onto the grid ``(shape, mpp, origin_um)``, both placed on the slide.

    Parameters
    ----------
    src : ndarray, shape (h, w)
    src_mpp, mpp : float
        µm/px of the source and of the target grid.
    src_origin_um, origin_um : (y, x) µm
        Top-left corner of pixel (0, 0) of each raster, from the slide origin (:attr:`Frame.origin_um`).
    shape : (rows, cols)

    Returns
    -------
    ndarray, shape ``shape``, dtype of ``src``
        Target pixels whose centre falls outside the source take the nearest edge value.
    """
    rows = pixels_under(shape[0], 0, mpp, float(origin_um[0]), src_mpp, float(src_origin_um[0]), src.shape[0])
    cols = pixels_under(shape[1], 0, mpp, float(origin_um[1]), src_mpp, float(src_origin_um[1]), src.shape[1])
    return src[np.ix_(rows, cols)]


def nearest_cells(src_frame: Frame, frame: Frame, src_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the source cells nearest (by centre) to each pixel centre of ``frame``.

    Indices into a raster of ``src_shape`` placed by ``src_frame`` (e.g. a tumor heatmap, cell
    centres at ``offset_um + k * mpp``), for the pixel centres of ``frame`` (e.g. the tissue mask's grid);
    points outside the source take the nearest edge cell.
    """
    origin = frame.origin_um
    out = []
    for axis in (0, 1):
        centre_um = origin[axis] + (np.arange(frame.shape[axis]) + 0.5) * frame.mpp
        idx = np.rint((centre_um - src_frame.offset_um[axis]) / src_frame.mpp).astype(np.int64)
        out.append(np.clip(idx, 0, src_shape[axis] - 1))
    return out[0], out[1]
