"""Both backends on a phantom 40x slide (tupac.synth): a multi-level JPEG pyramid with integer
downsamples, where cuCIM and OpenSlide must agree bit for bit at every level."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tupac.synth")

from tupac.slide import open_slide  # noqa: E402


@pytest.fixture(scope="module")
def phantom_slide(small_cohort):
    slides = sorted((small_cohort / "training_image_data").glob("*.svs"))
    assert slides, f"no phantom slide under {small_cohort}"
    return slides[0]


@pytest.mark.slow
def test_backends_identical_at_every_level(phantom_slide):
    with open_slide(phantom_slide, "openslide") as o, open_slide(phantom_slide) as c:
        assert c.backend == "cucim"
        assert c.mpp == o.mpp == pytest.approx(0.25) and c.objective_power == o.objective_power == 40
        assert c.level_dimensions == o.level_dimensions and c.level_count >= 2
        for level, (w, h) in enumerate(o.level_dimensions):
            np.testing.assert_array_equal(c.read_region((0, 0), level, (w, h)), o.read_region((0, 0), level, (w, h)))
        np.testing.assert_array_equal(c.read_region_mpp((300, 200), (200, 150), 1.0),
                                      o.read_region_mpp((300, 200), (200, 150), 1.0))
        np.testing.assert_array_equal(c.thumbnail(8.0), o.thumbnail(8.0))
