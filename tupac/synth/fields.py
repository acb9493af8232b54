"""Low-resolution random fields and periodic textures, and their sampling at level-0 pixels.

A slide's regions (tissue, tumor, lumina, lymphocyte clusters) are signed fields on a coarse grid
(``FIELD_STEP`` level-0 pixels per grid point). Rendering, object placement and the truth masks all
evaluate the SAME bilinear interpolation of a grid (``sample_block`` / ``sample_points``), so what is
drawn and what the truth says agree to within interpolation, at any resolution.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FIELD_STEP = 32
"""Level-0 pixels between field grid points (8 um at 0.25 um/px)."""


def grid_shape(size_px: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a field grid covering a (width, height) level-0 extent, with one point of margin."""
    w, h = size_px
    return (h // FIELD_STEP + 2, w // FIELD_STEP + 2)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian random field with zero mean and unit std on a grid.

    Parameters
    ----------
    shape : (rows, cols)
        Grid shape.
    sigma_px : float
        Correlation length in level-0 pixels.

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    sigma = max(sigma_px / FIELD_STEP, 0.5)
    # Generate on a coarser grid then zoom: a large sigma on a big grid would be slow to filter.
    sub = max(1, int(sigma // 4))
    coarse_shape = (shape[0] // sub + 3, shape[1] // sub + 3)
    f = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma / sub, mode="reflect")
    if sub > 1:
        f = ndimage.zoom(f, sub, order=3, mode="reflect", grid_mode=True)
    f = f[: shape[0], : shape[1]]
    f = (f - f.mean()) / max(float(f.std()), 1e-9)
    return f.astype(np.float32)


def to_signed_distance(f: np.ndarray) -> np.ndarray:
    """Rescale a field so that near its zero level it approximates a signed distance in level-0 pixels.

    Dividing by the gradient magnitude keeps the sign (so the region is unchanged) and makes a soft
    edge ``clip(0.5 + d / width)`` equally sharp everywhere.
    """
    gy, gx = np.gradient(f.astype(np.float64))
    g = np.hypot(gx, gy) / FIELD_STEP
    g = np.maximum(g, np.percentile(g, 20) + 1e-9)
    return (f / g).astype(np.float32)


def _axis_weights(coords_l0: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = coords_l0 / FIELD_STEP - 0.5
    g = np.clip(g, 0.0, n - 1.000001)
    i0 = np.floor(g).astype(np.intp)
    w = (g - i0).astype(np.float32)
    return i0, np.minimum(i0 + 1, n - 1), w


def sample_block(grid: np.ndarray, x0: float, y0: float, w: int, h: int, step: float = 1.0) -> np.ndarray:
    """Bilinear values of ``grid`` at the centers of a block of pixels.

    Pixel ``(i, j)`` of the block has its center at level-0 ``(x0 + (j + 0.5) * step, y0 + (i + 0.5) * step)``.

    Returns
    -------
    ndarray of float32, shape (h, w)
    """
    xs = x0 + (np.arange(w) + 0.5) * step
    ys = y0 + (np.arange(h) + 0.5) * step
    ix0, ix1, wx = _axis_weights(xs, grid.shape[1])
    iy0, iy1, wy = _axis_weights(ys, grid.shape[0])
    # Interpolate rows first on the few grid rows involved, then columns: separable and cheap.
    r0 = grid[iy0]
    r1 = grid[iy1]
    rows = r0 + (r1 - r0) * wy[:, None]
    a = rows[:, ix0]
    b = rows[:, ix1]
    return a + (b - a) * wx[None, :]


def sample_points(grid: np.ndarray, x_l0: np.ndarray, y_l0: np.ndarray) -> np.ndarray:
    """Bilinear values of ``grid`` at level-0 points (float arrays of equal shape)."""
    x_l0 = np.asarray(x_l0, dtype=np.float64)
    y_l0 = np.asarray(y_l0, dtype=np.float64)
    ix0, ix1, wx = _axis_weights(x_l0, grid.shape[1])
    iy0, iy1, wy = _axis_weights(y_l0, grid.shape[0])
    top = grid[iy0, ix0] + (grid[iy0, ix1] - grid[iy0, ix0]) * wx
    bot = grid[iy1, ix0] + (grid[iy1, ix1] - grid[iy1, ix0]) * wx
    return top + (bot - top) * wy


def periodic_texture(
    rng: np.random.Generator, period: int, sigma_along: float, sigma_across: float, angle: float
) -> np.ndarray:
    """A tileable texture: white noise filtered by an oriented Gaussian in the Fourier domain.

    Parameters
    ----------
    period : int
        Edge of the square texture in pixels; it wraps around seamlessly.
    sigma_along, sigma_across : float
        Correlation lengths (pixels) along and across ``angle`` (radians). ``sigma_along >> sigma_across``
        gives fibers.

    Returns
    -------
    ndarray of float32, shape (period, period), zero mean, unit std.
    """
    fy = np.fft.fftfreq(period)[:, None]
    fx = np.fft.rfftfreq(period)[None, :]
    c, s = np.cos(angle), np.sin(angle)
    f_along = fx * c + fy * s
    f_across = -fx * s + fy * c
    two_pi2 = 2 * np.pi**2
    gain = np.exp(-two_pi2 * ((f_along * sigma_along) ** 2 + (f_across * sigma_across) ** 2))
    spec = np.fft.rfft2(rng.standard_normal((period, period))) * gain
    t = np.fft.irfft2(spec, s=(period, period))
    t = (t - t.mean()) / max(float(t.std()), 1e-9)
    return t.astype(np.float32)


def wrap_block(tex: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The block ``[y0:y0+h, x0:x0+w]`` of an infinitely tiled texture (first two axes wrap)."""
    p0, p1 = tex.shape[:2]
    rows = np.arange(y0, y0 + h) % p0
    cols = np.arange(x0, x0 + w) % p1
    return tex[rows][:, cols]


class Texture:
    """A periodic texture that hands out blocks of its infinite tiling as zero-copy views.

    The texture is stored pre-tiled to ``(period + max_h, period + max_w)`` so that any block up to
    ``max_h`` x ``max_w`` is a plain slice; larger blocks fall back to a gather.
    """

    def __init__(self, data: np.ndarray, max_h: int = 256, max_w: int = 2048) -> None:
        self.data = data
        self.p0, self.p1 = data.shape[:2]
        self.max_h, self.max_w = max_h, max_w
        reps = (-(-(self.p0 + max_h) // self.p0), -(-(self.p1 + max_w) // self.p1)) + (1,) * (data.ndim - 2)
        self.ext = np.ascontiguousarray(np.tile(data, reps)[: self.p0 + max_h, : self.p1 + max_w])

    def block(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Block ``[y0:y0+h, x0:x0+w]`` of the tiling (a read-only view when small enough)."""
        if h <= self.max_h and w <= self.max_w:
            oy, ox = y0 % self.p0, x0 % self.p1
            return self.ext[oy : oy + h, ox : ox + w]
        return wrap_block(self.data, x0, y0, w, h)
