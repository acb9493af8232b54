"""Candidate nuclei by morphology: hematoxylin channel, threshold, hole filling, watershed.

The candidates feed mitosis detection (positives/negatives for training, morphometric features),
so the aim is high recall of dark nuclear figures with few detections on stroma or glass, not a
pixel-perfect segmentation.

Pipeline (all sizes in micrometers, converted to pixels with ``mpp``):

1. Hematoxylin optical density by color deconvolution (Ruifrok & Johnston, ``skimage.color.rgb2hed``),
   lightly smoothed so that chromatin texture does not fragment a nucleus.
2. Threshold: Otsu on the hematoxylin values *inside tissue* (pixels darker than glass), never below
   ``h_floor``: Otsu always splits something, so on blank glass or pale stroma the floor is what
   keeps it from calling nuclei.
3. Fill holes up to ``max_hole_um2`` (vesicular nuclei have pale centres); larger holes, e.g. a lumen
   ringed by nuclei, stay open.
4. Drop objects below ``min_area_um2``.
5. Split touching nuclei with a watershed on the distance transform, seeded at its peaks at least
   ``min_distance_um`` apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Nuclei", "find_nuclei", "hematoxylin_od"]


@dataclass(frozen=True)
class Nuclei:
    """Candidate nuclei found in one RGB tile.

    Attributes
    ----------
    labels : ndarray of int32, shape (h, w)
        Label image: 0 is background, ``k + 1`` is nucleus ``k``.
    centroids_rc : ndarray of float64, shape (n, 2)
        ``(row, col)`` centroid of each nucleus in tile pixels.
    areas_um2 : ndarray of float64, shape (n,)
        Area of each nucleus in square micrometers.
    bboxes_rc : ndarray of int64, shape (n, 4)
        ``(row0, col0, row1, col1)`` bounding box of each nucleus, half-open, in tile pixels.
    mpp : float
        Resolution of the tile in micrometers per pixel.
    threshold : float
        Hematoxylin value (``rgb2hed`` units) above which a pixel counted as nuclear; ``inf``
        when the tile holds no tissue.

    Notes
    -----
    Nuclei cut by the tile border are kept with their visible part; callers that tile a slide
    should use overlapping tiles and keep each nucleus in the tile that holds its centroid.
    """

    labels: np.ndarray
    centroids_rc: np.ndarray
    areas_um2: np.ndarray
    bboxes_rc: np.ndarray
    mpp: float
    threshold: float

    def __post_init__(self) -> None:
        n = len(self.areas_um2)
        if self.labels.ndim != 2 or self.labels.dtype != np.int32:
            raise ValueError(f"labels must be a 2-D int32 array, got {self.labels.dtype} {self.labels.shape}")
        if self.centroids_rc.shape != (n, 2) or self.bboxes_rc.shape != (n, 4):
            raise ValueError(
                f"expected centroids (n, 2) and bboxes (n, 4) for n={n}, "
                f"got {self.centroids_rc.shape} and {self.bboxes_rc.shape}"
            )
        if self.mpp <= 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")

    def __len__(self) -> int:
        return len(self.areas_um2)

    @property
    def centroids_xy(self) -> np.ndarray:
        """``(x, y)`` centroids in tile pixels, shape (n, 2), float64."""
        return self.centroids_rc[:, ::-1].copy()

    @property
    def areas_px(self) -> np.ndarray:
        """Area of each nucleus in pixels, shape (n,), float64."""
        return self.areas_um2 / (self.mpp * self.mpp)

    def mask(self, k: int) -> np.ndarray:
        """Boolean mask of nucleus ``k`` cropped to its bounding box (``bboxes_rc[k]``)."""
        r0, c0, r1, c1 = self.bboxes_rc[k]
        return self.labels[r0:r1, c0:c1] == k + 1


def hematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin channel of an RGB H&E image by color deconvolution.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)

    Returns
    -------
    ndarray of float64, shape (h, w)
        Hematoxylin concentration (``skimage.color.rgb2hed`` units, >= 0; glass ~0,
        pink cytoplasm < 0.02, nuclei ~0.06-0.15).
    """
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., 0]


def _tissue_mask(rgb: np.ndarray, tissue_od: float) -> np.ndarray:
    # Glass is bright in every channel; any stained pixel is dark in at least one.
    darkest = rgb.min(axis=-1).astype(np.float64)
    od = -np.log10(np.clip(darkest, 1.0, 255.0) / 255.0)
    return od > tissue_od


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= r * r


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or np.ptp(values) == 0:
        return float("inf") if values.size == 0 else float(values[0])
    return float(threshold_otsu(values))


def _fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background components enclosed by ``mask`` with at most ``max_hole_px`` pixels."""
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    # A component touching the tile border may continue outside it: never a hole.
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = sizes <= max_hole_px
    fill[0] = False
    fill[border] = False
    return mask | fill[holes]


def _drop_small(labels: np.ndarray, min_px: float) -> np.ndarray:
    """Zero out labels smaller than ``min_px`` and renumber the rest 1..n (int32)."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    new_ids = np.zeros(len(sizes), dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels]


def _split_touching(mask: np.ndarray, min_distance_px: int) -> np.ndarray:
    """Watershed of ``mask`` on its distance transform, one seed per distance peak."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    components, n = ndi.label(mask)
    if n == 0:
        return components.astype(np.int32)
    dist = ndi.distance_transform_edt(mask)
    # Smoothing the distance map merges the spurious peaks of ragged outlines.
    dist = ndi.gaussian_filter(dist, sigma=max(1.0, min_distance_px / 4))
    peaks = peak_local_max(
        dist, min_distance=max(1, min_distance_px), labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # Every component gets a seed, even one whose distance map is flat (no strict peak).
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[components[peaks[:, 0], peaks[:, 1]]] = True
    unseeded = np.flatnonzero(~seeded[1:]) + 1
    if unseeded.size:
        pos = np.asarray(ndi.maximum_position(dist, components, unseeded), dtype=np.int64).reshape(-1, 2)
        markers[pos[:, 0], pos[:, 1]] = np.arange(len(peaks) + 1, len(peaks) + 1 + len(pos), dtype=np.int32)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


def _properties(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Areas (px), centroids ``(row, col)`` and half-open bboxes of labels 1..n."""
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    sum_r = np.bincount(flat, weights=rows, minlength=n + 1)[1:]
    sum_c = np.bincount(flat, weights=cols, minlength=n + 1)[1:]
    centroids = np.stack([sum_r, sum_c], axis=1) / np.maximum(area, 1)[:, None]
    slices = ndi.find_objects(labels, max_label=n)
    bboxes = np.array(
        [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices], dtype=np.int64
    ).reshape(-1, 4)
    return area, centroids, bboxes


def find_nuclei(
    rgb: np.ndarray,
    mpp: float = 0.25,
    *,
    min_area_um2: float = 8.0,
    max_hole_um2: float = 30.0,
    min_distance_um: float = 3.0,
    smooth_um: float = 0.5,
    open_um: float = 0.75,
    h_floor: float = 0.035,
    tissue_od: float = 0.1,
) -> Nuclei:
    """Find candidate nuclei in an RGB H&E tile.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
        The tile; not modified.
    mpp : float
        Resolution of the tile in micrometers per pixel (0.25 at 40x).
    min_area_um2 : float
        Objects smaller than this are dropped (debris, chromatin specks), before and after the split.
    max_hole_um2 : float
        Holes up to this area inside a nucleus are filled (pale vesicular centres).
    min_distance_um : float
        Minimum distance between watershed seeds; nuclei closer than this stay merged.
    open_um : float
        Radius of the binary opening that trims thin strands off the mask (0 disables).
    smooth_um : float
        Gaussian sigma applied to the hematoxylin channel before thresholding (0 disables).
    h_floor : float
        Lowest hematoxylin threshold (``rgb2hed`` units). On blank glass or pale stroma Otsu
        would split noise; the floor keeps such tiles free of nuclei.
    tissue_od : float
        Optical density of the darkest channel above which a pixel is tissue (the population
        Otsu is computed on).

    Returns
    -------
    Nuclei
        Label image, centroids, areas (µm²) and bounding boxes; ``len() == 0`` when none.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a (h, w, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    px_per_um2 = 1.0 / (mpp * mpp)

    h = hematoxylin_od(rgb)
    if smooth_um > 0:
        h = ndi.gaussian_filter(h, sigma=smooth_um / mpp)
    tissue = _tissue_mask(rgb, tissue_od)
    threshold = max(_otsu(h[tissue]), h_floor)

    mask = (h > threshold) & tissue
    mask = _fill_small_holes(mask, max_hole_um2 * px_per_um2)
    if open_um > 0:
        # Opening trims the thin strands of dark cytoplasm that bridge or fringe nuclei.
        mask = ndi.binary_opening(mask, structure=_disk(open_um / mpp))
    components, _ = ndi.label(mask)
    mask = _drop_small(components, min_area_um2 * px_per_um2) > 0
    labels = _split_touching(mask, int(round(min_distance_um / mpp)))
    labels = _drop_small(labels, min_area_um2 * px_per_um2)

    n = int(labels.max(initial=0))
    area_px, centroids, bboxes = _properties(labels, n)
    return Nuclei(
        labels=labels,
        centroids_rc=centroids,
        areas_um2=area_px / px_per_um2,
        bboxes_rc=bboxes,
        mpp=float(mpp),
        threshold=float(threshold),
    )
