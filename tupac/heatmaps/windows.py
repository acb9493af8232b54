"""Whole-slide heatmaps from a model, computed window by window so memory stays flat.

The heatmap of a model with card ``(patch_size P, output_stride s, output_offset o, mpp m)`` over a
slide is a raster at ``s * m`` um/px whose cell ``(i, j)`` is the model's probability for the
``P x P`` window (at ``m`` um/px) centered on the point ``(o - L + j*s, o - L + i*s)`` pixels at ``m``
from the slide origin. The lead ``L = round(o - (s - 1) / 2)`` starts the first windows before the
slide's top and left edges (read as white padding, as past the right and bottom edges), so that cell
``(i, j)`` covers ``[i*s, (i+1)*s) x [j*s, (j+1)*s)``: the raster tiles the slide from its origin.
Without it the band of width ``o - (s - 1) / 2`` along the top and left edges (62 um for LocNet)
would never be mapped, and tumor touching those edges would be lost.

The slide is cut into *windows* of ``chunk`` x ``chunk`` output cells; a window reads
``(chunk - 1) * s + P`` input pixels (the cells' receptive fields, so neighbouring windows overlap by
``P - s`` pixels) and yields exactly its cells: there are no seams, because every cell is computed
from the same pixels whichever window holds it. Windows with no tissue under them are skipped and
stay 0.

This module is the geometry and the choice of windows; :mod:`tupac.heatmaps.engine` reads their
pixels and turns them into cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from tupac.geometry import Frame, size_at_mpp


@dataclass(frozen=True)
class HeatmapGeometry:
    """Geometry of a model's heatmap over one slide.

    Attributes
    ----------
    shape : (rows, cols)
        Heatmap size in cells.
    chunk : int
        Window size in cells (also the Zarr chunk edge).
    patch_px, stride_px : int
        Model input patch and output stride, in pixels at ``mpp``.
    offset_px : float
        Center of cell 0, in pixels at ``mpp`` from the slide origin (the card's output offset
        less ``lead_px``).
    mpp : float
        Model input resolution (um/px); the heatmap resolution is ``stride_px * mpp``.
    slide_mpp : float
        Level-0 resolution of the slide (um/px).
    lead_px : int
        Input pixels (at ``mpp``) by which the first window starts before the slide origin.
    """

    shape: tuple[int, int]
    chunk: int
    patch_px: int
    stride_px: int
    offset_px: float
    mpp: float
    slide_mpp: float
    lead_px: int = 0

    @property
    def cell_um(self) -> float:
        """Heatmap resolution in micrometers per cell."""
        return self.stride_px * self.mpp

    @property
    def frame(self) -> Frame:
        """Where the heatmap lies on the slide (``mpp = cell_um``, cell 0 centred ``offset_px * mpp`` µm in)."""
        return Frame.of_model(self.shape, self.stride_px, self.offset_px, self.mpp, self.slide_mpp)

    @property
    def grid(self) -> tuple[int, int]:
        """Number of windows (rows, cols)."""
        return (math.ceil(self.shape[0] / self.chunk), math.ceil(self.shape[1] / self.chunk))

    @property
    def window_px(self) -> int:
        """Input pixels (at ``mpp``) a full window reads along each axis."""
        return (self.chunk - 1) * self.stride_px + self.patch_px

    def window_origin_l0(self, rc_chunk: tuple[int, int]) -> tuple[int, int]:
        """Level-0 ``(x, y)`` of the top-left input pixel of window ``rc_chunk``.

        Cell ``k`` of the heatmap starts its window at ``k * stride - lead`` input pixels, so the
        window of chunk ``(r, c)`` starts at ``(c * chunk * s - lead, r * chunk * s - lead)`` pixels
        at ``mpp`` (negative for the first row and column: white padding).
        """
        r, c = rc_chunk
        f = self.mpp / self.slide_mpp
        s, k, lead = self.stride_px, self.chunk, self.lead_px
        return (int(round((c * k * s - lead) * f)), int(round((r * k * s - lead) * f)))

    def cells(self, rc_chunk: tuple[int, int]) -> tuple[slice, slice]:
        """Heatmap slices ``(rows, cols)`` that window ``rc_chunk`` fills (clipped at the edge)."""
        r, c = rc_chunk
        rows = slice(r * self.chunk, min((r + 1) * self.chunk, self.shape[0]))
        cols = slice(c * self.chunk, min((c + 1) * self.chunk, self.shape[1]))
        return rows, cols

    def cell_centers_l0(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 ``(x, y)`` of the centers of heatmap cells ``(rows, cols)``."""
        f = self.mpp / self.slide_mpp
        x = (self.offset_px + np.asarray(cols, dtype=np.float64) * self.stride_px) * f
        y = (self.offset_px + np.asarray(rows, dtype=np.float64) * self.stride_px) * f
        return x, y


def heatmap_geometry(
    dimensions_l0: tuple[int, int], slide_mpp: float, card, chunk: int = 64
) -> HeatmapGeometry:
    """Heatmap geometry for a model ``card`` (see :class:`tupac.models.ModelCard`) over a slide.

    Parameters
    ----------
    dimensions_l0 : (width, height)
        Slide size in level-0 pixels.
    slide_mpp : float
        Slide level-0 um/px.
    card : ModelCard
        Gives ``patch_size``, ``output_stride``, ``output_offset`` and ``mpp``.
    chunk : int
        Window edge in output cells. 64 cells of LocNet at 16 px stride read about 1.1k x 1.1k px
        windows at 1 um/px: the paper's "1k x 1k" tiles, large enough that the ``P - s`` overlap
        costs under 10% of the compute.
    """
    w, h = size_at_mpp(dimensions_l0, slide_mpp, card.mpp)
    s, p = int(card.output_stride), int(card.patch_size)
    # Cell k covers [k*s, (k+1)*s) of the slide: its window starts `lead` pixels earlier (white
    # padding before the origin, as past the far edges), and ceil(size / s) cells cover the slide.
    lead = max(0, int(round(float(card.output_offset) - (s - 1) / 2.0)))
    rows = max(1, math.ceil(h / s))
    cols = max(1, math.ceil(w / s))
    return HeatmapGeometry((rows, cols), int(chunk), p, s, float(card.output_offset) - lead, float(card.mpp),
                           float(slide_mpp), lead)


def window_tissue(geom: HeatmapGeometry, tissue_mask: np.ndarray, tissue_mpp: float) -> np.ndarray:
    """Which windows have any tissue under their cells, ``(grid_rows, grid_cols)`` bool.

    The tissue mask (at ``tissue_mpp``) is max-pooled onto the window grid; a window whose
    cells cover no tissue pixel is skipped.
    """
    window_um = geom.chunk * geom.cell_um
    gr, gc = geom.grid
    ys, xs = np.nonzero(tissue_mask)
    keep = np.zeros((gr, gc), dtype=bool)
    if ys.size == 0:
        return keep
    # A tissue pixel covers [k, k+1) * tissue_mpp um; flag every window it touches.
    r0 = np.clip((ys * tissue_mpp // window_um).astype(np.int64), 0, gr - 1)
    r1 = np.clip((((ys + 1) * tissue_mpp - 1e-9) // window_um).astype(np.int64), 0, gr - 1)
    c0 = np.clip((xs * tissue_mpp // window_um).astype(np.int64), 0, gc - 1)
    c1 = np.clip((((xs + 1) * tissue_mpp - 1e-9) // window_um).astype(np.int64), 0, gc - 1)
    for dr in (r0, r1):
        for dc in (c0, c1):
            keep[dr, dc] = True
    return keep


def iter_windows(geom: HeatmapGeometry, keep: np.ndarray | None = None) -> Iterator[tuple[int, int]]:
    """Window indices ``(r, c)`` in raster order, only those with ``keep[r, c]`` when given."""
    gr, gc = geom.grid
    for r in range(gr):
        for c in range(gc):
            if keep is None or keep[r, c]:
                yield (r, c)
