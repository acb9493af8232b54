"""Tissue extraction: known answers on drawn images, real slides against an independent method,
phantom slides against their true masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from tupac.geometry import full_grid
from tupac.preprocess.tissue import (
    TissueMask,
    mask_overlay,
    slide_tissue_mask,
    tile_tissue_fraction,
    tissue_mask,
    tissue_tile_grid,
)

GLASS = np.array([238, 236, 240], np.float64)
EOSIN = np.array([232, 150, 190], np.float64)  # pale pink stroma
HEMA = np.array([120, 70, 160], np.float64)  # purple nuclei-rich tissue


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def render(labels: np.ndarray, colors: dict[int, np.ndarray], seed: int, noise: float = 4.0) -> np.ndarray:
    """An RGB image of a label map, each label in its color plus seeded Gaussian noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros(labels.shape + (3,))
    for k, c in colors.items():
        img[labels == k] = c
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def disk(shape, center, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def scene(mpp: float, seed: int = 0):
    """A 2.4 x 2.0 mm field: a 700 um-radius tissue disk with a purple core, a 30 um lumen
    (should be filled), a 400 um glass tear (should stay), a 40 um dust speck (should go)."""
    h, w = int(round(2000 / mpp)), int(round(2400 / mpp))
    um = lambda v: v / mpp  # noqa: E731
    tissue = disk((h, w), (um(1000), um(1000)), um(700))
    tear = disk((h, w), (um(1000), um(1200)), um(200))
    lumen = disk((h, w), (um(700), um(800)), um(30))
    core = disk((h, w), (um(1100), um(800)), um(250))
    speck = disk((h, w), (um(300), um(2100)), um(20))
    labels = np.zeros((h, w), np.int8)
    labels[tissue] = 1
    labels[core & tissue] = 2
    labels[tear | lumen] = 0
    labels[speck] = 2
    rgb = render(labels, {0: GLASS, 1: EOSIN, 2: HEMA}, seed)
    truth = tissue & ~tear
    return rgb, truth, speck, lumen, tear


@pytest.mark.parametrize("mpp", [4.0, 8.0, 16.0])
def test_known_scene_morphology_in_micrometers(mpp):
    rgb, truth, speck, lumen, tear = scene(mpp)
    before = rgb.copy()
    tm = tissue_mask(rgb, mpp, dilation_um=0)
    np.testing.assert_array_equal(rgb, before)  # input untouched
    assert isinstance(tm, TissueMask) and tm.mask.dtype == bool and tm.mask.shape == rgb.shape[:2] and tm.mpp == mpp
    assert iou(tm.mask, truth) >= 0.97
    assert not tm.mask[speck].any(), "a 40 um dust speck must be removed at every resolution"
    assert tm.mask[lumen].all(), "a 30 um lumen inside tissue must be filled"
    assert tm.mask[tear].mean() < 0.05, "a 400 um tear is glass, not a hole to fill"


def test_dilation_radius_is_in_micrometers():
    rgb, truth, *_ = scene(4.0)
    base = tissue_mask(rgb, 4.0, dilation_um=0).mask
    grown = tissue_mask(rgb, 4.0, dilation_um=40.0).mask  # 10 px at 4 um/px
    assert grown[base].all()
    dist_out = ndi.distance_transform_edt(~base)
    added = grown & ~base
    assert added.any() and dist_out[added].max() <= 10.5
    assert (grown[(dist_out > 0) & (dist_out <= 9)]).mean() > 0.99


def test_blank_glass_gives_empty_mask_not_a_noise_split():
    rng = np.random.default_rng(1)
    for color in (GLASS, np.array([245, 240, 244.0]), np.array([228, 228, 226.0])):
        rgb = np.clip(color + rng.normal(0, 5, (300, 400, 3)), 0, 255).astype(np.uint8)
        tm = tissue_mask(rgb, 8.0)
        assert not tm.mask.any() and tm.fraction == 0.0


def test_uniform_tissue_is_all_tissue():
    rng = np.random.default_rng(2)
    for color in (EOSIN, HEMA):
        rgb = np.clip(color + rng.normal(0, 5, (200, 300, 3)), 0, 255).astype(np.uint8)
        assert tissue_mask(rgb, 8.0).mask.all()
    # Pale and dark tissue filling the whole field: not split into two classes.
    labels = np.zeros((200, 300), np.int8)
    labels[:, 150:] = 1
    assert tissue_mask(render(labels, {0: EOSIN, 1: HEMA}, seed=3), 8.0).mask.all()


def test_green_ink_is_not_tissue():
    h, w = 250, 300
    labels = np.zeros((h, w), np.int8)
    labels[50:200, 30:140] = 1
    labels[50:200, 170:280] = 2  # a saturated green pen mark
    rgb = render(labels, {0: GLASS, 1: EOSIN, 2: np.array([60, 170, 90.0])}, seed=4)
    m = tissue_mask(rgb, 8.0, dilation_um=0).mask
    assert m[60:190, 40:130].all()
    assert not m[:, 160:].any()


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        tissue_mask(np.zeros((10, 10, 3), np.float32), 8.0)
    with pytest.raises(ValueError, match="shape"):
        tissue_mask(np.zeros((10, 10), np.uint8), 8.0)
    with pytest.raises(ValueError, match="mpp"):
        tissue_mask(np.zeros((10, 10, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="bool"):
        TissueMask(np.zeros((4, 4), np.uint8), 8.0)


def test_tile_fraction_is_exact_for_tiles_off_the_mask_pixel_grid():
    rng = np.random.default_rng(5)
    mask = rng.random((40, 50)) > 0.6
    tm = TissueMask(mask, mpp=8.0)
    # Slide 0.5 um/px; tiles of 20 px at 3 um/px (7.5 mask px), stride 13 px: edges fall mid-pixel.
    dims = (50 * 16, 40 * 16)
    grid = full_grid(dims, 0.5, 3.0, 20, 13)
    frac = tile_tissue_fraction(tm, grid)
    # Brute force: upsample the mask 16x to level 0 and average each tile's level-0 box.
    up = np.kron(mask, np.ones((16, 16), bool)).astype(np.float64)
    up = np.pad(up, ((0, 200), (0, 200)))  # tiles past the slide edge see glass
    edge = grid.tile_l0  # 120 level-0 px, an integer here
    assert edge == 120
    x0 = (grid.rc[:, 1] * 13 * 3.0 / 0.5).astype(int)  # exact origins, not floored
    y0 = (grid.rc[:, 0] * 13 * 3.0 / 0.5).astype(int)
    brute = np.array([up[y : y + 120, x : x + 120].mean() for x, y in zip(x0, y0)])
    np.testing.assert_allclose(frac, brute, atol=1e-9)


def test_tissue_tile_grid_keeps_tiles_over_tissue():
    mask = np.zeros((100, 100), bool)
    mask[20:60, 30:90] = True  # at 8 um/px
    tm = TissueMask(mask, 8.0)
    dims = (1600, 1600)  # level 0 at 0.5 um/px: 800 um square
    grid = tissue_tile_grid(tm, dims, 0.5, tile_px=64, mpp=1.0, min_tissue=0.5)  # 64 um tiles = 8 mask px
    assert len(grid) > 0 and grid.grid_shape == (13, 13)
    # Every kept tile's centre lies in tissue; every tile fully inside tissue is kept.
    centre_mask = (grid.origins_l0 + grid.tile_l0 / 2) * 0.5 / 8.0
    assert mask[centre_mask[:, 1].astype(int), centre_mask[:, 0].astype(int)].all()
    full = full_grid(dims, 0.5, 1.0, 64)
    inside = [(x, y) for x, y in full.origins_l0 if 20 * 16 <= y and y + 128 <= 60 * 16 and 30 * 16 <= x and x + 128 <= 90 * 16]
    kept = {tuple(o) for o in grid.origins_l0}
    assert set(map(tuple, inside)) <= kept
    assert len(tissue_tile_grid(tm, dims, 0.5, 64, 1.0, min_tissue=0.0)) >= len(grid)
    with pytest.raises(ValueError, match="needs about"):
        tissue_tile_grid(tm, (4000, 1600), 0.5, 64, 1.0)
    with pytest.raises(ValueError, match="min_tissue"):
        tissue_tile_grid(tm, dims, 0.5, 64, 1.0, min_tissue=1.0)


class ArrayReader:
    """A test double of the SlideReader's two members that slide_tissue_mask uses."""

    def __init__(self, rgb_l0: np.ndarray, mpp: float) -> None:
        self.rgb, self.mpp = rgb_l0, mpp
        self.asked: list[float] = []

    def thumbnail(self, mpp: float) -> np.ndarray:
        self.asked.append(mpp)
        k = int(round(mpp / self.mpp))
        return self.rgb[::k, ::k]


def test_slide_tissue_mask_reads_the_thumbnail_at_the_mask_mpp():
    rgb, truth, *_ = scene(2.0)
    reader = ArrayReader(rgb, 2.0)
    tm = slide_tissue_mask(reader, mpp=8.0, dilation_um=0)
    assert reader.asked == [8.0] and tm.mpp == 8.0
    assert iou(tm.mask, truth[::4, ::4]) >= 0.95
    assert slide_tissue_mask(reader, mpp=1.0).mpp == 2.0  # never finer than level 0


def test_overlay_does_not_modify_and_marks_tissue():
    rgb, truth, *_ = scene(8.0)
    before = rgb.copy()
    ov = mask_overlay(rgb, truth)
    np.testing.assert_array_equal(rgb, before)
    assert ov.shape == rgb.shape and ov.dtype == np.uint8
    assert (ov[truth] != rgb[truth]).any(axis=-1).mean() > 0.9
    np.testing.assert_array_equal(ov[~truth], rgb[~truth])


# --- real slides -------------------------------------------------------------------------------

# The TCGA fixture has no MPP in its metadata. Its lymphocyte nuclei (about 7 um across) span
# about 6-8 px and the whole section is 4443 px wide, a plausible 4.4 mm frozen section at
# 1.0 um/px; at 0.25 um/px the section would be 1.1 mm and nuclei 2 um, which they are not.
REAL = [("cmu-1-small-region.svs", 0.499, 0.92), ("tcga-cr-7395-01a-01-ts1.svs", 1.0, 0.975)]


def _real_thumbnail(path, slide_mpp: float, mpp: float) -> np.ndarray:
    openslide = pytest.importorskip("openslide")
    s = openslide.OpenSlide(str(path))
    try:
        w, h = s.dimensions
        k = slide_mpp / mpp
        return np.asarray(s.get_thumbnail((int(np.ceil(w * k)), int(np.ceil(h * k)))).convert("RGB"))
    finally:
        s.close()


def optical_density_mask(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """An independent tissue mask: mean optical density > 0.05 (glass absorbs almost nothing),
    a 1-px opening, holes filled, components under 20,000 um^2 dropped."""
    od = -np.log10((rgb.astype(np.float64) + 1) / 256).mean(axis=-1)
    m = ndi.binary_opening(od > 0.05, structure=np.ones((3, 3), bool))
    m = ndi.binary_fill_holes(m)
    lab, n = ndi.label(m)
    sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
    m = np.isin(lab, 1 + np.flatnonzero(sizes * mpp**2 >= 20_000))
    return m, od


@pytest.mark.parametrize(("name", "slide_mpp", "min_iou"), REAL)
def test_real_slide_mask_agrees_with_optical_density(real_dir, artifacts_dir, name, slide_mpp, min_iou):
    from PIL import Image

    mpp = 8.0
    rgb = _real_thumbnail(real_dir / name, slide_mpp, mpp)
    tm = tissue_mask(rgb, mpp)
    ref, od = optical_density_mask(rgb, mpp)
    Image.fromarray(mask_overlay(rgb, tm.mask)).save(artifacts_dir / f"tissue-overlay-{name}.png")
    agreement = iou(tm.mask, ref)
    assert agreement >= min_iou, f"IoU with the optical-density mask {agreement:.3f} < {min_iou}"
    assert tm.mask[od > 0.3].mean() >= 0.98, "clearly stained tissue must be covered"
    glass_in_mask = (tm.mask & (od < 0.02)).sum() / tm.mask.sum()
    assert glass_in_mask <= 0.04, f"{glass_in_mask:.3f} of the mask is clear glass"
    assert 0.2 < tm.fraction < 0.9


# --- phantom slides ----------------------------------------------------------------------------


@pytest.mark.slow
def test_phantom_masks_match_the_generators_truth(small_cohort, artifacts_dir):
    from tupac.data import Tupac16Dataset
    from tupac.slide import open_slide
    from tupac.synth import read_truth_mask

    ds = Tupac16Dataset(small_cohort)
    assert len(ds.slides) == 3
    for slide in ds.slides:
        truth, truth_mpp = read_truth_mask(small_cohort / "truth" / slide.slide_id / "tissue.png")
        reader = open_slide(slide.path)
        try:
            tm = slide_tissue_mask(reader, mpp=truth_mpp)
            grid = tissue_tile_grid(tm, reader.dimensions, reader.mpp, tile_px=256, mpp=1.0)
        finally:
            reader.close()
        h, w = min(tm.shape[0], truth.shape[0]), min(tm.shape[1], truth.shape[1])
        assert abs(tm.shape[0] - truth.shape[0]) <= 1 and abs(tm.shape[1] - truth.shape[1]) <= 1
        score = iou(tm.mask[:h, :w], truth[:h, :w].astype(bool))
        print(f"{slide.slide_id}: tissue-mask IoU with truth {score:.4f} ({len(grid)} tiles of 256 px at 1 um/px)")
        if slide.slide_id == "TUPAC-TR-001":
            from PIL import Image

            with open_slide(slide.path) as r:
                rgb = r.thumbnail(truth_mpp)
            Image.fromarray(mask_overlay(rgb, tm.mask)).save(artifacts_dir / "tissue-overlay-phantom-TR-001.png")
        assert score >= 0.95, f"{slide.slide_id}: IoU {score:.3f} with the true tissue mask"
        assert len(grid) > 0


# --- command line ------------------------------------------------------------------------------


def _cli(*args: str):
    from typer.testing import CliRunner

    from tupac.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(("name", "mpp_args"), [("cmu-1-small-region.svs", []), ("tcga-cr-7395-01a-01-ts1.svs", ["--mpp", "1.0"])])
def test_cli_writes_mask_png_with_mpp_and_overlay(real_dir, artifacts_dir, tmp_path, name, mpp_args):
    from tupac.preprocess.mask_png import read_mask_png

    out, ov = tmp_path / "mask.png", artifacts_dir / f"tissue-cli-overlay-{name}.png"
    res = _cli("tissue", str(real_dir / name), "--out", str(out), "--overlay", str(ov), *mpp_args)
    assert res.exit_code == 0, res.output
    assert "8 um/px" in res.output
    tm = read_mask_png(out)
    assert tm.mpp == 8.0
    # Same answer as the pure function on the same slide, read independently with OpenSlide.
    slide_mpp = 0.499 if not mpp_args else 1.0
    direct = tissue_mask(_real_thumbnail(real_dir / name, slide_mpp, 8.0), 8.0).mask
    h, w = min(direct.shape[0], tm.shape[0]), min(direct.shape[1], tm.shape[1])
    assert iou(tm.mask[:h, :w], direct[:h, :w]) >= 0.95  # thumbnails differ only in resampling filter
    from PIL import Image

    with Image.open(ov) as im:
        assert im.size[0] >= 2 * tm.shape[1] - 2  # drawn finer than the mask, for a person


def test_cli_bad_slides_give_one_line_and_nonzero_exit(real_dir, tmp_path):
    for name, expected in [
        ("broken.svs", "broken.svs"),
        ("does-not-exist.svs", "does-not-exist.svs"),
        ("tcga-cr-7395-01a-01-ts1.svs", "--mpp"),  # no MPP in its metadata
    ]:
        res = _cli("tissue", str(real_dir / name), "--out", str(tmp_path / "m.png"))
        assert res.exit_code != 0
        assert expected in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "m.png").exists()


# --- issue 17: hole filling and dilation as options, measured against truth -------------------


def fat_scene(mpp: float = 8.0, seed: int = 3):
    """A 3.2 x 2.4 mm field: a 1 mm-radius tissue disk holding a cluster of 12 fat cells (glass
    discs of 40-70 um radius, each enclosed by tissue) and an enclosed 300 um-radius glass gap
    (0.28 mm^2, e.g. a tear or a large lumen)."""
    h, w = int(round(2400 / mpp)), int(round(3200 / mpp))
    um = lambda v: v / mpp  # noqa: E731
    tissue = disk((h, w), (um(1200), um(1500)), um(1000))
    gap = disk((h, w), (um(1200), um(1900)), um(300))
    rng = np.random.default_rng(seed)
    fat = np.zeros((h, w), bool)
    for k in range(12):  # a 4 x 3 grid of cells, 160 um apart: thin tissue septa between them
        cy, cx = 900 + 160 * (k // 4), 800 + 160 * (k % 4)
        fat |= disk((h, w), (um(cy), um(cx)), um(rng.uniform(40, 70)))
    labels = np.where(tissue & ~gap & ~fat, 1, 0).astype(np.int8)
    return render(labels, {0: GLASS, 1: EOSIN}, seed), fat, gap


def test_enclosed_fat_cells_are_filled_and_a_large_glass_gap_stays_out():
    rgb, fat, gap = fat_scene()
    m = tissue_mask(rgb, 8.0).mask
    assert m[fat].mean() > 0.99, "fat cells enclosed by tissue are tissue (the paper's holistic mask)"
    assert m[gap].mean() < 0.05, "a 0.28 mm^2 glass gap is above max_hole_um2 and stays out"
    # The options switch it: no filling leaves the fat out, filling every hole takes the gap in.
    assert tissue_mask(rgb, 8.0, max_hole_um2=0.0).mask[fat].mean() < 0.2
    assert tissue_mask(rgb, 8.0, max_hole_um2=float("inf")).mask[gap].mean() > 0.99


def _recall_on_truth(mask: TissueMask, truth: np.ndarray, truth_mpp: float) -> float:
    """Share of the true tissue that ``mask`` covers, sampled at the truth's pixel centres."""
    k = truth_mpp / mask.mpp
    rows = np.minimum(((np.arange(truth.shape[0]) + 0.5) * k).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(truth.shape[1]) + 0.5) * k).astype(int), mask.shape[1] - 1)
    return float((mask.mask[np.ix_(rows, cols)] & truth).sum() / truth.sum())


def test_phantom_recall_needs_the_hole_filling(small_cohort):
    """Issue 17: recall 0.94 on a phantom slide (fat cells left out). With enclosed holes filled
    up to 20,000 um^2 (the default) every phantom slide's recall is at least 0.97 at the
    pipeline's 8 um/px; without filling, some slide's is not."""
    from tupac.slide import open_slide
    from tupac.synth import read_truth_mask

    with_fill, without = [], []
    for sid in ("TUPAC-TR-001", "TUPAC-TR-002", "TUPAC-TR-003"):
        truth, truth_mpp = read_truth_mask(small_cohort / "truth" / sid / "tissue.png")
        with open_slide(small_cohort / "training_image_data" / f"{sid}.svs") as reader:
            with_fill.append(_recall_on_truth(slide_tissue_mask(reader, 8.0), truth, truth_mpp))
            without.append(_recall_on_truth(slide_tissue_mask(reader, 8.0, max_hole_um2=0.0), truth, truth_mpp))
    print(f"recall with hole filling {np.round(with_fill, 4)}, without {np.round(without, 4)}")
    assert min(with_fill) >= 0.97
    assert min(without) < 0.97


def test_dilation_trades_precision_for_recall_on_a_phantom_slide(small_cohort):
    """An 8 um dilation (the option) covers more of the true tissue, never less."""
    from tupac.slide import open_slide
    from tupac.synth import read_truth_mask

    truth, truth_mpp = read_truth_mask(small_cohort / "truth" / "TUPAC-TR-001" / "tissue.png")
    with open_slide(small_cohort / "training_image_data" / "TUPAC-TR-001.svs") as reader:
        base = slide_tissue_mask(reader, 8.0)
        grown = slide_tissue_mask(reader, 8.0, dilation_um=8.0)
    assert grown.mask[base.mask].all() and grown.area_um2 > base.area_um2
    assert _recall_on_truth(grown, truth, truth_mpp) >= _recall_on_truth(base, truth, truth_mpp)
