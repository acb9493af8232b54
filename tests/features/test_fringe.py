"""Fringe patches: in the boundary band of the largest tumor regions, inside tissue, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from features_drawing import disk
from scipy import ndimage as ndi

from tupac.features.fringe import fringe_band, fringe_patches, fringe_summary

MASK_MPP = 16.0  # µm/px
SLIDE_MPP = 0.25
PATCH_L0 = 1000  # 250 µm at 0.25 µm/px


def _centres_px(origins):
    """Patch centres in mask pixels (row, col)."""
    c_um = (origins + PATCH_L0 / 2) * SLIDE_MPP
    return np.floor(c_um[:, ::-1] / MASK_MPP).astype(int)


def test_patches_lie_in_the_band_inside_tissue_without_overlap():
    tumor = disk((700, 700), (350, 350), 312)  # radius ~5 mm: its band holds more than 50 patches
    tissue = np.zeros_like(tumor)
    tissue[:, :420] = True  # cuts the disk: patches must stay on the tissue side
    origins = fringe_patches(tumor, MASK_MPP, SLIDE_MPP, tissue=tissue, seed=3)
    assert origins.shape == (50, 2) and origins.dtype == np.int64
    band, _ = fringe_band(tumor & tissue, MASK_MPP, band_um=125.0)
    rc = _centres_px(origins)
    assert band[rc[:, 0], rc[:, 1]].all()
    assert tissue[rc[:, 0], rc[:, 1]].all()
    # Band pixels are within 125 µm of the tumor edge.
    depth = ndi.distance_transform_edt(tumor & tissue) * MASK_MPP
    assert (depth[rc[:, 0], rc[:, 1]] <= 125.0).all()
    centres = origins + PATCH_L0 / 2
    d = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1)) + np.eye(50) * 1e9
    assert d.min() >= PATCH_L0 - 1  # non-overlapping 1000 x 1000 patches
    s = fringe_summary(origins, tumor & tissue, MASK_MPP, SLIDE_MPP)
    assert s["fringe_n_patches"] == 50 and s["fringe_n_in_band"] == 50
    assert s["fringe_band_area_mm2"] == pytest.approx(band.sum() * (MASK_MPP / 1000) ** 2)


def test_band_first_then_interior_and_only_largest_regions_in_the_band():
    tumor = disk((300, 300), (150, 150), 80) | disk((300, 300), (20, 20), 10)
    band, interior = fringe_band(tumor, MASK_MPP, band_um=125.0, n_regions=1)
    assert not band[:40, :40].any() and band.any() and interior.any()
    origins = fringe_patches(tumor, MASK_MPP, SLIDE_MPP, n_regions=1, seed=0)
    rc = _centres_px(origins)
    in_band = band[rc[:, 0], rc[:, 1]]
    # A 1.3 mm radius disk: its fringe holds fewer than 50 patches, so the interior fills after the band.
    assert 0 < in_band.sum() < len(origins)
    first_out = int(np.argmin(in_band))
    assert in_band[:first_out].all() and not in_band[first_out:].any()
    assert tumor[rc[:, 0], rc[:, 1]].all()


def test_deterministic_for_a_seed_and_fewer_for_a_small_tumor():
    tumor = disk((400, 400), (200, 200), 150)
    a = fringe_patches(tumor, MASK_MPP, SLIDE_MPP, seed=7)
    b = fringe_patches(tumor.copy(), MASK_MPP, SLIDE_MPP, seed=7)
    c = fringe_patches(tumor, MASK_MPP, SLIDE_MPP, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    small = disk((100, 100), (50, 50), 20)  # 320 µm radius: room for a few patches only
    few = fringe_patches(small, MASK_MPP, SLIDE_MPP)
    assert 1 <= len(few) < 10
    assert fringe_patches(np.zeros((50, 50), bool), MASK_MPP, SLIDE_MPP).shape == (0, 2)


def test_origins_stay_inside_the_slide():
    tumor = np.zeros((100, 100), bool)
    tumor[:30, :30] = True  # in the corner: centres within 125 µm of the slide edge would push origins < 0
    dims = (100 * 64, 100 * 64)  # level-0 px for 1.6 mm
    o = fringe_patches(tumor, MASK_MPP, SLIDE_MPP, slide_dimensions_l0=dims, min_tissue_fraction=0.0)
    assert len(o) and (o >= 0).all() and (o + PATCH_L0 <= np.array(dims)).all()
