"""TUPAC16 scoring on hand-built cases: one-to-one matching within 30 px, pooled F1."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tupac.mitosis.scoring import TUPAC_RADIUS_PX, Counts, match_points, score_image, score_images


def test_radius_is_tupac_30px():
    assert TUPAC_RADIUS_PX == 30.0


def test_two_detections_near_one_mitosis_is_one_tp_one_fp():
    c = score_image([[100, 100], [110, 105]], [[104, 102]])
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)
    assert c.precision == 0.5 and c.recall == 1.0
    assert c.f1 == pytest.approx(2 / 3)


def test_detection_between_two_mitoses_is_one_tp_one_fn():
    c = score_image([[125, 200]], [[100, 200], [150, 200]])  # 25 px from each
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)


def test_radius_boundary_and_outside():
    assert score_image([[18, 24]], [[0, 0]]).tp == 1  # exactly 30 px: inside
    assert score_image([[18, 24.01]], [[0, 0]]).tp == 0
    assert score_image([[0, 31]], [[0, 0]]).tp == 0
    assert score_image([[0, 31]], [[0, 0]], radius=40).tp == 1


def test_optimal_matching_beats_greedy():
    # Truths T0=(0,0), T1=(50,0). D0=(24,0) is nearer T0 (24) than T1 (26); D1=(-28,0) reaches only T0.
    # Greedy (by detection order or by nearest pair) gives D0->T0 and leaves D1 unmatched: TP=1.
    # The optimal one-to-one matching is D0->T1, D1->T0: TP=2.
    pred = np.array([[24.0, 0.0], [-28.0, 0.0]])
    truth = np.array([[0.0, 0.0], [50.0, 0.0]])
    pi, ti = match_points(pred, truth)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(0, 1), (1, 0)]
    c = score_image(pred, truth)
    assert (c.tp, c.fp, c.fn) == (2, 0, 0) and c.f1 == 1.0


def test_among_maximum_matchings_the_nearest_pairs_win():
    pi, ti = match_points([[0, 0], [100, 0]], [[101, 0], [2, 0]])
    assert dict(zip(pi.tolist(), ti.tolist())) == {0: 1, 1: 0}


def test_each_truth_and_detection_used_once_in_a_cluster():
    rng = np.random.default_rng(3)
    pred = rng.uniform(0, 40, size=(15, 2))
    truth = rng.uniform(0, 40, size=(4, 2))
    pi, ti = match_points(pred, truth)
    assert len(set(pi.tolist())) == len(pi) and len(set(ti.tolist())) == len(ti)
    assert np.all(np.hypot(*(pred[pi] - truth[ti]).T) <= 30)
    c = score_image(pred, truth)
    assert c.tp == 4 and c.fp == 11 and c.fn == 0


def test_empty_predictions_truths_and_both():
    none = np.zeros((0, 2))
    c = score_image(none, [[1, 2], [50, 60]])
    assert (c.tp, c.fp, c.fn) == (0, 0, 2)
    assert math.isnan(c.precision) and c.recall == 0.0 and c.f1 == 0.0
    c = score_image([[1, 2]], none)
    assert (c.tp, c.fp, c.fn) == (0, 1, 0)
    assert c.precision == 0.0 and math.isnan(c.recall) and c.f1 == 0.0
    c = score_image([], [])
    assert (c.tp, c.fp, c.fn) == (0, 0, 0)
    assert math.isnan(c.f1)
    assert c.to_dict() == {"tp": 0, "fp": 0, "fn": 0, "precision": None, "recall": None, "f1": None}


def test_dataframes_use_x_y_columns():
    pred = pd.DataFrame({"y": [500.0], "x": [10.0], "prob": [0.9]})
    assert score_image(pred, pd.DataFrame({"x": [12.0], "y": [505.0]})).tp == 1
    assert score_image(pred, [[500.0, 10.0]]).tp == 0  # arrays are (x, y), not (row, col)


def test_pooled_f1_sums_counts_not_per_image_f1():
    pairs = [
        ("a", [[0, 0]], [[0, 0]]),  # TP 1
        ("b", [[0, 0], [100, 100], [200, 200]], [[0, 0], [400, 400]]),  # TP 1, FP 2, FN 1
        ("c", [], []),  # nothing
        ("d", [], [[5, 5]]),  # FN 1
    ]
    pooled, table = score_images(pairs)
    assert (pooled.tp, pooled.fp, pooled.fn) == (2, 2, 2)
    assert pooled.f1 == pytest.approx(0.5)
    assert pooled.f1 != pytest.approx(np.nanmean(table["f1"]))
    assert table["image"].tolist() == ["a", "b", "c", "d"]
    assert table.loc[1, ["n_pred", "n_truth", "tp", "fp", "fn"]].tolist() == [3, 2, 1, 2, 1]


def test_bad_shapes_and_counts_are_rejected():
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        score_image([[1, 2, 3]], [[1, 2]])
    with pytest.raises(ValueError):
        Counts(-1, 0, 0)
