"""Every real fixture gives the outcome a user should see, with every backend."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.errors import ConfigError, MissingMPPError, SlideDecodeError, SlideOpenError
from tupac.slide import open_slide

ALL = ["auto", "openslide", "cucim"]


@pytest.mark.parametrize("backend", ALL)
def test_cmu_reads_as_20x(real_dir, backend):
    with open_slide(real_dir / "cmu-1-small-region.svs", backend=backend) as s:
        assert s.mpp == pytest.approx(0.499) and s.objective_power == 20
        assert s.info.mpp_source == "slide"
        assert s.read_region((1000, 1000), 0, (64, 64)).std() > 5  # tissue, not a blank tile


def test_auto_prefers_cucim_for_aperio_jpeg(real_dir):
    with open_slide(real_dir / "cmu-1-small-region.svs") as s:
        assert s.backend == "cucim"


@pytest.mark.parametrize("backend", ALL)
def test_slide_without_mpp(real_dir, backend):
    path = real_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(MissingMPPError, match="tcga-cr-7395-01a-01-ts1.svs.*no microns-per-pixel") as e:
        open_slide(path, backend=backend)
    assert isinstance(e.value, ValueError) and e.value.path == path
    with open_slide(path, backend=backend, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.info.mpp_source == "user" and s.objective_power is None
        assert s.level_count == 2
        assert s.read_region((2000, 1500), 0, (64, 64)).std() > 5


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", ["broken.svs", "unopenable.tiff"])
def test_unopenable_files(real_dir, backend, name):
    with pytest.raises(SlideOpenError, match=name) as e:
        open_slide(real_dir / name, backend=backend)
    assert isinstance(e.value, OSError)


@pytest.mark.parametrize("backend", ALL)
def test_undecodable_tiles_raise(real_dir, backend):
    """cuCIM would hand back uninitialized memory here; the reader must raise instead."""
    with open_slide(real_dir / "unreadable.svs", backend=backend) as s:
        assert s.dimensions == (16, 16)
        with pytest.raises(SlideDecodeError, match="unreadable.svs"):
            s.read_region((0, 0), 0, (16, 16))
        with pytest.raises(SlideDecodeError):
            s.read_regions([(0, 0), (4, 4)], 0, (8, 8))
        with pytest.raises(SlideDecodeError):
            s.thumbnail(2.0)
        # Regions off the slide touch no tile and stay readable.
        assert (s.read_region((100, 100), 0, (8, 8)) == 255).all()


def test_boxes_reads_through_openslide_fallback(real_dir):
    with open_slide(real_dir / "boxes.tiff") as s:
        assert s.backend == "openslide"
        assert "not one cuCIM decodes" in s.backend_reason
        assert s.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
        tile = s.read_region((0, 0), 0, (300, 250))
        assert len(np.unique(tile.reshape(-1, 3), axis=0)) > 2


def test_boxes_with_cucim_is_refused_not_crashed(real_dir):
    with pytest.raises(SlideOpenError, match="boxes.tiff: cuCIM cannot read it"):
        open_slide(real_dir / "boxes.tiff", backend="cucim")


def test_missing_file_and_bad_backend(tmp_path, real_dir):
    with pytest.raises(SlideOpenError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideOpenError, match="not a regular file"):
        open_slide(tmp_path)
    with pytest.raises(ConfigError, match="backend must be one of"):
        open_slide(real_dir / "cmu-1-small-region.svs", backend="pillow")
    with pytest.raises(ConfigError, match="mpp= must be a positive"):
        open_slide(real_dir / "cmu-1-small-region.svs", backend="openslide", mpp=-1)


@pytest.mark.parametrize("backend", ALL)
def test_one_corrupt_tile_in_a_good_slide(tmp_path, real_dir, backend):
    """Zeroing one tile's JPEG header: reads over it raise, reads elsewhere are unharmed."""
    import tifffile

    src = real_dir / "cmu-1-small-region.svs"
    page = tifffile.TiffFile(src).pages[0]
    tile = 3 * 10 + 4  # row 3, col 4 of the 240 px grid (10 columns)
    data = bytearray(src.read_bytes())
    off = page.dataoffsets[tile]
    data[off : off + 32] = bytes(32)
    bad = tmp_path / "one-bad-tile.svs"
    bad.write_bytes(bytes(data))
    with open_slide(bad, backend=backend) as s, open_slide(src, backend="openslide") as good:
        with pytest.raises(SlideDecodeError, match="one-bad-tile.svs"):
            s.read_region((4 * 240 + 10, 3 * 240 + 10), 0, (32, 32))
        with pytest.raises(SlideDecodeError):
            s.read_regions([(0, 0), (4 * 240, 3 * 240)], 0, (64, 64))
        np.testing.assert_array_equal(
            s.read_region((0, 0), 0, (480, 480)), good.read_region((0, 0), 0, (480, 480))
        )
