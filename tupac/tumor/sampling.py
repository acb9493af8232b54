"""Where to take tumor training patches from a slide: positives in annotated ROIs, negatives elsewhere.

TUPAC16's ROI boxes mark *part* of the tumor (they are not exhaustive), so negatives drawn from
tissue outside the boxes are noisy: some of them are unannotated tumor. The paper's second stage
(:mod:`tupac.tumor.training`) adds the regions a stage-1 model calls tumor with high confidence to
the positives and takes them out of the negative pool; ``extra_positive`` carries that mask here,
and ``not_negative`` the wider area where the stage-1 model sees possible tumor.

A patch is labelled by its center. Negative centers keep a margin from every positive or
possible-tumor area, so that the unannotated rim of a tumor region (patches centered in tumor, half
of them stroma) is not taught as non-tumor; without it the localized tumor shrinks all around, on
small regions by a third of their area. The band the margin leaves unlabelled is filled by
synthetic edge patches (:mod:`tupac.tumor.edges`); without them the margin also set where the
boundary landed (see :mod:`tupac.tumor.training` for the measured effect).

Everything is pure: masks and boxes in, patch centers in level-0 pixels out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchCenters:
    """Sampled patch centers of one slide, level-0 pixels.

    Attributes
    ----------
    positive_xy_l0, negative_xy_l0 : ndarray of float64, shape (n, 2)
        ``(x, y)`` centers of tumor / non-tumor patches.
    """

    positive_xy_l0: np.ndarray
    negative_xy_l0: np.ndarray


def roi_mask(rois_l0: np.ndarray, shape: tuple[int, int], mask_mpp: float, slide_mpp: float) -> np.ndarray:
    """Rasterize ROI boxes ``(x, y, width, height)`` (level 0) onto a mask grid at ``mask_mpp``.

    A mask pixel is inside when its center lies inside a box.

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    out = np.zeros(shape, dtype=bool)
    f = slide_mpp / mask_mpp
    for x, y, w, h in np.asarray(rois_l0, dtype=np.float64).reshape(-1, 4):
        c0, c1 = int(np.ceil(x * f - 0.5)), int(np.ceil((x + w) * f - 0.5))
        r0, r1 = int(np.ceil(y * f - 0.5)), int(np.ceil((y + h) * f - 0.5))
        out[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return out


def _sample_pixels(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``(row, col)`` of True pixels (with replacement when the mask is small)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0 or n <= 0:
        return np.zeros((0, 2), dtype=np.float64)
    idx = rng.choice(rows.size, size=n, replace=rows.size < n)
    return np.stack([rows[idx], cols[idx]], axis=1).astype(np.float64)


def _to_l0(rc: np.ndarray, mask_mpp: float, slide_mpp: float, rng: np.random.Generator) -> np.ndarray:
    """Mask pixels -> level-0 ``(x, y)``, jittered uniformly inside each mask pixel."""
    jitter = rng.random(rc.shape)
    xy_mask = rc[:, ::-1] + jitter
    return xy_mask * (mask_mpp / slide_mpp)


def sample_patch_centers(
    tissue: np.ndarray,
    mask_mpp: float,
    slide_mpp: float,
    rois_l0: np.ndarray,
    n_positive: int,
    n_negative: int,
    rng: np.random.Generator,
    *,
    extra_positive: np.ndarray | None = None,
    not_negative: np.ndarray | None = None,
    negative_margin_um: float = 50.0,
) -> PatchCenters:
    """Sample tumor and non-tumor patch centers for one slide.

    Parameters
    ----------
    tissue : ndarray of bool, shape (h, w)
        Tissue mask at ``mask_mpp`` um/px.
    mask_mpp, slide_mpp : float
        Resolution of the masks and of the slide's level 0 (um/px).
    rois_l0 : ndarray, shape (n, 4)
        Annotated tumor boxes ``(x, y, width, height)`` in level-0 pixels.
    n_positive, n_negative : int
        Number of centers wanted; positives are split evenly between the ROIs and
        ``extra_positive`` when both exist.
    rng : numpy Generator
        Seeded by the caller.
    extra_positive : ndarray of bool, shape (h, w), optional
        Further tumor (stage 2: confident stage-1 predictions); excluded from negatives.
    not_negative : ndarray of bool, shape (h, w), optional
        Possible tumor that is not a positive (stage 2: tissue the stage-1 model scores above its
        decision threshold); negatives keep ``negative_margin_um`` from it too.
    negative_margin_um : float
        Negatives keep this distance from every positive and possible-tumor area, so a patch
        centered on an unannotated tumor rim is not labelled non-tumor.

    Returns
    -------
    PatchCenters
    """
    from scipy import ndimage as ndi

    tissue = np.asarray(tissue, dtype=bool)
    annotated = roi_mask(rois_l0, tissue.shape, mask_mpp, slide_mpp) & tissue
    extra = np.zeros_like(tissue) if extra_positive is None else (np.asarray(extra_positive, bool) & tissue & ~annotated)
    positive_any = annotated | extra
    avoid = positive_any if not_negative is None else positive_any | (np.asarray(not_negative, bool) & tissue)
    if avoid.any():
        # Euclidean distance (in um) from each pixel to the nearest pixel to avoid.
        far = ndi.distance_transform_edt(~avoid) * mask_mpp >= max(negative_margin_um, mask_mpp)
    else:
        far = np.ones_like(tissue)
    negative_pool = tissue & far

    n_extra = n_positive // 2 if (extra.any() and annotated.any()) else (n_positive if extra.any() else 0)
    pos_rc = np.concatenate([_sample_pixels(annotated, n_positive - n_extra, rng), _sample_pixels(extra, n_extra, rng)])
    neg_rc = _sample_pixels(negative_pool, n_negative, rng)
    return PatchCenters(_to_l0(pos_rc, mask_mpp, slide_mpp, rng), _to_l0(neg_rc, mask_mpp, slide_mpp, rng))


def read_patches(reader, centers_xy_l0: np.ndarray, patch_px: int, mpp: float, preprocess=None) -> np.ndarray:
    """Read square patches centered on level-0 points, at ``mpp``.

    Parameters
    ----------
    reader : SlideReader
    centers_xy_l0 : ndarray, shape (n, 2)
    patch_px : int
        Patch edge in pixels at ``mpp``.
    mpp : float
        Resolution to read at (um/px).
    preprocess : callable, optional
        ``uint8 (H, W, 3) -> uint8 (H, W, 3)``, e.g. stain standardization. It must be a per-pixel
        color map (all tupac stain methods are): the patches are stacked into one tall image and
        transformed in a single call, which lets the transform use its lookup table.

    Returns
    -------
    ndarray of uint8, shape (n, patch_px, patch_px, 3)
    """
    half_l0 = patch_px / 2 * mpp / reader.mpp
    out = np.empty((len(centers_xy_l0), patch_px, patch_px, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(np.asarray(centers_xy_l0, dtype=np.float64)):
        tile = reader.read_region_mpp((int(round(x - half_l0)), int(round(y - half_l0))), (patch_px, patch_px), mpp)
        out[i] = tile
    if preprocess is not None and len(out):
        out = preprocess(out.reshape(-1, patch_px, 3)).reshape(out.shape)
    return out
