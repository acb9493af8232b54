"""QuPath export: tumor regions and mitoses as GeoJSON FeatureCollections in level-0 pixels.

QuPath (0.4 and later) imports a GeoJSON ``FeatureCollection`` through *File > Import objects
from file* (or ``importObjectsFromFile`` in a script). Each ``Feature`` carries a geometry in
pixel units of the full-resolution image, origin at the top-left corner, ``x`` right, ``y`` down,
and QuPath's object metadata in ``properties``:

- ``objectType``: ``"annotation"`` or ``"detection"``;
- ``classification``: ``{"name": ..., "color": [r, g, b]}``;
- ``measurements``: ``{name: number}`` (shown in QuPath's measurement tables).

Tumor regions are ``Polygon`` annotations, one per connected region of the thresholded tumor
heatmap, with holes as interior rings. Mitoses are ``Point`` features (detections by default)
with their probability as a measurement.

Geometry: heatmap pixel ``(i, j)`` is centred at ``offset_um + mpp * (i, j)`` µm from the slide's
level-0 origin (the store's convention, see :mod:`tupac.heatmaps.store`); level-0 pixel coordinates
are µm / ``slide_mpp`` (:class:`tupac.geometry.Frame`, placed on the slide). Region outlines are
the 0.5 iso-lines of the binary mask (marching
squares on a zero-padded mask: every ring is closed; regions are 4-connected and background is
8-connected, so a ring never touches another), simplified with Douglas-Peucker at a tolerance in
µm, and oriented as RFC 7946 asks (exterior counter-clockwise, holes clockwise, by the signed
shoelace area of the ``(x, y)`` numbers).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from tupac.geometry import Frame

__all__ = [
    "TUMOR_CLASS",
    "MITOSIS_CLASS",
    "ring_signed_area",
    "mask_polygons",
    "tumor_features",
    "mitosis_features",
    "feature_collection",
    "validate_feature_collection",
    "polygon_area",
    "dumps",
]

TUMOR_CLASS = {"name": "Tumor", "color": [200, 0, 0]}
"""QuPath's built-in "Tumor" class and its default colour."""
MITOSIS_CLASS = {"name": "Mitosis", "color": [255, 200, 0]}
_DECIMALS = 3  # 1/1000 level-0 pixel: far below anything a viewer shows, keeps files small


def ring_signed_area(xy: np.ndarray) -> float:
    """Shoelace signed area of a ring (shape (n, 2), closed or not); > 0 is counter-clockwise
    in a y-up plot of the numbers."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def polygon_area(rings: Sequence[Sequence[Sequence[float]]]) -> float:
    """Area of a GeoJSON polygon (exterior minus holes), in squared coordinate units."""
    areas = [abs(ring_signed_area(np.asarray(r, np.float64))) for r in rings]
    return areas[0] - sum(areas[1:]) if areas else 0.0


def _closed(xy: np.ndarray) -> np.ndarray:
    return xy if np.array_equal(xy[0], xy[-1]) else np.vstack([xy, xy[:1]])


def _oriented(xy: np.ndarray, ccw: bool) -> np.ndarray:
    return xy if (ring_signed_area(xy) > 0) == ccw else xy[::-1]


def _simplify(rc: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Douglas-Peucker on a closed ring; falls back to the input when it would collapse."""
    if tolerance_px <= 0:
        return rc
    out = approximate_polygon(rc, tolerance_px)
    if len(out) < 4 or abs(ring_signed_area(out)) < 0.5 * abs(ring_signed_area(rc)):
        return rc
    return _closed(out)


def _rings_valid(rings: list[np.ndarray]) -> bool:
    """Shapely's validity check when shapely is installed (the dev extra); else True."""
    try:  # optional (the dev extra), so imported where it is used
        import shapely
    except ImportError:
        return True
    return bool(shapely.Polygon(rings[0], rings[1:]).is_valid)


def mask_polygons(
    mask: np.ndarray, frame: Frame, tolerance_um: float = 0.0
) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Outline every 4-connected region of a binary mask as a polygon in level-0 pixels.

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, cols)
        Heatmap pixels inside the region (not modified).
    frame : Frame
        Placement of the heatmap on the slide.
    tolerance_um : float
        Douglas-Peucker tolerance in µm (0 keeps the marching-squares outline).

    Returns
    -------
    list of (rings, component)
        Per region: ``rings`` = [exterior, hole, ...], each an ndarray of float64, shape (n, 2),
        level-0 ``(x, y)``, closed (first point repeated last), exterior counter-clockwise and
        holes clockwise (numeric shoelace sign); ``component`` = the region's heatmap pixels as
        a tuple of slices and a bool sub-mask (for per-region statistics).
    """
    mask = np.asarray(mask, bool)
    inside = frame.centres_inside(mask.shape)
    if inside is not None:
        mask = mask & inside
    labels, n = ndimage.label(mask)  # default structure: 4-connectivity, as find_contours' "low"
    tol_px = float(tolerance_um) / frame.mpp
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl] == k
        contours = find_contours(np.pad(sub, 1).astype(np.float32), 0.5)
        origin = np.array([sl[0].start - 1, sl[1].start - 1], np.float64)
        rings_rc = [_closed(c) + origin for c in contours if len(c) >= 4]
        if not rings_rc:
            continue
        areas = [abs(ring_signed_area(r)) for r in rings_rc]
        order = np.argsort(areas)[::-1]  # the exterior encloses every hole: the largest ring
        raw = [rings_rc[i] for i in order]
        simple = [_simplify(r, tol_px) for r in raw]
        rings = []
        for rc_set in (simple, raw):
            rings = [_oriented(frame.rc_to_l0(r), ccw=(i == 0)) for i, r in enumerate(rc_set)]
            if _rings_valid(rings):
                break  # simplification can, rarely, make a thin neck cross itself: keep the raw outline
        out.append((rings, (sl, sub)))
    return out


def _round_ring(xy: np.ndarray) -> list[list[float]]:
    r = np.round(xy, _DECIMALS)
    r[-1] = r[0]  # rounding keeps closure exact
    return r.tolist()


def tumor_features(
    prob: np.ndarray,
    frame: Frame,
    threshold: float,
    tolerance_um: float = 0.0,
    min_area_um2: float = 0.0,
) -> list[dict[str, Any]]:
    """GeoJSON ``Polygon`` annotations of the regions where ``prob >= threshold``.

    Parameters
    ----------
    prob : ndarray of float, shape (rows, cols)
        Tumor probability heatmap (NaN counts as 0).
    frame : Frame
    threshold : float
        Region threshold on the probability.
    tolerance_um : float
        Douglas-Peucker tolerance in µm.
    min_area_um2 : float
        Regions whose pixel area is smaller are dropped.

    Returns
    -------
    list of dict
        Features with ``properties = {"objectType": "annotation", "classification": Tumor,
        "measurements": {"area_um2", "mask_area_um2", "mean_prob", "max_prob"}}``; ``area_um2`` is
        the polygon's area, ``mask_area_um2`` the heatmap pixels' area.
    """
    prob = np.nan_to_num(np.asarray(prob, np.float32), nan=0.0)
    feats = []
    cell_um2 = frame.mpp**2
    for rings, (sl, sub) in mask_polygons(prob >= threshold, frame, tolerance_um):
        vals = prob[sl][sub]
        mask_area = float(vals.size) * cell_um2
        if mask_area < min_area_um2:
            continue
        coords = [_round_ring(r) for r in rings]
        feats.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": {
                "objectType": "annotation",
                "classification": dict(TUMOR_CLASS),
                "measurements": {
                    "area_um2": round(polygon_area(coords) * frame.slide_mpp**2, 3),
                    "mask_area_um2": round(mask_area, 3),
                    "mean_prob": round(float(vals.mean()), 6),
                    "max_prob": round(float(vals.max()), 6),
                },
            },
        })
    return feats


def mitosis_features(detections: pd.DataFrame, object_type: str = "detection") -> list[dict[str, Any]]:
    """GeoJSON ``Point`` features at each detection, probability as a measurement.

    Parameters
    ----------
    detections : DataFrame
        Columns ``x, y, prob``: level-0 pixels and probability (the ``RUN/slides/<id>.mitoses.csv``
        table). Coordinates are written exactly as given.
    object_type : {"detection", "annotation"}

    Returns
    -------
    list of dict
    """
    if object_type not in ("detection", "annotation"):
        raise ValueError(f"object_type must be 'detection' or 'annotation', got {object_type!r}")
    xs = detections["x"].to_numpy(np.float64).tolist()
    ys = detections["y"].to_numpy(np.float64).tolist()
    ps = detections["prob"].to_numpy(np.float64).tolist()
    cls = MITOSIS_CLASS
    return [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [x, y]},
            "properties": {
                "objectType": object_type,
                "classification": {"name": cls["name"], "color": list(cls["color"])},
                "measurements": {"prob": p},
            },
        }
        for x, y, p in zip(xs, ys, ps)
    ]


def feature_collection(features: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"type": "FeatureCollection", "features": [...]}``."""
    return {"type": "FeatureCollection", "features": list(features)}


def _check_ring(ring: Any, where: str) -> list[str]:
    xy = np.asarray(ring, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        return [f"{where}: not a list of [x, y] positions"]
    problems = []
    if len(xy) < 4:
        problems.append(f"{where}: {len(xy)} positions, a linear ring needs at least 4")
    elif not np.array_equal(xy[0], xy[-1]):
        problems.append(f"{where}: not closed (first position != last)")
    if not np.isfinite(xy).all():
        problems.append(f"{where}: non-finite coordinates")
    return problems


def validate_feature_collection(fc: Any, slide_size: tuple[int, int] | None = None) -> list[str]:
    """Problems that would stop QuPath (or any GeoJSON reader) from importing ``fc`` as intended.

    Checks the structure (FeatureCollection of Features with ``geometry`` and QuPath
    ``properties``), linear rings (>= 4 positions, closed, finite), ring orientation (RFC 7946),
    polygon validity with shapely when installed (no self-intersection, holes inside the exterior),
    and that every coordinate lies inside ``[0, width] x [0, height]`` level-0 pixels.

    Returns
    -------
    list of str
        Empty when the collection is valid.
    """
    if not isinstance(fc, dict) or fc.get("type") != "FeatureCollection" or not isinstance(fc.get("features"), list):
        return ["not a GeoJSON FeatureCollection with a 'features' list"]
    try:  # optional (the dev extra), so imported where it is used
        import shapely
        from shapely.validation import explain_validity
    except ImportError:
        shapely = None
    problems: list[str] = []
    for i, f in enumerate(fc["features"]):
        where = f"feature {i}"
        if not isinstance(f, dict) or f.get("type") != "Feature" or not isinstance(f.get("geometry"), dict):
            problems.append(f"{where}: not a Feature with a geometry")
            continue
        props = f.get("properties") or {}
        if props.get("objectType") not in ("annotation", "detection"):
            problems.append(f"{where}: properties.objectType must be 'annotation' or 'detection'")
        cls = props.get("classification")
        if not (isinstance(cls, dict) and isinstance(cls.get("name"), str) and len(cls.get("color", [])) == 3):
            problems.append(f"{where}: properties.classification needs a name and an [r, g, b] color")
        g = f["geometry"]
        if g.get("type") == "Point":
            pts = np.asarray([g.get("coordinates")], np.float64)
            if pts.shape != (1, 2) or not np.isfinite(pts).all():
                problems.append(f"{where}: a Point needs two finite coordinates")
                continue
        elif g.get("type") == "Polygon":
            rings = g.get("coordinates") or []
            if not rings:
                problems.append(f"{where}: polygon without rings")
                continue
            ring_problems = [p for j, r in enumerate(rings) for p in _check_ring(r, f"{where} ring {j}")]
            problems += ring_problems
            if ring_problems:
                continue
            if ring_signed_area(np.asarray(rings[0], np.float64)) <= 0:
                problems.append(f"{where}: exterior ring is not counter-clockwise (RFC 7946)")
            for j, r in enumerate(rings[1:], start=1):
                if ring_signed_area(np.asarray(r, np.float64)) >= 0:
                    problems.append(f"{where} ring {j}: hole is not clockwise (RFC 7946)")
            if shapely is not None:
                poly = shapely.Polygon(rings[0], rings[1:])
                if not poly.is_valid:
                    problems.append(f"{where}: invalid polygon ({explain_validity(poly)})")
            pts = np.concatenate([np.asarray(r, np.float64) for r in rings])
        else:
            problems.append(f"{where}: geometry type {g.get('type')!r} (expected Point or Polygon)")
            continue
        if slide_size is not None:
            w, h = slide_size
            out = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
            if out.any():
                problems.append(f"{where}: {int(out.sum())} coordinate(s) outside the slide (0..{w} x 0..{h})")
    return problems


def dumps(fc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a FeatureCollection (NaN refused: GeoJSON has none)."""
    return json.dumps(fc, separators=(",", ":"), allow_nan=False).encode()
