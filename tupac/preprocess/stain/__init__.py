"""Stain standardization: WSICS (the paper's), Macenko and Reinhard, fitted per slide.

Every method has the same API (also as module functions, e.g. ``tupac.preprocess.stain.wsics.fit``):

- ``fit(template_rgb) -> StainReference``: the template's statistics, saved as JSON.
- ``fit_image(rgb) -> SlideStainStats``: statistics of one image.
- ``fit_slide(reader, tissue_mask) -> SlideStainStats``: statistics from tissue tiles sampled
  across a whole slide.
- ``transform(tile, stats, reference) -> tile``: standardize a tile with its slide's statistics.

Dispatch by name::

    ref = fit(template, method="wsics"); ref.save("ref.json")
    stats = fit_slide(reader, tissue, method=ref.method)
    out = transform(tile, stats, StainReference.load("ref.json"))
"""

from __future__ import annotations

import numpy as np

from tupac.preprocess.stain import macenko, reinhard, wsics  # noqa: F401  (importing a method registers it)
from tupac.preprocess.stain.base import (
    METHODS,
    SlideStainStats,
    StainMethod,
    StainReference,
    apply_lut,
    apply_lut_view,
    build_lut,
    get_method,
    sample_tissue_tiles,
)


def fit(template: np.ndarray, method: str = "wsics", **kwargs) -> StainReference:
    """Fit a reference on a template image ``(h, w, 3)`` uint8 RGB."""
    return get_method(method).fit(template, **kwargs)


def fit_image(image: np.ndarray, method: str = "wsics", **kwargs) -> SlideStainStats:
    """Statistics of one image ``(h, w, 3)`` uint8 RGB."""
    return get_method(method).fit_image(image, **kwargs)


def fit_slide(reader, tissue_mask, method: str = "wsics", **kwargs) -> SlideStainStats:
    """Statistics of a whole slide from its tissue tiles (see :func:`sample_tissue_tiles`)."""
    return get_method(method).fit_slide(reader, tissue_mask, **kwargs)


def transform(tile: np.ndarray, stats: SlideStainStats, reference: StainReference) -> np.ndarray:
    """Standardize ``tile`` with the method that fitted ``reference``."""
    return get_method(reference.method).transform(tile, stats, reference)


def lookup_table(stats: SlideStainStats, reference: StainReference) -> np.ndarray:
    """Build the slide's lookup table now (later ``transform`` calls are table lookups)."""
    return get_method(reference.method).lookup_table(stats, reference)


__all__ = [
    "METHODS",
    "SlideStainStats",
    "StainMethod",
    "StainReference",
    "apply_lut",
    "apply_lut_view",
    "build_lut",
    "fit",
    "fit_image",
    "fit_slide",
    "get_method",
    "lookup_table",
    "sample_tissue_tiles",
    "transform",
]
