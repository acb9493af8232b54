"""A two-level pyramid (TCGA, JPEG 2000 tiles): level geometry, level choice by MPP, pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tupac.slide import open_slide

MPP = 0.5  # the slide has none; the tests supply it


@pytest.fixture(scope="module")
def levels(tcga_path):
    tf = tifffile.TiffFile(tcga_path)
    return tf.pages[0].asarray(), tf.pages[2].asarray()


@pytest.fixture(scope="module", params=["openslide", "cucim"])
def reader(request, tcga_path):
    with open_slide(tcga_path, backend=request.param, mpp=MPP) as s:
        yield s


def test_level_geometry(reader):
    assert reader.level_dimensions == ((4443, 3567), (2221, 1783))
    assert reader.level_downsamples[1] == pytest.approx(2.0005, abs=1e-4)
    assert reader.level_mpp(1) == pytest.approx(MPP * 2.0005, abs=1e-4)


def test_level0_pixels_match_an_independent_decoder(reader, levels):
    np.testing.assert_array_equal(reader.read_region((2000, 1500), 0, (300, 200)), levels[0][1500:1700, 2000:2300])


def test_level1_reads_start_at_floor_of_level_coordinate(reader, levels):
    ds = reader.level_downsamples[1]
    for x_lv, y_lv in [(999, 749), (1000, 750), (0, 0), (2100, 1700)]:
        x0, y0 = int(np.ceil(x_lv * ds)), int(np.ceil(y_lv * ds))
        tile = reader.read_region((x0, y0), 1, (64, 64)).astype(int)
        ref = levels[1][y_lv : y_lv + 64, x_lv : x_lv + 64].astype(int)
        inside = tile[: ref.shape[0], : ref.shape[1]]
        if reader.backend == "cucim":
            np.testing.assert_array_equal(inside, ref)
        else:
            # OpenSlide places level pixels at x0 / 2.0005 (a sub-pixel shift it interpolates).
            assert np.abs(inside - ref).mean() < 12
        assert (tile[ref.shape[0] :] == 255).all() and (tile[:, ref.shape[1] :] == 255).all()


def test_coarser_mpp_reads_the_coarser_level(reader, monkeypatch):
    seen = []
    real = reader._read_level

    def spy(x, y, level, w, h):
        seen.append(level)
        return real(x, y, level, w, h)

    monkeypatch.setattr(reader, "_read_level", spy)
    out = reader.read_region_mpp((2000, 1500), (100, 100), 2.0)  # 2x coarser than level 1
    assert seen == [1] and out.shape == (100, 100, 3)
    seen.clear()
    reader.read_region_mpp((2000, 1500), (100, 100), 0.9)  # level 1 is 1.0003 um/px: too coarse
    assert seen == [0]
    seen.clear()
    thumb = reader.thumbnail(8.0)
    assert set(seen) == {1} and thumb.shape == (223, 278, 3)


def test_backends_agree_on_mpp_reads(tcga_path):
    with open_slide(tcga_path, "openslide", mpp=MPP) as o, open_slide(tcga_path, "cucim", mpp=MPP) as c:
        np.testing.assert_array_equal(o.read_region_mpp((1000, 1000), (256, 256), 0.75),
                                      c.read_region_mpp((1000, 1000), (256, 256), 0.75))
        d = np.abs(o.thumbnail(4.0).astype(int) - c.thumbnail(4.0))
        assert d.mean() < 1.5  # level 1: OpenSlide's sub-pixel placement vs cuCIM's integer one
