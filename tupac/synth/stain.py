"""Stain model of the phantom slides: Beer-Lambert optical density with per-center H&E vectors.

A pixel's transmitted intensity is ``I = 255 * exp(-(h * OD_H + e * OD_E + OD_glass))`` where ``h`` and ``e``
are stain amounts (dimensionless, ~0..2.5) and ``OD_*`` are optical-density row vectors (R, G, B). Each
scanning "center" has its own vectors and intensity scales, so stain normalization has something to undo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Center:
    """One acquisition site: stain vectors and intensity scales.

    Attributes
    ----------
    name : str
        "A", "B", "C" (the default rotation), "D" (dark hematoxylin) or "P" (pale).
    od_h, od_e : tuple of float, length 3
        Optical density per unit hematoxylin / eosin amount, for (R, G, B).
    h_scale, e_scale : float
        Multipliers on every hematoxylin / eosin amount (staining strength of the site).
    od_glass : tuple of float, length 3
        Optical density of empty glass (slight tint of the scanner's white).
    """

    name: str
    od_h: tuple[float, float, float]
    od_e: tuple[float, float, float]
    h_scale: float
    e_scale: float
    od_glass: tuple[float, float, float]

    def matrix(self) -> np.ndarray:
        """(3, 3) float32 rows: scaled H vector, scaled E vector, glass OD."""
        return np.array(
            [np.array(self.od_h) * self.h_scale, np.array(self.od_e) * self.e_scale, self.od_glass], dtype=np.float32
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "od_h": list(self.od_h),
            "od_e": list(self.od_e),
            "h_scale": self.h_scale,
            "e_scale": self.e_scale,
            "od_glass": list(self.od_glass),
        }


# Vectors are chosen around published H&E estimates (Ruifrok & Johnston; Macenko) and then spread apart:
# A is a balanced purple/pink stain, B a strong blue hematoxylin with a hot-pink eosin, C a pale, more
# magenta/brownish stain. Values were tuned by eye against tests/fixtures/real/he-tumor-target.png.
CENTERS: tuple[Center, ...] = (
    Center("A", (0.60, 0.76, 0.30), (0.12, 0.80, 0.58), 1.00, 1.00, (0.030, 0.034, 0.028)),
    Center("B", (0.64, 0.73, 0.25), (0.06, 0.90, 0.42), 1.12, 1.18, (0.022, 0.026, 0.030)),
    Center("C", (0.48, 0.80, 0.36), (0.22, 0.76, 0.62), 0.82, 0.80, (0.040, 0.046, 0.050)),
)
"""The centers slides of the default style use in turn (unchanged, so default cohorts stay the same)."""

# Two more sites for styles (tupac.synth.style): D over-stains hematoxylin with a bluer, darker vector
# (long hematoxylin time, little differentiation), P is a faded, under-stained site (old slides, short
# staining times) with slightly warmer glass.
EXTRA_CENTERS: tuple[Center, ...] = (
    Center("D", (0.70, 0.74, 0.22), (0.10, 0.84, 0.50), 1.40, 1.05, (0.026, 0.030, 0.034)),
    Center("P", (0.56, 0.78, 0.34), (0.14, 0.78, 0.56), 0.68, 0.66, (0.024, 0.030, 0.036)),
)
ALL_CENTERS: tuple[Center, ...] = CENTERS + EXTRA_CENTERS


def center_by_name(name: str) -> Center:
    """The center called ``name`` (one of :data:`ALL_CENTERS`).

    Raises
    ------
    ValueError
        No such center (the message lists the names).
    """
    for c in ALL_CENTERS:
        if c.name == name:
            return c
    raise ValueError(f"unknown center {name!r}; expected one of {[c.name for c in ALL_CENTERS]}")


def od_to_rgb(h: np.ndarray, e: np.ndarray, center: Center, noise: np.ndarray | None = None) -> np.ndarray:
    """Compose stain amounts into an RGB image by Beer-Lambert.

    Parameters
    ----------
    h, e : ndarray of float32, shape (H, W)
        Hematoxylin and eosin amounts (before the center's scales).
    center : Center
        Stain vectors and scales.
    noise : ndarray of float32, shape (H, W, 3), optional
        Additive optical-density noise (scanner noise).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    m = center.matrix()
    out = np.empty(h.shape + (3,), dtype=np.uint8)
    od = np.empty(h.shape, np.float32)
    tmp = np.empty(h.shape, np.float32)
    ln255 = np.float32(np.log(255.0))
    for c in range(3):
        # 255 * exp(-OD) + 0.5 == exp(ln 255 - OD) + 0.5, computed in place to limit memory passes.
        np.multiply(h, -m[0, c], out=od)
        np.multiply(e, -m[1, c], out=tmp)
        od += tmp
        od += ln255 - m[2, c]
        if noise is not None:
            od -= noise[..., c]
        np.exp(od, out=od)
        od += 0.5
        np.minimum(od, 255.0, out=od)
        out[..., c] = od
    return out
