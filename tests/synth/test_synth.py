"""Phantom cohorts: layout, slide format, determinism, truth consistent with pixels, labels, memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tupac.errors import DatasetLayoutError
from tupac.synth import generate_cohort, grade_from_density, read_truth_mask

IDS = ["TUPAC-TR-001", "TUPAC-TR-002", "TUPAC-TR-003"]


def _level(path: Path, key: int) -> np.ndarray:
    return tifffile.imread(path, key=key)


def _gray(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).mean(axis=-1)


def _meta(root: Path) -> dict:
    return json.loads((root / "truth" / "cohort.json").read_text())


# --- layout and labels ---------------------------------------------------------------------------------


def test_layout_and_ground_truth_csv(small_cohort: Path) -> None:
    for sid in IDS:
        assert (small_cohort / "training_image_data" / f"{sid}.svs").is_file()
        for name in ("tissue.png", "tumor.png", "mitoses.csv"):
            assert (small_cohort / "truth" / sid / name).is_file()
    rows = [line.split(",") for line in (small_cohort / "training_ground_truth.csv").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r) == 2 for r in rows)
    grades = [int(r[0]) for r in rows]
    assert sorted(grades) == [1, 2, 3], "every grade must occur in a cohort of 3"
    meta = _meta(small_cohort)
    for sid, (g, score) in zip(IDS, rows):
        s = meta["slides"][sid]
        assert s["grade"] == int(g) == grade_from_density(s["mitotic_density"])
        assert float(score) == pytest.approx(s["score"])
        assert s["n_mitoses_in_tumor"] == pytest.approx(s["mitotic_density"] * s["tumor_area_mm2"], abs=1e-2)
    assert {s["center"] for s in meta["slides"].values()} == {"A", "B", "C"}


def test_roi_boxes_lie_inside_tumor_and_cover_part_of_it(small_cohort: Path) -> None:
    rois = sorted((small_cohort / "ROI").glob("TUPAC-TR-*-ROI.csv"))
    assert rois, "some slides must come with ROIs"
    for f in rois:
        sid = f.name[: len("TUPAC-TR-001")]
        tumor, mpp = read_truth_mask(small_cohort / "truth" / sid / "tumor.png")
        step = mpp / 0.25
        covered = 0
        for line in f.read_text().splitlines():
            x, y, w, h = (int(v) for v in line.split(","))
            sub = tumor[int(y // step) : int((y + h) // step), int(x // step) : int((x + w) // step)]
            assert sub.size > 0 and sub.all(), f"{f}: box {line} leaves the tumor"
            covered += sub.size
        assert covered < tumor.sum(), "ROIs must cover only part of the tumor"


def test_mitosis_aux_set(small_cohort: Path) -> None:
    imgs = sorted((small_cohort / "mitoses" / "mitoses_image_data").glob("*/*.tif"))
    assert [p.relative_to(small_cohort / "mitoses" / "mitoses_image_data").as_posix() for p in imgs] == [
        "01/01.tif", "01/02.tif", "01/03.tif", "02/01.tif"]
    n_empty = n_points = 0
    for p in imgs:
        csv = small_cohort / "mitoses" / "mitoses_ground_truth" / p.parent.name / (p.stem + ".csv")
        text = csv.read_text()
        img = tifffile.imread(p)
        assert img.shape == (2000, 2000, 3) and img.dtype == np.uint8
        if not text:
            n_empty += 1
            continue
        g = _gray(img)
        tissue_median = np.median(g)
        for line in text.splitlines():
            r, c = (int(v) for v in line.split(","))
            win = g[max(r - 20, 0) : r + 21, max(c - 20, 0) : c + 21]
            # A mitotic figure: a clump of pixels far darker than the surrounding tumor.
            assert (win < tissue_median - 60).sum() >= 60, f"{csv}: {r},{c} is not on a dark figure"
            n_points += 1
    assert n_empty >= 1 and n_points >= 1


# --- slide format ---------------------------------------------------------------------------------------


def test_slide_opens_as_aperio_in_openslide_and_cucim(small_cohort: Path) -> None:
    import openslide

    path = small_cohort / "training_image_data" / "TUPAC-TR-001.svs"
    s = openslide.OpenSlide(str(path))
    p = s.properties
    assert p["openslide.vendor"] == "aperio"
    assert float(p["openslide.mpp-x"]) == 0.25 and float(p["openslide.mpp-y"]) == 0.25
    assert p["aperio.AppMag"] == "40" and p["openslide.objective-power"] == "40"
    assert s.level_count >= 2 and s.dimensions == (6000, 4800)
    assert s.level_downsamples[1] == pytest.approx(4.0) and s.level_downsamples[2] == pytest.approx(16.0)
    region = np.asarray(s.read_region((1000, 1500), 0, (512, 384)).convert("RGB"))
    ref = _level(path, 0)[1500:1884, 1000:1512]
    assert np.array_equal(region, ref)
    cucim = pytest.importorskip("cucim")
    img = cucim.CuImage(str(path))
    assert img.resolutions["level_count"] == s.level_count
    assert tuple(img.resolutions["level_dimensions"][0]) == s.dimensions
    cu = np.asarray(img.read_region((1000, 1500), (512, 384), 0))[..., :3]
    assert np.array_equal(cu, region), "OpenSlide and cuCIM must decode the same pixels"
    s.close()


def test_level1_is_a_downsample_of_level0(small_cohort: Path) -> None:
    path = small_cohort / "training_image_data" / "TUPAC-TR-002.svs"
    l0 = _level(path, 0).astype(np.float32)
    with tifffile.TiffFile(path) as tf:
        assert not tf.pages[1].is_tiled and tf.pages[1].shape[1] <= 1024  # the Aperio thumbnail IFD
        l1 = tf.pages[2].asarray().astype(np.float32)
    h, w = l1.shape[:2]
    ds = l0[: h * 4, : w * 4].reshape(h, 4, w, 4, 3).mean(axis=(1, 3))
    assert np.abs(ds - l1).mean() < 3.0  # JPEG-close


def test_same_seed_same_pixels_other_seed_different(tmp_path: Path) -> None:
    def pixels(root: Path, seed: int) -> np.ndarray:
        generate_cohort(root, n_slides=1, seed=seed, size_um=(700.0, 600.0), mitosis_images=0, workers=1)
        return _level(root / "training_image_data" / "TUPAC-TR-001.svs", 0)

    a = pixels(tmp_path / "a", 11)
    b = pixels(tmp_path / "b", 11)
    c = pixels(tmp_path / "c", 12)
    assert np.array_equal(a, b)
    assert (tmp_path / "a" / "truth" / "cohort.json").read_text() == (tmp_path / "b" / "truth" / "cohort.json").read_text().replace(
        str(tmp_path / "b"), str(tmp_path / "a"))
    assert np.abs(a.astype(int) - c).mean() > 5


def test_one_slide_rendered_by_parallel_rows_is_the_same_file(tmp_path: Path) -> None:
    """One real-size slide uses every worker on its tile rows; the file must not depend on it."""
    files = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        generate_cohort(root, n_slides=1, seed=4, size_um=(1300.0, 1100.0), mitosis_images=0, workers=workers)
        files[workers] = (root / "training_image_data" / "TUPAC-TR-001.svs").read_bytes()
    assert len(files[1]) > 1_000_000 and files[1] == files[2]


# --- truth consistent with pixels -------------------------------------------------------------------


def _at_mask_res(slide: Path, mask_shape: tuple[int, int]) -> np.ndarray:
    """Level 1 (1 um/px) box-averaged to the 4-um mask grid."""
    l1 = _level(slide, 2).astype(np.float32)
    rows, cols = l1.shape[0] // 4, l1.shape[1] // 4
    g = _gray(l1[: rows * 4, : cols * 4]).reshape(rows, 4, cols, 4).mean(axis=(1, 3))
    return g[: mask_shape[0], : mask_shape[1]]


@pytest.mark.parametrize("sid", IDS)
def test_masks_match_pixels(small_cohort: Path, sid: str) -> None:
    slide = small_cohort / "training_image_data" / f"{sid}.svs"
    tissue, mpp = read_truth_mask(small_cohort / "truth" / sid / "tissue.png")
    tumor, mpp_t = read_truth_mask(small_cohort / "truth" / sid / "tumor.png")
    assert mpp == mpp_t == 4.0 and tissue.shape == (300, 375)
    assert not (tumor & ~tissue).any()
    g = _at_mask_res(slide, tissue.shape)
    tissue, tumor = tissue[: g.shape[0], : g.shape[1]], tumor[: g.shape[0], : g.shape[1]]
    glass = g[~tissue]
    assert glass.mean() > 230 and g[tissue].mean() < glass.mean() - 40
    # Nuclei (dark pixels at 1 um/px) are denser in tumor than in the rest of the tissue.
    l1 = _gray(_level(slide, 2).astype(np.float32))
    nuc = l1 < 140
    tum1 = np.kron(tumor, np.ones((4, 4), bool))[: l1.shape[0], : l1.shape[1]]
    tis1 = np.kron(tissue, np.ones((4, 4), bool))[: l1.shape[0], : l1.shape[1]]
    assert nuc[tum1].mean() > 2 * nuc[tis1 & ~tum1].mean()


def test_mitoses_lie_in_tissue_and_are_dark(small_cohort: Path) -> None:
    n = 0
    for sid in IDS:
        slide = small_cohort / "training_image_data" / f"{sid}.svs"
        tissue, mpp = read_truth_mask(small_cohort / "truth" / sid / "tissue.png")
        l0 = _gray(_level(slide, 0))
        lines = (small_cohort / "truth" / sid / "mitoses.csv").read_text().splitlines()
        assert lines[0] == "x,y,phase"
        med = np.median(l0[np.kron(tissue, np.ones((16, 16), bool))[: l0.shape[0], : l0.shape[1]]])
        for line in lines[1:]:
            x, y, phase = line.split(",")
            x, y = int(x), int(y)
            assert phase in ("prophase", "metaphase", "anaphase")
            assert tissue[int(y * 0.25 / mpp), int(x * 0.25 / mpp)]
            # Anaphase figures have a pale gap at their center: look at the whole figure's extent.
            win = l0[y - 20 : y + 21, x - 20 : x + 21]
            assert (win < med - 60).sum() >= 60, f"{sid}: mitosis at {x},{y} is not dark"
            n += 1
    assert n == sum(s["n_mitoses"] for s in _meta(small_cohort)["slides"].values()) and n > 0


def test_read_truth_mask_errors(tmp_path: Path) -> None:
    from PIL import Image

    with pytest.raises(DatasetLayoutError, match="not found"):
        read_truth_mask(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "plain.png")
    with pytest.raises(DatasetLayoutError, match="mpp"):
        read_truth_mask(tmp_path / "plain.png")


@pytest.mark.slow
def test_scores_follow_mitotic_density(tmp_path: Path) -> None:
    from scipy.stats import spearmanr

    generate_cohort(tmp_path / "c9", n_slides=9, seed=3, size_um=(1500.0, 1200.0), mitosis_images=0)
    meta = _meta(tmp_path / "c9")
    dens = [s["mitotic_density"] for s in meta["slides"].values()]
    scores = [float(line.split(",")[1]) for line in (tmp_path / "c9" / "training_ground_truth.csv").read_text().splitlines()]
    grades = [int(line.split(",")[0]) for line in (tmp_path / "c9" / "training_ground_truth.csv").read_text().splitlines()]
    assert len(scores) == 9 and sorted(set(grades)) == [1, 2, 3]
    assert spearmanr(dens, scores).statistic > 0.7
    assert spearmanr(dens, grades).statistic > 0.8


# --- memory ---------------------------------------------------------------------------------------------


def _peak_traced(tmp: Path, size_px: tuple[int, int]) -> int:
    from tupac.synth import scene as S
    from tupac.synth.aperio import write_aperio_svs
    from tupac.synth.render import new_cache, render_block
    from tupac.synth.stain import CENTERS

    S._textures.cache_clear()
    tracemalloc.start()
    sc = S.make_scene(S.SceneSpec(5, 1, size_px, CENTERS[0], 20.0))
    cache = new_cache()
    write_aperio_svs(tmp / f"m{size_px[0]}.svs", size_px, lambda x, y, w, h: render_block(sc, x, y, w, h, cache))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.slow
def test_memory_does_not_grow_with_slide_area(tmp_path: Path) -> None:
    small = _peak_traced(tmp_path, (4096, 1536))
    big = _peak_traced(tmp_path, (8192, 3072))  # 4x the area
    assert big < 2 * small, f"peak traced memory {small / 1e6:.0f} MB -> {big / 1e6:.0f} MB for 4x the area"


# --- for a person to look at ----------------------------------------------------------------------------


def test_write_crops_for_review(small_cohort: Path, artifacts_dir: Path) -> None:
    from PIL import Image

    out = artifacts_dir / "synth"
    out.mkdir(parents=True, exist_ok=True)
    sid = "TUPAC-TR-001"
    slide = small_cohort / "training_image_data" / f"{sid}.svs"
    l0 = _level(slide, 0)
    tissue, _ = read_truth_mask(small_cohort / "truth" / sid / "tissue.png")
    tumor, _ = read_truth_mask(small_cohort / "truth" / sid / "tumor.png")
    from scipy import ndimage

    def deepest(mask: np.ndarray) -> tuple[int, int]:
        d = ndimage.distance_transform_edt(mask)
        r, c = np.unravel_index(np.argmax(d), d.shape)
        return int(r * 16), int(c * 16)

    written = []
    for name, mask in (("tumor", tumor), ("stroma", tissue & ~tumor)):
        y, x = deepest(mask)
        y0, x0 = min(max(y - 500, 0), l0.shape[0] - 1000), min(max(x - 500, 0), l0.shape[1] - 1000)
        written.append(out / f"{name}-1000px-40x.png")
        Image.fromarray(l0[y0 : y0 + 1000, x0 : x0 + 1000]).save(written[-1])
    line = (small_cohort / "truth" / sid / "mitoses.csv").read_text().splitlines()[1]
    x, y = (int(v) for v in line.split(",")[:2])
    crop = l0[max(y - 150, 0) : y + 150, max(x - 150, 0) : x + 150]
    written.append(out / "mitosis-300px-40x-x2.png")
    Image.fromarray(crop).resize((crop.shape[1] * 2, crop.shape[0] * 2), Image.NEAREST).save(written[-1])
    with tifffile.TiffFile(slide) as tf:
        written.append(out / "thumbnail.png")
        Image.fromarray(tf.pages[1].asarray()).save(written[-1])
    for p in written:
        assert p.stat().st_size > 1000
