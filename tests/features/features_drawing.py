"""Drawing helpers for the feature tests: masks and H&E-like patches with known answers."""

from __future__ import annotations

import numpy as np

PINK = (235, 190, 215)  # eosin-stained background: low hematoxylin
PURPLE = (70, 40, 130)  # a dark mitotic figure: high hematoxylin


def disk(shape, centre_rc, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre_rc[0]) ** 2 + (xx - centre_rc[1]) ** 2 <= radius**2


def ellipse(shape, centre_rc, a, b, angle=0.0):
    """Filled ellipse with semi-axes ``a`` (along ``angle`` from the x axis) and ``b``, in pixels."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    dy, dx = yy - centre_rc[0], xx - centre_rc[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def he_patch(size, figures):
    """A pink patch with purple ellipses; ``figures``: iterable of (x, y, a, b, angle) in pixels."""
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[:] = PINK
    for x, y, a, b, ang in figures:
        rgb[ellipse((size, size), (y, x), a, b, ang)] = PURPLE
    return rgb


