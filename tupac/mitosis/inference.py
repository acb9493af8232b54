"""Mitosis detection on an image: stain standardization -> heatmap -> detections.

An image here is a 40x field (``(h, w, 3)`` uint8 at the model's mpp, 0.25 um/px), e.g. one image
of the TUPAC16 auxiliary set or a tile read from a slide. The pipeline:

1. Standardize the image's stain towards the model's training template (its own statistics,
   :func:`standardize_image`).
2. Mirror-pad by the model's cell offset so heatmap cell ``(0, 0)`` sits on image pixel ``(0, 0)``
   (a mitosis at the image border is still seen), and compute the heatmap in windows of bounded
   size (:func:`mitosis_heatmap`); windows start on the cell grid, so the stitched heatmap equals
   a whole-image pass for the exact FCNs and the sliding-window classifiers. The windows go
   through the window engine of the slides (:mod:`tupac.heatmaps.engine`, :class:`ImageWindows`).
3. Smooth, take local maxima above the threshold, suppress neighbours
   (:func:`tupac.mitosis.detect.detect_from_heatmap`).

:class:`MitosisDetector` packs this with a trained model folder, Ray-style: load once in
``__init__``, detect per image in ``__call__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from tupac.errors import DatasetLayoutError
from tupac.heatmaps.engine import ImageWindows, WindowPredictor, compute_heatmap, image_geometry
from tupac.heatmaps.windows import iter_windows
from tupac.mitosis.calibration import PlattCalibration
from tupac.mitosis.detect import detect_from_heatmap
from tupac.preprocess.stain import fit_image, get_method

__all__ = [
    "DEFAULT_NMS_RADIUS_PX",
    "DEFAULT_SIGMA_PX",
    "Heatmap",
    "MitosisDetector",
    "detect_mitoses",
    "mitosis_heatmap",
    "read_image",
    "standardize_image",
]

#: Gaussian smoothing of the heatmap, input pixels: half a MitosNet cell, so isolated one-cell
#: spikes lose against a figure that lights several neighbouring cells.
DEFAULT_SIGMA_PX = 8.0
#: Non-maximum suppression radius, input pixels: about a mitotic figure (an anaphase's two
#: chromosome sets lie 24-38 px apart and must give one detection).
DEFAULT_NMS_RADIUS_PX = 32.0
#: Fields larger than this (pixels) fit their stain statistics on every other pixel.
FIT_SUBSAMPLE_ABOVE_PX = 1 << 20


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB field (TIFF, PNG, JPEG) as ``(h, w, 3)`` uint8; alpha is dropped.

    Raises
    ------
    DatasetLayoutError
        The file is missing, cannot be decoded, or is not an 8-bit RGB(A) image; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(path, "image file does not exist")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            img = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGBA") if im.mode in ("P", "LA") else im)
    except Exception as e:  # decoders raise many types; all mean "not a readable image"
        raise DatasetLayoutError(path, f"cannot read image: {type(e).__name__}: {e}") from None
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] not in (3, 4) or img.dtype != np.uint8:
        raise DatasetLayoutError(path, f"expected an 8-bit RGB image, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img[..., :3])


def standardize_image(rgb: np.ndarray, reference, seed: int = 0) -> np.ndarray:
    """Standardize an image's stain towards ``reference`` using the image's own statistics.

    The colour map is evaluated on the image's distinct colours only (a 2000x2000 field has
    ~10^5 of them; the full 2^24-colour lookup table would cost ~30x more per image).

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
        Not modified.
    reference : StainReference or None
        None returns a copy of ``rgb``.
    seed : int
        Seed of the statistics fit.

    Returns
    -------
    ndarray of uint8, shape (h, w, 3)
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if reference is None:
        return rgb.copy()
    method = get_method(reference.method)
    # The statistics are colour distributions: every other pixel of a large field gives the same
    # fit at a quarter of the cost (the fit dominates the per-image preprocessing time).
    step = 2 if rgb.shape[0] * rgb.shape[1] > FIT_SUBSAMPLE_ABOVE_PX else 1
    stats = fit_image(np.ascontiguousarray(rgb[::step, ::step]), method=reference.method, seed=seed)
    if stats.degenerate:  # no tissue to fit: leave the colours alone
        return rgb.copy()
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colors, inverse = np.unique(packed.ravel(), return_inverse=True)
    px = np.stack([(colors >> 16) & 255, (colors >> 8) & 255, colors & 255], axis=1).astype(np.uint8)
    mapped = method.transform_pixels(px, stats.params, reference.params)
    return np.asarray(mapped, np.uint8)[inverse.reshape(-1)].reshape(rgb.shape)


@dataclass(frozen=True)
class Heatmap:
    """A mitosis probability heatmap and its place on the image.

    Attributes
    ----------
    prob : ndarray of float32, shape (h, w)
        Probability of class 1 (mitosis) per cell.
    stride_px : float
        Image pixels between neighbouring cells.
    offset_px : float
        Image coordinate of the centre of cell ``(0, 0)`` (0 here: the image is padded).
    """

    prob: np.ndarray
    stride_px: float
    offset_px: float


def mitosis_heatmap(model, rgb: np.ndarray, window_cells: int = 64, device: str | None = None) -> Heatmap:
    """Heatmap of a (standardized) image, computed in windows of ``window_cells`` cells a side.

    The image is mirror-padded by the model's cell offset on every side, so that cell ``(i, j)``
    is centred on image pixel ``(i * stride, j * stride)`` and the grid covers the whole image.

    Parameters
    ----------
    model : TupacModel
        Any registered model (``model.heatmap`` contract of :mod:`tupac.models.base`).
    rgb : ndarray of uint8, shape (h, w, 3)
        The image at ``model.card.mpp``.
    window_cells : int
        Cells per window side; bounds the memory of one forward pass.
    device : str, optional
        Torch device to run on; default: where the model's weights are.

    Returns
    -------
    Heatmap
    """
    geom = image_geometry(rgb.shape[:2], model.card, window_cells)
    out = np.zeros(geom.shape, np.float32)

    def sink(rc, block):
        rows, cols = geom.cells(rc)
        out[rows, cols] = block

    model.eval()
    # Windows of one image differ in size at its far edges: one window per model call.
    compute_heatmap(ImageWindows(rgb, geom), WindowPredictor(model, device), sink, iter_windows(geom), batch_size=1)
    return Heatmap(out, float(geom.stride_px), geom.offset_px)


def detect_mitoses(
    model,
    rgb: np.ndarray,
    *,
    threshold: float,
    reference=None,
    sigma_px: float = DEFAULT_SIGMA_PX,
    nms_radius_px: float = DEFAULT_NMS_RADIUS_PX,
    standardized: bool = False,
    device: str | None = None,
) -> pd.DataFrame:
    """Mitosis detections in one image.

    Parameters
    ----------
    model : TupacModel
    rgb : ndarray of uint8, shape (h, w, 3)
        The image at ``model.card.mpp`` (40x).
    threshold : float
        Minimum smoothed probability of a detection.
    reference : StainReference, optional
        The model's training template; the image is standardized towards it unless ``standardized``.
    sigma_px, nms_radius_px : float
        Heatmap smoothing and suppression radius, image pixels.
    standardized : bool
        ``rgb`` is already standardized.
    device : str, optional
        Torch device to run on; default: where the model's weights are.

    Returns
    -------
    DataFrame
        ``x``, ``y`` (image pixels, float64), ``prob`` (float32), by descending ``prob``.
    """
    image = rgb if standardized else standardize_image(rgb, reference)
    hm = mitosis_heatmap(model, image, device=device)
    det = detect_from_heatmap(hm.prob, hm.stride_px, hm.offset_px, threshold, sigma_px, nms_radius_px)
    h, w = rgb.shape[:2]
    # Cells of the padded margin may peak just outside the image; a detection must be on it.
    inside = (det["x"] >= -0.5) & (det["x"] <= w - 0.5) & (det["y"] >= -0.5) & (det["y"] <= h - 0.5)
    return det[inside.to_numpy()].reset_index(drop=True)


class MitosisDetector:
    """A trained mitosis model folder as a callable: ``detector(rgb) -> DataFrame``.

    Parameters
    ----------
    model_dir : path
        ``MODELS/mitosis`` (weights, card with ``detection_threshold``, stain reference).
    device : str
    threshold : float, optional
        Overrides the card's threshold.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", threshold: float | None = None) -> None:
        # Deferred: loading a model imports torch, which detection on a precomputed heatmap does not need.
        from tupac.models.trained import load_trained

        self.trained = load_trained(model_dir, device=device)
        self.device = device
        extra = self.trained.card.extra
        self.threshold = float(self.trained.threshold if threshold is None else threshold)
        # Issue 17: the card's threshold is on the raw scale (a calibrated rule is stored inverted),
        # so detection never needs the calibration; it maps a detection's prob to the chance that
        # it is a mitosis (None for cards written before calibration existed).
        cal = extra.get("calibration")
        self.calibration = PlattCalibration.from_dict(cal) if cal else None
        self.sigma_px = float(extra.get("sigma_px", DEFAULT_SIGMA_PX))
        self.nms_radius_px = float(extra.get("nms_radius_px", DEFAULT_NMS_RADIUS_PX))

    @property
    def mpp(self) -> float:
        """Resolution the images must be at (um/px)."""
        return float(self.trained.card.mpp)

    def calibrated(self, prob) -> np.ndarray:
        """Detection probabilities on the card's calibrated scale (unchanged without calibration)."""
        p = np.asarray(prob, np.float64)
        return self.calibration.apply(p) if self.calibration is not None else p

    def __call__(self, rgb: np.ndarray) -> pd.DataFrame:
        return detect_mitoses(
            self.trained.model,
            rgb,
            threshold=self.threshold,
            reference=self.trained.reference,
            sigma_px=self.sigma_px,
            nms_radius_px=self.nms_radius_px,
            device=self.device,
        )
