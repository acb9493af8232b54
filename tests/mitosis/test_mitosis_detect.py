"""Detections from heatmaps (smoothing, maxima, NMS, coordinate mapping) and threshold choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tupac.mitosis.detect import _augmenting_flags, choose_threshold, detect_from_heatmap, nms
from tupac.mitosis.scoring import score_images


def _blob(shape, centres, sigma=1.5, amp=1.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    out = np.zeros(shape, np.float32)
    for (r, c), a in zip(centres, np.broadcast_to(amp, len(centres))):
        out = np.maximum(out, a * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2)))
    return out


def test_cell_to_level0_mapping():
    prob = _blob((20, 30), [(5, 12)])
    det = detect_from_heatmap(prob, stride_px=4, offset_px=31.5, threshold=0.5, sigma_px=0, nms_radius_px=10)
    assert list(det.columns) == ["x", "y", "prob"]
    assert len(det) == 1
    assert (det.x[0], det.y[0]) == (31.5 + 12 * 4, 31.5 + 5 * 4)
    assert det.prob.dtype == np.float32 and det.prob[0] == pytest.approx(1.0)
    # The same heatmap of a tile whose pixel (0,0) is at level-0 (1000, 2000), read at 10x of a 40x slide.
    det = detect_from_heatmap(
        prob, 4, 31.5, 0.5, 0, 10, origin_xy_l0=(1000.0, 2000.0), scale_l0=4.0
    )
    assert (det.x[0], det.y[0]) == (1000 + 4 * (31.5 + 48), 2000 + 4 * (31.5 + 20))


def test_threshold_smoothing_and_input_untouched():
    prob = _blob((40, 40), [(10, 10), (30, 30)], amp=[0.9, 0.4])
    prob[20, 5] = 0.95  # a one-cell spike: noise that smoothing should flatten
    before = prob.copy()
    raw = detect_from_heatmap(prob, 1, 0, threshold=0.5, sigma_px=0, nms_radius_px=3)
    assert sorted(zip(raw.y, raw.x)) == [(10, 10), (20, 5)]
    smooth = detect_from_heatmap(prob, 1, 0, threshold=0.3, sigma_px=2.0, nms_radius_px=3)
    assert list(zip(smooth.y, smooth.x)) == [(10, 10)]  # the spike drops to ~0.04, the 0.4 blob to ~0.17
    assert np.array_equal(prob, before)
    assert smooth.prob[0] < 0.9  # reported probability is the smoothed one used for the threshold


def test_nms_keeps_the_stronger_of_close_peaks_only():
    prob = _blob((30, 60), [(15, 10), (15, 16), (15, 40)], sigma=1.0, amp=[0.7, 0.9, 0.8])
    det = detect_from_heatmap(prob, 2.0, 0.0, threshold=0.5, sigma_px=0, nms_radius_px=15)
    # Peaks 6 cells = 12 px apart merge into the stronger; the third (48 px away) survives.
    assert det.x.tolist() == [32.0, 80.0] and det.prob.tolist() == pytest.approx([0.9, 0.8], abs=1e-3)
    det = detect_from_heatmap(prob, 2.0, 0.0, threshold=0.5, sigma_px=0, nms_radius_px=10)
    assert len(det) == 3 and det.prob.is_monotonic_decreasing


def test_plateau_gives_one_detection():
    prob = np.zeros((10, 10), np.float32)
    prob[4:6, 4:7] = 0.8
    det = detect_from_heatmap(prob, 1, 0, 0.5, 0, nms_radius_px=3)
    assert len(det) == 1


def test_empty_heatmaps():
    for prob in (np.zeros((16, 16), np.float32), np.zeros((0, 5), np.float32)):
        det = detect_from_heatmap(prob, 4, 0, 0.5, 1.0, 10)
        assert det.empty and list(det.columns) == ["x", "y", "prob"]
    with pytest.raises(ValueError):
        detect_from_heatmap(np.zeros((2, 2, 2)), 4, 0, 0.5, 1.0, 10)


def test_nms_function():
    xy = np.array([[0, 0], [5, 0], [11, 0], [100, 0]], float)
    score = np.array([0.9, 0.95, 0.5, 0.1])
    assert nms(xy, score, radius=6).tolist() == [1, 3]  # 0 is 5 and 2 exactly 6 from the best
    assert nms(xy, score, radius=5.9).tolist() == [1, 2, 3]
    # Suppression is by kept points only: c is 5 from b, but b was suppressed by a.
    chain = np.array([[0, 0], [5, 0], [10, 0]], float)
    assert nms(chain, np.array([0.9, 0.8, 0.7]), radius=6).tolist() == [0, 2]
    assert nms(xy, np.ones(4), 0).tolist() == [0, 1, 2, 3]


def _brute_best(dets, truths, radius=30.0):
    thresholds = np.unique(np.concatenate([d.prob.to_numpy() for d in dets]))
    best = (-1.0, None)
    for t in thresholds[::-1]:
        pooled, _ = score_images(
            ((i, d[d.prob >= t], tr) for i, (d, tr) in enumerate(zip(dets, truths))), radius
        )
        if pooled.f1 > best[0]:
            best = (pooled.f1, t)
    return best[1], best[0]


def test_choose_threshold_hand_built():
    truths = [np.array([[100, 100], [300, 300]]), np.array([[50, 50]])]
    dets = [
        pd.DataFrame({"x": [101, 302, 600, 700], "y": [99, 298, 600, 700], "prob": [0.9, 0.6, 0.7, 0.2]}),
        pd.DataFrame({"x": [55, 400], "y": [52, 400], "prob": [0.8, 0.3]}),
    ]
    # t=0.6 keeps 4 detections: 3 TP, 1 FP (the 0.7), 0 FN -> F1 = 6/7; t=0.8: 2 TP, 0 FP, 1 FN -> 0.8
    t, f1 = choose_threshold(dets, truths)
    assert t == pytest.approx(0.6) and f1 == pytest.approx(6 / 7)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_choose_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    dets, truths = [], []
    for _ in range(5):
        truth = rng.uniform(0, 200, size=(rng.integers(0, 6), 2))
        near = truth[rng.integers(0, len(truth), size=rng.integers(0, 8))] if len(truth) else np.zeros((0, 2))
        pts = np.vstack([near + rng.normal(0, 15, near.shape), rng.uniform(0, 200, size=(rng.integers(0, 6), 2))])
        prob = np.round(rng.uniform(0, 1, len(pts)), 1)  # coarse: many ties
        dets.append(pd.DataFrame({"x": pts[:, 0], "y": pts[:, 1], "prob": prob}))
        truths.append(truth)
    t, f1 = choose_threshold(dets, truths)
    bt, bf1 = _brute_best(dets, truths)
    assert f1 == pytest.approx(bf1) and t == pytest.approx(bt)


def test_incremental_matching_equals_maximum_matching_of_every_prefix():
    from tupac.mitosis.scoring import score_image

    rng = np.random.default_rng(11)
    truth = rng.uniform(0, 80, size=(12, 2))
    pred = rng.uniform(0, 80, size=(30, 2))  # dense: many alternating paths
    tp = np.cumsum(_augmenting_flags(pred, truth, 30.0))
    assert [score_image(pred[: k + 1], truth).tp for k in range(30)] == tp.tolist()


def test_choose_threshold_edge_cases():
    empty = pd.DataFrame({"x": [], "y": [], "prob": []})
    assert choose_threshold([empty], [np.zeros((0, 2))])[0] == np.inf
    t, f1 = choose_threshold([empty], [[[1, 1]]])
    assert t == np.inf and f1 == 0.0
    with pytest.raises(ValueError):
        choose_threshold([empty], [])


def test_heatmap_of_known_mitoses_detects_them_in_level0():
    """A net with stride 4 and a 64-px receptive field (offset 31.5) run on a 40x tile whose pixel
    (0, 0) sits at level-0 (5000, 7000): blobs rendered at the true positions come back as exact
    TPs in level-0 coordinates, and a weak blob below the threshold does not."""
    from tupac.mitosis.scoring import match_points, score_image

    rng = np.random.default_rng(5)
    stride, offset, origin = 4.0, 31.5, (5000.0, 7000.0)
    truth_in = np.array([[100.0, 80.0], [300.0, 90.0], [210.0, 400.0], [420.0, 410.0]])  # input-frame (x, y)
    cells_rc = (truth_in[:, ::-1] - offset) / stride
    prob = _blob((120, 120), cells_rc, sigma=2.0, amp=0.95)
    prob = np.maximum(prob, _blob((120, 120), [(60.0, 20.0)], sigma=2.0, amp=0.3))  # a weak figure
    prob = np.clip(prob + rng.normal(0, 0.03, prob.shape).astype(np.float32), 0, 1)
    det = detect_from_heatmap(
        prob, stride, offset, threshold=0.5, sigma_px=4.0, nms_radius_px=30.0, origin_xy_l0=origin
    )
    truth_l0 = truth_in + np.array(origin)
    c = score_image(det, truth_l0)
    assert (c.tp, c.fp, c.fn) == (4, 0, 0)
    pi, ti = match_points(det, truth_l0)
    err = np.hypot(*(det[["x", "y"]].to_numpy()[pi] - truth_l0[ti]).T)
    assert err.max() <= stride  # located to within one heatmap cell
