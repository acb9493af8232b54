"""Tumor stage pieces on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tupac.tumor.regions import best_threshold, dice, heatmap_on_grid, map_quality, pixel_auroc
from tupac.tumor.sampling import roi_mask, sample_patch_centers
from tupac.tumor.training import _choose_stage, split_slides


def test_roi_mask_rasterizes_boxes_at_mask_scale():
    # slide at 0.25 um/px, mask at 8 um/px: a 320 x 160 px box at (64, 32) l0 = 10 x 5 mask px at (2, 1)
    m = roi_mask(np.array([[64, 32, 320, 160]]), (20, 20), 8.0, 0.25)
    assert m.sum() == 50
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 5, 2, 11)


def test_sampled_centers_respect_rois_tissue_and_margin():
    tissue = np.zeros((100, 100), bool)
    tissue[10:90, 10:90] = True
    rois = np.array([[20 * 32, 20 * 32, 20 * 32, 20 * 32]])  # mask px 20..40 at 8 um/px, slide 0.25 um/px
    rng = np.random.default_rng(0)
    c = sample_patch_centers(tissue, 8.0, 0.25, rois, 300, 300, rng, negative_margin_um=80.0)
    pos_rc = c.positive_xy_l0[:, ::-1] / 32.0
    neg_rc = c.negative_xy_l0[:, ::-1] / 32.0
    assert len(pos_rc) == 300 and len(neg_rc) == 300
    assert np.all((pos_rc >= 20) & (pos_rc < 40))
    # negatives: inside tissue, at least 10 mask px (80 um) from the ROI
    assert np.all((neg_rc >= 10) & (neg_rc < 90))
    # Euclidean distance from the ROI square [20, 40)^2 (pixel centers; a sample jitters within its pixel)
    d = np.maximum(np.maximum(20 - neg_rc, neg_rc - 40), 0)
    assert np.hypot(d[:, 0], d[:, 1]).min() >= 9.0


def test_sampling_is_deterministic_and_uses_stage2_positives():
    tissue = np.ones((50, 50), bool)
    extra = np.zeros_like(tissue)
    extra[30:40, 30:40] = True
    a = sample_patch_centers(tissue, 8.0, 0.25, np.zeros((0, 4)), 40, 40, np.random.default_rng(3), extra_positive=extra)
    b = sample_patch_centers(tissue, 8.0, 0.25, np.zeros((0, 4)), 40, 40, np.random.default_rng(3), extra_positive=extra)
    np.testing.assert_array_equal(a.positive_xy_l0, b.positive_xy_l0)
    rc = a.positive_xy_l0[:, ::-1] / 32.0
    assert len(rc) == 40 and np.all((rc >= 30) & (rc < 40))
    # stage-2 positives leave the negative pool
    neg = a.negative_xy_l0[:, ::-1] / 32.0
    assert not np.any(np.all((neg >= 30) & (neg < 40), axis=1))


def test_possible_tumor_keeps_negatives_half_a_patch_away():
    # Stage 2 with a fixed cutoff: a region the stage-1 model scores above its threshold (but below the cutoff) is
    # neither positive nor negative, and no negative patch center comes within the margin of it,
    # so no negative patch contains that tumor.
    tissue = np.ones((60, 60), bool)
    possible = np.zeros_like(tissue)
    possible[20:30, 20:30] = True
    rois = np.array([[0, 0, 5 * 32, 5 * 32]])  # a small annotated corner (mask px 0..5)
    c = sample_patch_centers(tissue, 8.0, 0.25, rois, 50, 400, np.random.default_rng(1),
                             not_negative=possible, negative_margin_um=70.0)
    neg = c.negative_xy_l0[:, ::-1] / 32.0
    d = np.maximum(np.maximum(20 - neg, neg - 30), 0)
    assert np.hypot(d[:, 0], d[:, 1]).min() >= 70.0 / 8.0 - 1.0
    pos = c.positive_xy_l0[:, ::-1] / 32.0
    assert np.all(pos < 5)  # possible tumor is not a positive
    # without the possible-tumor mask, negatives do land on it
    c0 = sample_patch_centers(tissue, 8.0, 0.25, rois, 50, 400, np.random.default_rng(1), negative_margin_um=70.0)
    neg0 = c0.negative_xy_l0[:, ::-1] / 32.0
    assert np.any(np.all((neg0 >= 20) & (neg0 < 30), axis=1))


@pytest.mark.parametrize(
    "aurocs, tolerance, chosen",
    [((0.99998, 0.99996), 0.01, 2),  # a hair's difference on noisy validation keeps the paper's stage 2
     ((0.97, 0.90), 0.01, 1),  # a real loss of ranking quality keeps stage 1
     ((0.97, 0.90), 0.10, 2),
     ((float("nan"), 0.9), 0.01, 2)],
)
def test_stage_choice_prefers_stage_two_within_tolerance(aurocs, tolerance, chosen):
    stages = [{"stage": i + 1, "val_auroc": a} for i, a in enumerate(aurocs)]
    assert _choose_stage(stages, tolerance) == chosen


def test_split_holds_out_annotated_slides_only():
    ids = [f"S{i}" for i in range(8)]
    train, val = split_slides(ids, {"S1", "S2", "S3", "S4"}, 0.25, seed=0)
    assert len(val) == 1 and val[0] in {"S1", "S2", "S3", "S4"}
    assert sorted(train + val) == ids
    assert split_slides(ids, {"S1", "S2", "S3", "S4"}, 0.25, seed=0) == (train, val)


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    truth = rng.random((40, 40)) < 0.3
    score = truth * 0.5 + rng.random((40, 40))
    assert pixel_auroc(score, truth) == pytest.approx(roc_auc_score(truth.ravel(), score.ravel()))
    a = np.zeros((10, 10), bool); a[:5] = True
    b = np.zeros((10, 10), bool); b[:, :5] = True
    assert dice(a, b) == pytest.approx(0.5)
    q = map_quality(score / 1.5, truth, np.ones_like(truth), 0.5, 4.0)
    assert q["fp_area_mm2"] >= 0 and q["tumor_area_mm2"] == pytest.approx(truth.sum() * 16e-6)


def test_best_threshold_separates_clean_scores():
    prob = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0])
    thr, f1 = best_threshold(prob, y)
    assert thr == 0.5 and f1 == 1.0  # any cut in (0.3, 0.7] separates them: the balanced-class cutoff
    thr, f1 = best_threshold(prob * 0.2, y)  # all scores low: the gap (0.06, 0.14] lies below 0.5
    assert thr == pytest.approx(0.1) and f1 == 1.0
    thr, f1 = best_threshold(np.array([0.9, 0.45, 0.4, 0.1]), np.array([1, 0, 1, 0]))
    assert thr == pytest.approx(0.25) and f1 == pytest.approx(0.8)  # best cut between 0.4 and 0.1 (F1 0.8)


def test_heatmap_on_grid_maps_cell_centers():
    # cells every 16 um, cell 0 centered at 70 um; a grid at 8 um/px has pixel k centered at 8k + 4
    heat = np.arange(5, dtype=np.float32)[None, :].repeat(3, 0)
    g = heatmap_on_grid(heat, 16.0, 70.0, (3, 12), 8.0)
    centers = (np.arange(12) + 0.5) * 8
    expect = np.clip(np.rint((centers - 70) / 16), 0, 4)
    np.testing.assert_array_equal(g[0], expect)


@pytest.mark.parametrize("bad", [{"edge_patches": -0.5}, {"negative_margin_um": -1.0}, {"confident": 1.0}])
def test_config_rejects_values_that_cannot_sample(bad):
    from tupac.errors import ConfigError
    from tupac.tumor.training import TumorTrainConfig

    with pytest.raises(ConfigError, match=next(iter(bad))):
        TumorTrainConfig(**bad)
