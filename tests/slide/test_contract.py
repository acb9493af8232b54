"""One contract, run against every backend (as openslide-python tests its own readers)."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.errors import ResolutionError, SlideOpenError
from tupac.geometry import size_at_mpp
from tupac.slide import SlideReader, open_slide

W, H = 2220, 2967


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


class TestSlideReaderContract:
    def test_is_a_slide_reader(self, cmu_reader):
        assert isinstance(cmu_reader, SlideReader)
        assert cmu_reader.backend in ("openslide", "cucim")

    def test_metadata(self, cmu_reader):
        assert cmu_reader.dimensions == (W, H)
        assert cmu_reader.level_dimensions == ((W, H),)
        assert cmu_reader.level_downsamples == (1.0,)
        assert cmu_reader.mpp == pytest.approx(0.499)
        assert cmu_reader.objective_power == 20
        assert cmu_reader.vendor == "aperio"

    @pytest.mark.parametrize("xy,size", [((0, 0), (256, 256)), ((1000, 1200), (300, 200)), ((37, 1901), (1, 1))])
    def test_known_region_pixels(self, cmu_reader, cmu_pixels, xy, size):
        tile = cmu_reader.read_region(xy, 0, size)
        assert tile.dtype == np.uint8 and tile.shape == (size[1], size[0], 3)
        np.testing.assert_array_equal(tile, cmu_pixels[xy[1] : xy[1] + size[1], xy[0] : xy[0] + size[0]])

    def test_padding_at_edges_is_white(self, cmu_reader, cmu_pixels):
        tile = cmu_reader.read_region((W - 120, H - 67), 0, (256, 256))
        np.testing.assert_array_equal(tile[:67, :120], cmu_pixels[H - 67 :, W - 120 :])
        assert (tile[67:] == 255).all() and (tile[:, 120:] == 255).all()
        tile = cmu_reader.read_region((-10, -20), 0, (64, 64))
        assert (tile[:20] == 255).all() and (tile[:, :10] == 255).all()
        np.testing.assert_array_equal(tile[20:, 10:], cmu_pixels[:44, :54])

    def test_region_outside_the_slide_is_white(self, cmu_reader):
        assert (cmu_reader.read_region((W + 5, 0), 0, (32, 32)) == 255).all()
        assert (cmu_reader.read_region((-100, -100), 0, (50, 50)) == 255).all()

    def test_read_region_mpp_at_native_resolution(self, cmu_reader):
        native = cmu_reader.read_region((500, 600), 0, (128, 96))
        np.testing.assert_array_equal(cmu_reader.read_region_mpp((500, 600), (128, 96), 0.499), native)
        # 0.5 is within the 5% tolerance of 0.499: served natively, no resampling.
        np.testing.assert_array_equal(cmu_reader.read_region_mpp((500, 600), (128, 96), 0.5), native)

    def test_read_region_mpp_coarser_area_averages(self, cmu_reader, cmu_pixels):
        out = cmu_reader.read_region_mpp((400, 800), (150, 100), 2 * 0.499)
        expected = block_mean(cmu_pixels[800:1000, 400:700].astype(np.float64), 2)
        assert out.shape == (100, 150, 3)
        assert np.abs(out - expected).max() <= 1.0  # rounding only

    def test_read_region_mpp_fractional_factor(self, cmu_reader, cmu_pixels):
        out = cmu_reader.read_region_mpp((0, 0), (200, 200), 0.499 * 1.5)
        ref = cmu_pixels[:300, :300].astype(np.float64)
        assert out.shape == (200, 200, 3)
        # Area averaging preserves the mean; 3x3 output blocks = 4.5x4.5 source blocks exactly.
        np.testing.assert_allclose(out.mean(axis=(0, 1)), ref.mean(axis=(0, 1)), atol=0.6)
        np.testing.assert_allclose(block_mean(out.astype(float), 2), block_mean(ref, 3), atol=1.0)

    def test_finer_than_native_needs_allow_upsample(self, cmu_reader):
        with pytest.raises(ResolutionError, match="0.25 um/px is finer"):
            cmu_reader.read_region_mpp((0, 0), (64, 64), 0.25)
        up = cmu_reader.read_region_mpp((1000, 1000), (64, 64), 0.25, allow_upsample=True)
        assert up.shape == (64, 64, 3)
        src = cmu_reader.read_region((1000, 1000), 0, (32, 32)).astype(float)
        np.testing.assert_allclose(block_mean(up.astype(float), 2), src, atol=40)
        assert abs(up.mean() - src.mean()) < 3

    def test_batch_read_equals_single_reads(self, cmu_reader):
        xys = np.array([[0, 0], [256, 512], [W - 100, 40], [-30, H - 10], [1024, 1024], [256, 512]])
        batch = cmu_reader.read_regions(xys, 0, (128, 128))
        assert batch.shape == (len(xys), 128, 128, 3) and batch.dtype == np.uint8
        for tile, xy in zip(batch, xys):
            np.testing.assert_array_equal(tile, cmu_reader.read_region(tuple(xy), 0, (128, 128)))
        np.testing.assert_array_equal(cmu_reader.read_regions(xys, 0, (128, 128), num_workers=2), batch)
        assert cmu_reader.read_regions(np.zeros((0, 2)), 0, (8, 8)).shape == (0, 8, 8, 3)

    def test_thumbnail(self, cmu_reader, cmu_pixels):
        thumb = cmu_reader.thumbnail(8.0)
        w, h = size_at_mpp((W, H), 0.499, 8.0)
        assert thumb.shape == (h, w, 3)
        np.testing.assert_array_equal(thumb, cmu_reader.read_region_mpp((0, 0), (w, h), 8.0))
        inner = thumb[:-1, :-1].astype(float).mean(axis=(0, 1))
        np.testing.assert_allclose(inner, cmu_pixels.astype(float).mean(axis=(0, 1)), atol=3)

    def test_thumbnail_in_strips_matches_one_read(self, cmu_reader, monkeypatch):
        whole = cmu_reader.thumbnail(4.0)
        monkeypatch.setattr(cmu_reader, "max_window_px", 40_000)  # forces ~20 strips
        np.testing.assert_array_equal(cmu_reader.thumbnail(4.0), whole)

    def test_thumbnail_finer_than_slide_is_refused(self, cmu_reader):
        with pytest.raises(ResolutionError):
            cmu_reader.thumbnail(0.1)

    def test_bad_level_and_size(self, cmu_reader):
        with pytest.raises(ResolutionError, match="level 3 does not exist"):
            cmu_reader.read_region((0, 0), 3, (8, 8))
        with pytest.raises(ValueError):
            cmu_reader.read_region((0, 0), 0, (0, 8))


@pytest.mark.parametrize("backend", ["openslide", "cucim"])
def test_context_manager_closes(cmu_path, backend):
    with open_slide(cmu_path, backend=backend) as reader:
        reader.read_region((0, 0), 0, (4, 4))
    assert reader.closed
    with pytest.raises(SlideOpenError, match="closed"):
        reader.read_region((0, 0), 0, (4, 4))
    reader.close()  # idempotent


def test_backends_return_identical_pixels(cmu_path):
    """Same JPEG tiles, same libjpeg-turbo: the whole level 0 must match bit for bit."""
    with open_slide(cmu_path, backend="openslide") as o, open_slide(cmu_path, backend="cucim") as c:
        a = o.read_region((0, 0), 0, (W, H))
        b = c.read_region((0, 0), 0, (W, H))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(o.thumbnail(2.0), c.thumbnail(2.0))
