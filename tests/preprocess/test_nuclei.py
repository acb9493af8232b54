"""Candidate nuclei on small synthetic H&E tiles with known answers, and on a real 40x field."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.preprocess.nuclei import Nuclei, find_nuclei

PINK = (230, 150, 200)  # eosin-stained cytoplasm: H ~ 0.001
PURPLE = (70, 35, 110)  # hematoxylin-dark nucleus: H ~ 0.12
MPP = 0.25


def _tile(shape, disks, seed=0):
    """Pink tile with dark disks ``(row, col, radius_px)`` and a little sensor noise."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.empty((*shape, 3), np.float64)
    img[:] = PINK
    for r, c, rad in disks:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = PURPLE
    img += rng.normal(0, 3, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _disk_area_px(rad):
    rr, cc = np.mgrid[-rad - 1 : rad + 2, -rad - 1 : rad + 2]
    return int((rr**2 + cc**2 <= rad**2).sum())


def test_two_separate_disks_give_two_nuclei_at_the_right_place():
    disks = [(40, 40, 14), (45, 110, 12)]
    img = _tile((90, 160), disks)
    before = img.copy()
    nuc = find_nuclei(img, mpp=MPP)
    assert isinstance(nuc, Nuclei)
    assert np.array_equal(img, before), "input was modified"
    assert len(nuc) == 2
    order = np.argsort(nuc.centroids_rc[:, 1])
    np.testing.assert_allclose(nuc.centroids_rc[order], [[40, 40], [45, 110]], atol=1.0)
    want_um2 = np.array([_disk_area_px(14), _disk_area_px(12)]) * MPP**2
    np.testing.assert_allclose(nuc.areas_um2[order], want_um2, rtol=0.12)
    assert nuc.labels.dtype == np.int32 and nuc.labels.shape == img.shape[:2]
    assert set(np.unique(nuc.labels)) == {0, 1, 2}
    # bboxes and masks agree with the label image
    for k in range(2):
        r0, c0, r1, c1 = nuc.bboxes_rc[k]
        m = nuc.mask(k)
        assert m.shape == (r1 - r0, c1 - c0)
        assert m.sum() == (nuc.labels == k + 1).sum()
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()


def test_touching_disks_are_split():
    # Centres 26 px apart with radius 15: the disks overlap (a waist of ~15 px).
    img = _tile((80, 120), [(40, 47, 15), (40, 73, 15)], seed=1)
    nuc = find_nuclei(img, mpp=MPP)
    assert len(nuc) == 2
    order = np.argsort(nuc.centroids_rc[:, 1])
    np.testing.assert_allclose(nuc.centroids_rc[order], [[40, 45], [40, 75]], atol=3.0)
    # The split is between the two centres and the areas are roughly equal halves.
    a = nuc.areas_um2[order]
    assert abs(a[0] - a[1]) / a.sum() < 0.1


def test_vesicular_nucleus_is_filled_but_a_lumen_is_not():
    rr, cc = np.mgrid[:140, :140]
    # A nucleus with a pale centre of ~9 µm^2: filled, the area is that of the full disk
    # (without filling it comes out as a ring, or in pieces, of less area).
    img = _tile((80, 80), [(40, 40, 16)], seed=2)
    img[(rr[:80, :80] - 40) ** 2 + (cc[:80, :80] - 40) ** 2 <= 7**2] = PINK
    nuc = find_nuclei(img, mpp=MPP)
    assert len(nuc) == 1
    np.testing.assert_allclose(nuc.areas_um2[0], _disk_area_px(16) * MPP**2, rtol=0.1)
    np.testing.assert_allclose(nuc.centroids_rc[0], [40, 40], atol=1.0)

    # A dark ring around a ~280 µm^2 pale lumen: the lumen stays open.
    big = _tile((140, 140), [(70, 70, 50)], seed=3)
    big[(rr - 70) ** 2 + (cc - 70) ** 2 <= 38**2] = PINK
    ring = find_nuclei(big, mpp=MPP)
    assert len(ring) >= 1 and ring.labels[70, 70] == 0


def test_blank_glass_and_pale_stroma_give_no_nuclei():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert len(find_nuclei(glass)) == 0
    white = np.full((32, 48, 3), 255, np.uint8)
    nuc = find_nuclei(white)
    assert len(nuc) == 0 and nuc.centroids_rc.shape == (0, 2) and not nuc.labels.any()
    stroma = _tile((64, 64), [], seed=4)
    assert len(find_nuclei(stroma)) == 0


def test_min_area_removes_specks_and_mpp_converts_sizes():
    img = _tile((80, 160), [(40, 40, 14), (40, 120, 3)], seed=5)  # a nucleus and a 2 µm^2 speck
    nuc = find_nuclei(img, mpp=MPP)
    assert len(nuc) == 1
    np.testing.assert_allclose(nuc.centroids_rc[0], [40, 40], atol=1.0)
    # The same pixels read at twice the mpp are four times the area in µm^2.
    nuc2 = find_nuclei(img, mpp=2 * MPP, min_distance_um=6.0, smooth_um=1.0, open_um=1.5, max_hole_um2=120)
    assert len(nuc2) == 1
    np.testing.assert_allclose(nuc2.areas_um2[0], 4 * nuc.areas_um2[0], rtol=0.05)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        find_nuclei(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="mpp"):
        find_nuclei(np.zeros((8, 8, 3), np.uint8), mpp=0)


def test_real_tumor_field(real_dir, artifacts_dir):
    from PIL import Image
    from skimage.color import rgb2gray
    from skimage.segmentation import find_boundaries

    rgb = np.asarray(Image.open(real_dir / "he-tumor-target.png").convert("RGB"))
    nuc = find_nuclei(rgb, mpp=0.25)
    # A 250 x 250 µm carcinoma field: a few hundred nuclei (by eye ~300-450).
    assert 200 <= len(nuc) <= 600
    # Nuclear sizes: 1st-99th percentile within lymphocyte-to-large-tumor-nucleus range.
    lo, med, hi = np.percentile(nuc.areas_um2, [1, 50, 99])
    assert lo >= 8.0 and 15.0 <= med <= 80.0 and hi <= 400.0
    # Centroids sit on dark (hematoxylin) pixels: darker than the field as a whole.
    gray = rgb2gray(rgb)
    rc = np.rint(nuc.centroids_rc).astype(int)
    at_centroids = gray[rc[:, 0], rc[:, 1]]
    assert np.median(at_centroids) < np.percentile(gray, 25)
    # Glass (the white lumina) carries no nucleus pixels.
    glass = rgb.min(axis=-1) > 215
    assert (nuc.labels[glass] > 0).mean() < 0.01

    overlay = rgb.copy()
    overlay[find_boundaries(nuc.labels, mode="outer")] = (0, 255, 0)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            overlay[np.clip(rc[:, 0] + dr, 0, rgb.shape[0] - 1), np.clip(rc[:, 1] + dc, 0, rgb.shape[1] - 1)] = (
                255,
                255,
                0,
            )
    Image.fromarray(overlay).save(artifacts_dir / "nuclei-he-tumor-target.png")
