"""Choosing a pyramid level for a target MPP, and resampling what was read to that MPP.

Pure functions on numpy arrays; the readers call them. Downsampling averages areas exactly,
partial source pixels weighted by their overlap (integral images, so any real factor and any
sub-pixel origin work; strips of a thumbnail agree with a single read), so a 2x2 block becomes
its mean and no aliasing creeps into tissue masks or network inputs. PIL's BOX filter is not
used for this: it counts a source pixel fully or not at all by its center.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tupac.errors import ResolutionError

MPP_TOLERANCE = 0.05
"""Relative MPP difference treated as "the same resolution" (0.2520 serves a 0.25 request)."""


@dataclass(frozen=True)
class LevelPlan:
    """How to serve a read at a target MPP.

    Attributes
    ----------
    level : int
        Pyramid level to read from.
    scale : float
        Level pixels per output pixel (> 1 downsample, < 1 upsample, 1.0 read as is).
    """

    level: int
    scale: float

    @property
    def resample(self) -> bool:
        return self.scale != 1.0


def plan_level(
    slide_mpp: float,
    level_downsamples: tuple[float, ...],
    mpp: float,
    allow_upsample: bool = False,
    tolerance: float = MPP_TOLERANCE,
    source: str = "slide",
) -> LevelPlan:
    """Pick the coarsest level whose MPP is at or finer than ``mpp`` (within ``tolerance``).

    Parameters
    ----------
    slide_mpp : float
        Level-0 um/px.
    level_downsamples : tuple of float
        Downsample of each level relative to level 0.
    mpp : float
        Target um/px.
    allow_upsample : bool
        Serve a target finer than level 0 by interpolating level 0; otherwise raise.
    tolerance : float
        Relative difference under which a level counts as exactly the target (no resampling).
    source : str
        Name used in error messages (the slide path).

    Raises
    ------
    ResolutionError
        ``mpp`` is finer than level 0 beyond ``tolerance`` and ``allow_upsample`` is False,
        or ``mpp`` is not a positive number.
    """
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise ResolutionError(f"{source}: target mpp must be a positive number, got {mpp!r}")
    level_mpps = [slide_mpp * d for d in level_downsamples]
    usable = [i for i, m in enumerate(level_mpps) if m <= mpp * (1.0 + tolerance)]
    if not usable:
        if not allow_upsample:
            raise ResolutionError(
                f"{source}: {mpp:g} um/px is finer than the slide's level 0 ({slide_mpp:g} um/px); "
                f"the slide cannot provide it without upsampling (pass allow_upsample=True to interpolate)"
            )
        return LevelPlan(0, mpp / slide_mpp)
    level = max(usable, key=lambda i: level_mpps[i])
    scale = mpp / level_mpps[level]
    return LevelPlan(level, 1.0 if abs(scale - 1.0) <= tolerance else scale)


def source_window(origin: float, out_px: int, scale: float) -> tuple[int, int, float]:
    """Integer source window that covers ``out_px`` output pixels starting at ``origin``.

    Parameters
    ----------
    origin : float
        Top-left of the output in source (level) pixels, possibly fractional.
    out_px : int
        Output length in pixels.
    scale : float
        Source pixels per output pixel.

    Returns
    -------
    start, length : int
        First source pixel to read and how many (one pixel of margin each side for
        interpolation when upsampling).
    offset : float
        ``origin - start``: where the output starts inside the window.
    """
    margin = 1 if scale < 1.0 else 0
    start = math.floor(origin) - margin
    stop = math.ceil(origin + out_px * scale) + margin
    return start, max(1, stop - start), origin - start


def area_mean_1d(a: np.ndarray, offset: float, n_out: int, scale: float) -> np.ndarray:
    """Average ``a`` along axis 0 over the intervals ``[offset + i*scale, offset + (i+1)*scale)``.

    Parameters
    ----------
    a : ndarray, shape (L, ...)
        Samples; sample ``j`` covers ``[j, j+1)``. Integer input is summed exactly.
    offset : float
        Start of the first interval, in samples.
    n_out : int
        Number of intervals.
    scale : float
        Interval length in samples (>= 1 for an average; any positive value works).

    Returns
    -------
    ndarray of float64, shape (n_out, ...)
    """
    length = a.shape[0]
    # Snapped to 1e-9 px so that the same boundary computed two ways (a thumbnail strip vs one
    # read) gives the same sums: means of integers often land exactly on .5 and rint must agree.
    t = np.clip(np.round(offset + np.arange(n_out + 1) * scale, 9), 0.0, float(length))
    idx = np.minimum(np.floor(t).astype(np.int64), length - 1)
    frac = (t - idx).reshape((-1,) + (1,) * (a.ndim - 1))
    if np.issubdtype(a.dtype, np.integer):  # exact; int32 holds 8M rows of uint8
        acc_t = np.int32 if a.dtype.itemsize == 1 and length < 2**31 // 256 else np.int64
    else:
        acc_t = np.float64
    # Prefix sums at the boundaries only. One vectorized add per row: numpy's cumsum and
    # reduceat along axis 0 walk the array column by column and are ~10x slower here.
    prefix = np.empty((n_out + 1,) + a.shape[1:], dtype=acc_t)
    acc = np.zeros(a.shape[1:], dtype=acc_t)
    row = 0
    for k, stop in enumerate(idx):
        while row < stop:
            np.add(acc, a[row], out=acc)
            row += 1
        prefix[k] = acc
    # Integral at fractional t: whole samples before idx, plus the covered part of sample idx.
    integral = prefix + frac * a[idx]
    return (integral[1:] - integral[:-1]) / scale


def resize_window(
    window: np.ndarray, offset_xy: tuple[float, float], out_size: tuple[int, int], scale: float
) -> np.ndarray:
    """Resample ``window`` so that output pixel ``(i, j)`` covers source
    ``[offset + j*scale, offset + (j+1)*scale)`` along x (same along y).

    Parameters
    ----------
    window : ndarray of uint8, shape (h, w, 3)
        Source pixels.
    offset_xy : (float, float)
        Output origin inside ``window`` in source pixels.
    out_size : (width, height)
        Output size in pixels.
    scale : float
        Source pixels per output pixel; exact area averaging when >= 1, bilinear below.

    Returns
    -------
    ndarray of uint8, shape (height, width, 3)
    """
    w, h = out_size
    ox, oy = offset_xy
    if scale < 1.0:
        box = (ox, oy, ox + w * scale, oy + h * scale)
        img = Image.fromarray(np.ascontiguousarray(window))
        return np.asarray(img.resize((w, h), resample=Image.Resampling.BILINEAR, box=box))
    # Rows first, on exact integer sums, so the float64 stage only holds h output rows.
    rows = area_mean_1d(window, oy, h, scale)
    out = area_mean_1d(np.ascontiguousarray(rows.transpose(1, 0, 2)), ox, w, scale).transpose(1, 0, 2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def strip_rows(out_height: int, out_width: int, scale: float, max_source_px: int) -> int:
    """Output rows per strip so that one strip's source window stays under ``max_source_px`` pixels."""
    src_row_px = max(1.0, out_width * scale) * max(1.0, scale)
    return int(max(1, min(out_height, max_source_px // max(1, math.ceil(src_row_px)))))
