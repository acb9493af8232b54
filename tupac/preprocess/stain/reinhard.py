"""Reinhard color transfer (Reinhard et al., IEEE CG&A 2001) in CIE LAB.

Each LAB channel is standardized to zero mean and unit deviation with the slide's statistics and
rescaled to the template's: ``lab_out = (lab - mean_src) * std_ref / std_src + mean_ref``.
LAB is that of ``skimage.color.rgb2lab`` (D65), computed in float32 by
:mod:`tupac.preprocess.color`.

Parameters (``SlideStainStats.params``):

- ``mean``: (3,) float32, mean of L, a, b over the fitted pixels.
- ``std``: (3,) float32, their standard deviations (floored at 1e-3: a flat image stays finite).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tupac.preprocess.color import lab_to_rgb, rgb_to_lab
from tupac.preprocess.stain.base import Params, StainMethod, register_method

MAX_FIT_PIXELS = 2_000_000
STD_FLOOR = 1e-3


def fit_tiles(tiles: Sequence[np.ndarray], seed: int = 0):
    """Mean and standard deviation of LAB over every pixel of ``tiles`` (subsampled past 2 M)."""
    px = np.concatenate([t.reshape(-1, 3) for t in tiles], axis=0)
    if px.shape[0] == 0:
        return None
    if px.shape[0] > MAX_FIT_PIXELS:
        px = px[np.random.default_rng(seed).choice(px.shape[0], MAX_FIT_PIXELS, replace=False)]
    lab = rgb_to_lab(px).astype(np.float64)
    return {"mean": lab.mean(axis=0), "std": np.maximum(lab.std(axis=0), STD_FLOOR)}, int(px.shape[0])


def transform_pixels(rgb: np.ndarray, src: Params, ref: Params) -> np.ndarray:
    """Reinhard-transfer ``(n, 3)`` uint8 pixels; returns ``(n, 3)`` uint8."""
    gain = (np.asarray(ref["std"], np.float64) / np.asarray(src["std"], np.float64)).astype(np.float32)
    offset = (np.asarray(ref["mean"], np.float64) - np.asarray(src["mean"], np.float64) * gain).astype(np.float32)
    lab = rgb_to_lab(rgb)
    lab *= gain
    lab += offset
    return lab_to_rgb(lab)


METHOD = register_method(StainMethod(
    name="reinhard",
    fit_tiles=fit_tiles,
    transform_pixels=transform_pixels,
    param_shapes={"mean": (3,), "std": (3,)},
))
fit = METHOD.fit
fit_image = METHOD.fit_image
fit_slide = METHOD.fit_slide
transform = METHOD.transform
