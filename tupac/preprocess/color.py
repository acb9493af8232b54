"""Color-space conversions shared by the stain standardization methods, in float32.

Optical density (Beer-Lambert), the hue-saturation-density model (HSD, van der Laak et al.,
Cytometry 2000) and CIE LAB (D65, 2 degree observer, the same formulas as
``skimage.color.rgb2lab``). Functions take ``uint8`` RGB and work on the trailing axis of size 3,
so they accept ``(h, w, 3)`` images and ``(n, 3)`` pixel lists alike. None of them modifies its
input; all are vectorized and return finite values for every 8-bit input (black, white and
saturated pixels included).
"""

from __future__ import annotations

import numpy as np

I0 = 256.0
"""Transmitted (background) intensity used in the optical-density transform. With ``I0 = 256``
and ``I + 1`` in the numerator, OD is finite and >= 0 for every 8-bit value (0 for 255)."""

SQRT3 = np.float32(np.sqrt(3.0))
DENSITY_EPS = np.float32(1e-3)
"""Density below which the HSD chromatic coordinates are set to 0 (pure white has none)."""

# One 256-entry table: OD of each 8-bit value (a lookup is far cheaper than a log per pixel).
_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / I0)).astype(np.float32)


def rgb_to_od(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-ln((I + 1) / 256)`` of each channel.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (..., 3)

    Returns
    -------
    ndarray of float32, shape (..., 3)
        Values in ``[0, ln 256]``.
    """
    return _OD_LUT[_as_uint8(rgb)]


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`, rounded and clipped to ``uint8``.

    Parameters
    ----------
    od : ndarray of float, shape (..., 3)
        Optical densities; negative values (brighter than glass) clip to 255.
    """
    od = np.asarray(od, dtype=np.float32)
    i = np.exp(-od) * np.float32(I0) - np.float32(1.0)
    return _round_clip_uint8(i)


def rgb_to_hsd(rgb: np.ndarray) -> np.ndarray:
    """RGB to the HSD model: chromatic coordinates ``cx, cy`` and mean density ``D``.

    ``D = (D_r + D_g + D_b) / 3``, ``cx = D_r / D - 1``, ``cy = (D_g - D_b) / (sqrt(3) D)``;
    where ``D < DENSITY_EPS`` (white) both chromatic coordinates are 0. ``cx`` lies in
    ``[-1, 2]`` and ``cy`` in ``[-sqrt 3, sqrt 3]`` for every input, so nothing blows up.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (..., 3)

    Returns
    -------
    ndarray of float32, shape (..., 3)
        ``(cx, cy, D)`` on the last axis.
    """
    od = rgb_to_od(rgb)
    return od_to_hsd(od)


def od_to_hsd(od: np.ndarray) -> np.ndarray:
    """Optical densities ``(..., 3)`` to HSD ``(cx, cy, D)``; see :func:`rgb_to_hsd`."""
    d_r, d_g, d_b = od[..., 0], od[..., 1], od[..., 2]
    d = (d_r + d_g + d_b) / np.float32(3.0)
    safe = np.maximum(d, DENSITY_EPS)
    white = d < DENSITY_EPS
    cx = np.where(white, np.float32(0.0), (d_r - d) / safe)
    cy = np.where(white, np.float32(0.0), (d_g - d_b) / (SQRT3 * safe))
    return np.stack([cx, cy, d], axis=-1).astype(np.float32, copy=False)


def hsd_to_od(hsd: np.ndarray) -> np.ndarray:
    """HSD ``(cx, cy, D)`` back to per-channel optical densities, shape ``(..., 3)`` float32.

    ``D_r = D (1 + cx)``, ``D_g = D (2 - cx + sqrt(3) cy) / 2``, ``D_b = D (2 - cx - sqrt(3) cy) / 2``.
    """
    hsd = np.asarray(hsd, dtype=np.float32)
    cx, cy, d = hsd[..., 0], hsd[..., 1], hsd[..., 2]
    half = np.float32(0.5)
    d_r = d * (np.float32(1.0) + cx)
    d_g = d * (np.float32(2.0) - cx + SQRT3 * cy) * half
    d_b = d * (np.float32(2.0) - cx - SQRT3 * cy) * half
    return np.stack([d_r, d_g, d_b], axis=-1)


def hsd_to_rgb(hsd: np.ndarray) -> np.ndarray:
    """HSD ``(..., 3)`` to ``uint8`` RGB (rounded, clipped)."""
    return od_to_rgb(hsd_to_od(hsd))


# --- CIE LAB, matching skimage.color.rgb2lab / lab2rgb (sRGB, D65, 2 degree observer) ------------

_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=np.float64,
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)


def _srgb_to_linear_lut() -> np.ndarray:
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92).astype(np.float32)


_LINEAR_LUT = _srgb_to_linear_lut()


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``uint8`` sRGB to CIE LAB (D65), float32; agrees with ``skimage.color.rgb2lab``.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (..., 3)

    Returns
    -------
    ndarray of float32, shape (..., 3)
        ``L`` in [0, 100], ``a``, ``b`` roughly in [-128, 127].
    """
    lin = _LINEAR_LUT[_as_uint8(rgb)]
    m = (_XYZ_FROM_RGB / _WHITE_D65[:, None]).astype(np.float32)  # XYZ already divided by white
    xyz = _mat3(lin, m)
    eps = np.float32(0.008856)
    f = np.where(xyz > eps, np.cbrt(xyz), np.float32(7.787) * xyz + np.float32(16.0 / 116.0))
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    big_y = xyz[..., 1] > eps
    lum = np.where(big_y, np.float32(116.0) * fy - np.float32(16.0), np.float32(903.3) * xyz[..., 1])
    a = np.float32(500.0) * (fx - fy)
    b = np.float32(200.0) * (fy - fz)
    return np.stack([lum, a, b], axis=-1).astype(np.float32, copy=False)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE LAB (D65) to ``uint8`` sRGB (rounded, clipped); the inverse of :func:`rgb_to_lab`.

    Follows ``skimage.color.lab2rgb``: out-of-gamut values are clipped to [0, 1] before the
    8-bit rounding.
    """
    lab = np.asarray(lab, dtype=np.float32)
    lum, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (lum + np.float32(16.0)) / np.float32(116.0)
    fx = a / np.float32(500.0) + fy
    fz = np.maximum(fy - b / np.float32(200.0), np.float32(0.0))
    f = np.stack([fx, fy, fz], axis=-1)
    cube = f * f * f
    xyz = np.where(cube > np.float32(0.008856), cube, (f - np.float32(16.0 / 116.0)) / np.float32(7.787))
    m = (_RGB_FROM_XYZ * _WHITE_D65[None, :]).astype(np.float32)
    lin = np.clip(_mat3(xyz, m), np.float32(0.0), None)
    srgb = np.where(
        lin > np.float32(0.0031308),
        np.float32(1.055) * np.power(lin, np.float32(1.0 / 2.4)) - np.float32(0.055),
        np.float32(12.92) * lin,
    )
    return _round_clip_uint8(srgb * np.float32(255.0))


# --- small helpers ----------------------------------------------------------------------------


def _mat3(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m.T`` over the last axis, written out elementwise.

    Written out (not BLAS) so that each output pixel depends on its own input only, bit for bit,
    whatever the batch size or tile it arrives in.
    """
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    return np.stack([m[i, 0] * x0 + m[i, 1] * x1 + m[i, 2] * x2 for i in range(3)], axis=-1)


def _round_clip_uint8(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _as_uint8(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise TypeError(f"expected uint8 RGB, got dtype {rgb.dtype}")
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected a last axis of size 3 (RGB), got shape {rgb.shape}")
    return rgb
