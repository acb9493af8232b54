"""Windowed slide heatmaps: no seams, and each cell is the patch classifier at its window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tupac.heatmaps.engine import SlideWindows, WindowPredictor, compute_heatmap, heatmap_to_array
from tupac.heatmaps.windows import heatmap_geometry
from tupac.models import create_model, to_input
from tupac.slide import open_slide


@pytest.fixture(scope="module")
def tiny_locnet():
    torch.manual_seed(0)
    m = create_model("locnet", task="tumor", widths=[4, 8, 8, 8, 8], fc_width=8)
    return m.eval()


def test_window_size_does_not_change_the_heatmap(small_cohort, tiny_locnet):
    path = small_cohort / "training_image_data" / "TUPAC-TR-001.svs"
    with open_slide(path) as reader:
        small, g_small = heatmap_to_array(reader, tiny_locnet, chunk=8)
        big, g_big = heatmap_to_array(reader, tiny_locnet, chunk=40)
    assert g_small.shape == g_big.shape
    # 1.5 mm at 1 um/px with stride 16 -> 94 cells
    assert g_small.shape[1] == int(np.ceil(1500 / 16))
    np.testing.assert_allclose(small, big, atol=1e-5)


def test_cells_equal_the_patch_classifier(small_cohort, tiny_locnet):
    path = small_cohort / "training_image_data" / "TUPAC-TR-002.svs"
    with open_slide(path) as reader:
        heat, geom = heatmap_to_array(reader, tiny_locnet, chunk=16)
        p, s, lead = geom.patch_px, geom.stride_px, geom.lead_px
        # Cell (i, j) covers the slide's [i*s, (i+1)*s) x [j*s, (j+1)*s) at 1 um/px: the raster tiles
        # the slide from its origin, so tumor along the top and left edges is mapped too.
        assert geom.offset_px == pytest.approx((s - 1) / 2) and lead == round(tiny_locnet.card.output_offset - (s - 1) / 2)
        for i, j in [(0, 0), (0, 7), (3, 5), (20, 31), (40, 60)]:
            # cell (i, j) reads the window starting at (j*s - lead, i*s - lead) px at 1 um/px = x4 at
            # level 0; the first row and column start before the slide's edge, in white padding
            patch = reader.read_region_mpp(((j * s - lead) * 4, (i * s - lead) * 4), (p, p), 1.0)
            with torch.no_grad():
                prob = tiny_locnet(to_input(patch[None]))[0, 1].item()
            assert heat[i, j] == pytest.approx(prob, abs=1e-5)


def test_tissue_free_windows_are_skipped(small_cohort, tiny_locnet):
    path = small_cohort / "training_image_data" / "TUPAC-TR-001.svs"
    calls = []
    with open_slide(path) as reader:
        geom = heatmap_geometry(reader.dimensions, reader.mpp, tiny_locnet.card, 16)
        blank = np.zeros((10, 10), bool)
        heat, _ = heatmap_to_array(reader, tiny_locnet, chunk=16, tissue_mask=blank, tissue_mpp=150.0,
                                   progress=calls.append)
    assert calls == [] and not heat.any() and geom.grid[0] >= 2


def test_batched_engine_gives_the_serial_heatmap(small_cohort, tiny_locnet):
    # The Ray actors call the engine a batch of windows at a time, tumor-map one window at a time:
    # both must give the same cells.
    path = small_cohort / "training_image_data" / "TUPAC-TR-003.svs"
    with open_slide(path) as reader:
        serial, geom = heatmap_to_array(reader, tiny_locnet, chunk=8)
        batched = np.full(geom.shape, np.nan, dtype=np.float32)

        def sink(rc, block):
            rows, cols = geom.cells(rc)
            batched[rows, cols] = block

        windows = [(r, c) for r in range(geom.grid[0]) for c in range(geom.grid[1])]
        compute_heatmap(SlideWindows(reader, geom), WindowPredictor(tiny_locnet), sink, windows, batch_size=5)
    assert not np.isnan(batched).any()
    np.testing.assert_allclose(batched, serial, atol=1e-5)
