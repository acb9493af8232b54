"""Training samples for the mitosis detector, and the image -> heatmap -> detections geometry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tupac.errors import DatasetLayoutError
from tupac.mitosis.inference import detect_mitoses, mitosis_heatmap, read_image, standardize_image
from tupac.mitosis.sampling import (
    candidate_nuclei,
    extract_patches,
    hard_negatives,
    jittered,
    label_candidates,
)
from tupac.mitosis.training import split_images


def test_label_candidates_nearest_within_radius_else_annotation():
    cand = np.array([[100.0, 100.0], [112.0, 100.0], [300.0, 300.0], [500.0, 520.0], [900.0, 900.0]])
    truth = pd.DataFrame({"x": [110.0, 500.0, 700.0], "y": [101.0, 500.0, 700.0]})
    lab = label_candidates(cand, truth, radius=30)
    # nearest candidate (112, 100) for the first, (500, 520) for the second, the point itself for the third
    np.testing.assert_array_equal(lab.positive_xy, [[112, 100], [500, 520], [700, 700]])
    np.testing.assert_array_equal(lab.from_candidate, [True, True, False])
    # (100, 100) is 10 px from a mitosis (e.g. the other half of an anaphase): neither positive nor negative
    np.testing.assert_array_equal(lab.negative_pool_xy, [[300, 300], [900, 900]])


def test_label_candidates_empty_cases():
    lab = label_candidates(np.zeros((0, 2)), np.array([[5.0, 6.0]]))
    np.testing.assert_array_equal(lab.positive_xy, [[5, 6]])
    lab = label_candidates(np.array([[1.0, 2.0]]), np.zeros((0, 2)))
    assert len(lab.positive_xy) == 0 and lab.negative_pool_xy.tolist() == [[1.0, 2.0]]


def test_jittered_first_copy_exact_and_shift_bounded():
    rng = np.random.default_rng(0)
    p = np.array([[10.0, 20.0], [30.0, 40.0]])
    j = jittered(p, 5, 4.0, rng).reshape(2, 5, 2)
    np.testing.assert_array_equal(j[:, 0], p)
    assert np.abs(j - p[:, None]).max() <= 4.0
    assert np.abs(j[:, 1:] - p[:, None]).max() > 0.5


def test_extract_patches_centre_and_mirrored_border():
    img = np.arange(50 * 60 * 3, dtype=np.int64).reshape(50, 60, 3).astype(np.uint8)
    p = extract_patches(img, np.array([[30.0, 20.0], [0.0, 0.0]]), 9)
    assert p.shape == (2, 9, 9, 3) and p.dtype == np.uint8
    np.testing.assert_array_equal(p[0], img[16:25, 26:35])
    # at the corner: mirrored, centre pixel is the image's pixel (0, 0)
    np.testing.assert_array_equal(p[1, 4, 4], img[0, 0])
    np.testing.assert_array_equal(p[1, 4, 5], img[0, 1])
    np.testing.assert_array_equal(p[1, 4, 3], img[0, 1])


def test_hard_negatives_filters_and_caps():
    det = pd.DataFrame({"x": [100.0, 200.0, 300.0, 400.0, 500.0], "y": [0.0] * 5,
                        "prob": [0.95, 0.99, 0.7, 0.85, 0.9]})
    truth = np.array([[110.0, 0.0]])  # (100, 0) is 10 px from it
    hn = hard_negatives(det, truth, min_prob=0.8, min_distance=30, max_count=2)
    np.testing.assert_array_equal(hn, [[200, 0], [500, 0]])  # by descending prob, capped at 2
    assert len(hard_negatives(det, truth, max_count=200)) == 3


def test_split_images_stratified_and_seeded():
    counts = {f"{i // 3 + 1:02d}/{i % 3 + 1:02d}": (0 if i % 4 == 1 else 2) for i in range(20)}
    tr, va = split_images(counts, 0.2, seed=3)
    assert sorted(tr + va) == sorted(counts) and not set(tr) & set(va)
    assert any(counts[k] for k in va) and any(counts[k] == 0 for k in va)
    assert split_images(counts, 0.2, seed=3) == (tr, va)
    assert split_images(counts, 0.2, seed=4) != (tr, va)


def test_candidate_nuclei_finds_dark_disks():
    img = np.full((200, 240, 3), 235, np.uint8)
    yy, xx = np.mgrid[0:200, 0:240]
    centres = [(50, 60), (140, 170), (100, 120)]
    for cy, cx in centres:
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 14**2
        img[disk] = (70, 50, 140)  # hematoxylin blue-purple
    img[(yy > 180)] = (230, 150, 190)  # pink eosin band: tissue, not nuclei
    xy = candidate_nuclei(img)
    assert len(xy) == 3
    found = sorted(map(tuple, np.rint(xy[:, ::-1]).astype(int)))
    for (cy, cx), (fy, fx) in zip(sorted(centres), found):
        assert abs(cy - fy) <= 1.5 and abs(cx - fx) <= 1.5


def test_heatmap_cells_are_the_patch_classifier_centred_on_their_pixel():
    from tupac.models import create_model, to_input

    torch.manual_seed(0)
    model = create_model("mitosnet", task="mitosis").eval()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)
    hm = mitosis_heatmap(model, img)
    s = model.card.output_stride
    assert hm.offset_px == 0 and hm.stride_px == s
    assert hm.prob.shape == ((150 - 1) // s + 1, (170 - 1) // s + 1)
    pts = np.array([[j * s, i * s] for i in (0, 3, hm.prob.shape[0] - 1) for j in (0, 5, hm.prob.shape[1] - 1)], float)
    patches = extract_patches(img, pts, model.card.patch_size)
    with torch.no_grad():
        direct = model(to_input(patches))[:, 1].numpy()
    cells = np.array([hm.prob[int(y) // s, int(x) // s] for x, y in pts])
    np.testing.assert_allclose(cells, direct, atol=1e-5)
    # windows stitch exactly
    np.testing.assert_allclose(mitosis_heatmap(model, img, window_cells=3).prob, hm.prob, atol=1e-5)


def test_detect_mitoses_stays_on_the_image():
    from tupac.models import create_model

    torch.manual_seed(0)
    model = create_model("mitosnet", task="mitosis").eval()
    img = np.random.default_rng(2).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    det = detect_mitoses(model, img, threshold=0.0, standardized=True)
    assert list(det.columns) == ["x", "y", "prob"] and len(det) >= 1
    assert det["x"].between(-0.5, 99.5).all() and det["y"].between(-0.5, 119.5).all()


def test_standardize_image_matches_the_stain_transform(real_dir):
    from PIL import Image

    from tupac.preprocess import stain

    img = np.asarray(Image.open(real_dir / "he-tumor-target.png").convert("RGB"))
    ref = stain.fit(img[:500, :500], method="reinhard")
    tile = img[500:700, 500:700]
    expected = stain.transform(tile, stain.fit_image(tile, method="reinhard"), ref)
    np.testing.assert_array_equal(standardize_image(tile, ref), expected)
    assert standardize_image(tile, None) is not tile


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetLayoutError, match="missing.tif"):
        read_image(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(DatasetLayoutError, match="bad.tif.*cannot read"):
        read_image(bad)
    gray = tmp_path / "gray.png"
    from PIL import Image

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(gray)
    with pytest.raises(DatasetLayoutError, match="gray.png.*8-bit RGB"):
        read_image(gray)


def test_threshold_margin_halfway_to_the_first_harmful_detection():
    from tupac.mitosis.detect import choose_threshold
    from tupac.mitosis.training import _widest_margin

    truths = [pd.DataFrame({"x": [0.0, 100.0], "y": [0.0, 0.0]}), pd.DataFrame({"x": [], "y": []})]
    dets = [pd.DataFrame({"x": [0.0, 100.0, 500.0], "y": [0.0] * 3, "prob": [0.9, 0.8, 0.4]}),
            pd.DataFrame({"x": [50.0], "y": [50.0], "prob": [0.3]})]
    thr, f1 = choose_threshold(dets, truths)
    assert thr == pytest.approx(0.8) and f1 == 1.0
    assert _widest_margin(dets, truths, thr, f1, 30.0, 0.05) == pytest.approx(0.6)
