"""GeoJSON for QuPath: polygons from drawn heatmaps, mitosis points, empty inputs, validation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from runs import disk  # noqa: E402

from tupac.geometry import Frame as HeatmapFrame  # noqa: E402
from tupac.report.geojson import (  # noqa: E402
    dumps,
    feature_collection,
    mask_polygons,
    mitosis_features,
    polygon_area,
    ring_signed_area,
    tumor_features,
    validate_feature_collection,
)

shapely = pytest.importorskip("shapely")

# A 10x-like heatmap: 4 µm per cell, its first cell centred 6 µm down and 10 µm right of the
# origin, on a 0.25 µm/px slide: one cell is 16 level-0 pixels.
FRAME = HeatmapFrame(mpp=4.0, offset_um=(6.0, 10.0), slide_mpp=0.25, slide_size=(4000, 3000))


def _to_l0(rc, frame=FRAME):
    return ((frame.offset_um[1] + frame.mpp * rc[1]) / frame.slide_mpp,
            (frame.offset_um[0] + frame.mpp * rc[0]) / frame.slide_mpp)


def _poly(feature):
    rings = feature["geometry"]["coordinates"]
    return shapely.Polygon(rings[0], rings[1:])


def test_disk_polygon_area_centre_and_level0_frame() -> None:
    prob = disk((60, 80), (25.0, 40.0), 15.0).astype(np.float32) * 0.9
    feats = tumor_features(prob, FRAME, threshold=0.5, tolerance_um=1.0)
    assert len(feats) == 1
    f = feats[0]
    assert f["properties"]["objectType"] == "annotation"
    assert f["properties"]["classification"]["name"] == "Tumor"
    assert len(f["geometry"]["coordinates"]) == 1  # no hole
    poly = _poly(f)
    assert poly.is_valid
    mask_px = int((prob >= 0.5).sum())
    cell_l0 = FRAME.mpp / FRAME.slide_mpp
    # the polygon encloses the mask's pixels: area within 2 % of the pixel count (in level-0 px²)
    assert poly.area == pytest.approx(mask_px * cell_l0**2, rel=0.02)
    # and a true disk of 15 cells radius to within 3 %
    assert poly.area == pytest.approx(math.pi * (15 * cell_l0) ** 2, rel=0.03)
    cx, cy = _to_l0((25.0, 40.0))
    assert poly.centroid.x == pytest.approx(cx, abs=0.5)
    assert poly.centroid.y == pytest.approx(cy, abs=0.5)
    m = f["properties"]["measurements"]
    assert m["mean_prob"] == pytest.approx(0.9, abs=1e-6) and m["max_prob"] == pytest.approx(0.9, abs=1e-6)
    assert m["area_um2"] == pytest.approx(poly.area * FRAME.slide_mpp**2, rel=1e-6)
    assert m["mask_area_um2"] == pytest.approx(mask_px * FRAME.mpp**2)
    assert validate_feature_collection(feature_collection(feats), FRAME.slide_size) == []


def test_ring_has_a_hole_and_separate_island_is_its_own_polygon() -> None:
    shape = (80, 100)
    ring = disk(shape, (40, 40), 25) & ~disk(shape, (40, 40), 10)
    island = disk(shape, (40, 40), 4)  # inside the hole: its own region
    far = disk(shape, (40, 88), 6)
    prob = (ring | island | far).astype(np.float32)
    feats = tumor_features(prob, FRAME, threshold=0.5, tolerance_um=2.0)
    assert len(feats) == 3
    by_rings = sorted(feats, key=lambda f: -len(f["geometry"]["coordinates"]))
    ring_f = by_rings[0]
    assert len(ring_f["geometry"]["coordinates"]) == 2  # exterior + hole
    poly = _poly(ring_f)
    assert poly.is_valid
    cell2 = (FRAME.mpp / FRAME.slide_mpp) ** 2
    assert poly.area == pytest.approx(int(ring.sum()) * cell2, rel=0.03)
    ext, hole = (np.asarray(r) for r in ring_f["geometry"]["coordinates"])
    assert ring_signed_area(ext) > 0 and ring_signed_area(hole) < 0  # RFC 7946 orientation
    # the hole's interior point (the centre) is outside the ring polygon, and inside the island's
    centre = shapely.Point(*_to_l0((40.0, 40.0)))
    assert not poly.contains(centre)
    assert any(_poly(f).contains(centre) for f in feats if f is not ring_f)
    # polygons do not overlap one another
    polys = [_poly(f) for f in feats]
    assert sum(p.area for p in polys) == pytest.approx(shapely.union_all(polys).area, rel=1e-9)
    assert validate_feature_collection(feature_collection(feats), FRAME.slide_size) == []


def test_simplification_shrinks_vertices_but_keeps_area() -> None:
    prob = disk((120, 120), (60, 60), 50).astype(np.float32)
    raw = tumor_features(prob, FRAME, 0.5, tolerance_um=0.0)[0]
    simple = tumor_features(prob, FRAME, 0.5, tolerance_um=4.0)[0]  # one heatmap cell
    n_raw = len(raw["geometry"]["coordinates"][0])
    n_simple = len(simple["geometry"]["coordinates"][0])
    assert n_simple < n_raw / 3
    assert _poly(simple).area == pytest.approx(_poly(raw).area, rel=0.02)
    assert _poly(simple).is_valid


def test_regions_are_clipped_to_the_slide() -> None:
    # a region running off the right and bottom edges of a small slide
    frame = HeatmapFrame(mpp=4.0, offset_um=(2.0, 2.0), slide_mpp=0.25, slide_size=(600, 500))
    prob = np.zeros((40, 40), np.float32)
    prob[20:, 20:] = 1.0  # cells beyond the slide's extent too (150 x 125 µm)
    feats = tumor_features(prob, frame, 0.5)
    assert len(feats) == 1
    xy = np.asarray(feats[0]["geometry"]["coordinates"][0])
    # column 37 is centred at 2 + 4 * 37 = 150 µm (on the edge: kept, its outline clamped to 600 px);
    # the last row centred on the slide is 30 (122 µm), whose cell ends at 124 µm = 496 px.
    assert xy[:, 0].max() == pytest.approx(600) and xy[:, 1].max() == pytest.approx(496)
    assert xy.min() >= 0
    assert _poly(feats[0]).is_valid
    assert validate_feature_collection(feature_collection(feats), frame.slide_size) == []


def test_mitosis_points_sit_exactly_on_their_detections() -> None:
    det = pd.DataFrame({"x": [10.0, 1234.5, 3999.0], "y": [20.0, 777.25, 0.0], "prob": [0.91, 0.5, 0.733]})
    feats = mitosis_features(det)
    fc = feature_collection(feats)
    back = json.loads(dumps(fc))
    for f, (_, row) in zip(back["features"], det.iterrows()):
        assert f["geometry"] == {"type": "Point", "coordinates": [row.x, row.y]}
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["classification"]["name"] == "Mitosis"
        assert f["properties"]["measurements"]["prob"] == row.prob
    assert validate_feature_collection(back, (4000, 3000)) == []
    assert mitosis_features(det, "annotation")[0]["properties"]["objectType"] == "annotation"
    with pytest.raises(ValueError):
        mitosis_features(det, "cell")


def test_empty_inputs_give_empty_valid_collections() -> None:
    empty = feature_collection(tumor_features(np.zeros((30, 30), np.float32), FRAME, 0.5))
    assert empty == {"type": "FeatureCollection", "features": []}
    assert validate_feature_collection(empty) == []
    no_det = feature_collection(mitosis_features(pd.DataFrame({"x": [], "y": [], "prob": []})))
    assert no_det["features"] == [] and validate_feature_collection(no_det) == []
    # all-NaN heatmap (unwritten float chunks) is no tumor either
    assert tumor_features(np.full((10, 10), np.nan, np.float32), FRAME, 0.5) == []


def test_validation_finds_what_is_wrong() -> None:
    good = tumor_features(disk((30, 30), (15, 15), 8).astype(np.float32), FRAME, 0.5)[0]
    bowtie = json.loads(json.dumps(good))
    bowtie["geometry"]["coordinates"] = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    open_ring = json.loads(json.dumps(good))
    open_ring["geometry"]["coordinates"][0] = open_ring["geometry"]["coordinates"][0][:-1]
    cw = json.loads(json.dumps(good))
    cw["geometry"]["coordinates"][0] = cw["geometry"]["coordinates"][0][::-1]
    no_class = json.loads(json.dumps(good))
    del no_class["properties"]["classification"]
    outside = mitosis_features(pd.DataFrame({"x": [5000.0], "y": [1.0], "prob": [0.9]}))[0]
    problems = validate_feature_collection(feature_collection([good, bowtie, open_ring, cw, no_class, outside]),
                                           FRAME.slide_size)
    text = "\n".join(problems)
    assert "feature 0" not in text
    assert "feature 1: invalid polygon" in text
    assert "feature 2 ring 0: not closed" in text
    assert "feature 3: exterior ring is not counter-clockwise" in text
    assert "feature 4: properties.classification" in text
    assert "feature 5: 1 coordinate(s) outside the slide" in text
    assert validate_feature_collection({"type": "Feature"}) != []


def test_mask_polygons_does_not_modify_its_input() -> None:
    mask = disk((20, 20), (10, 10), 5)
    before = mask.copy()
    out = mask_polygons(mask, FRAME, 1.0)
    assert np.array_equal(mask, before) and len(out) == 1
    assert polygon_area([r.tolist() for r in out[0][0]]) > 0
