"""The feature dictionary documents every column each feature function produces."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from features_drawing import disk, he_patch

import tupac.features as features
from tupac.errors import FeatureError
from tupac.features import GROUPS, check_finite, feature_dictionary
from tupac.features.deep_hist import DeepHistogram
from tupac.features.fringe import FRINGE_FEATURES, fringe_patches, fringe_summary
from tupac.features.mitosis_arch import arch_features
from tupac.features.mitosis_bio import patch_bio_features, slide_bio_features
from tupac.features.tumor import tumor_features


def _names(group):
    d = feature_dictionary()
    return set(d["name"][d["group"] == group])


def test_dictionary_rows_are_complete_and_unique():
    d = feature_dictionary()
    assert list(d.columns) == ["name", "group", "unit", "description"]
    assert d["name"].is_unique
    assert (d["unit"].str.len() > 0).all() and (d["description"].str.len() > 10).all()
    assert set(d["group"]) == set(GROUPS) | {"flags"}
    counts = d["group"].value_counts()
    assert counts["mitosis_arch"] == 60 and counts["mitosis_bio"] == 3 * 50 + 4 and counts["deep_hist"] == 200
    assert len(feature_dictionary(("deep_hist",), n_clusters=7)) == 8
    with pytest.raises(ValueError):
        feature_dictionary(("nope",))


def test_every_function_output_is_in_the_dictionary():
    d = feature_dictionary()
    documented = set(d["name"])
    flags = set(d["name"][d["group"] == "flags"])
    tumor = np.zeros((100, 100), np.float32)
    tumor[disk(tumor.shape, (50, 50), 30)] = 1
    t = tumor_features(tumor, 16.0)
    assert set(t) - flags == _names("tumor") and set(t) <= documented
    a = arch_features(np.zeros((0, 2)), 0.25, tumor > 0, 16.0)
    assert set(a) - flags == _names("mitosis_arch") and set(a) <= documented
    o = fringe_patches(tumor > 0, 16.0, 0.25, n=3)
    assert set(fringe_summary(o, tumor > 0, 16.0, 0.25)) == {f.name for f in FRINGE_FEATURES} == _names("fringe")
    b = slide_bio_features([patch_bio_features(he_patch(100, [(50, 50, 12, 10, 0)]), np.array([[50.0, 50.0]]))])
    assert set(b) - flags == _names("mitosis_bio") and set(b) <= documented
    fit = DeepHistogram(np.zeros(3), np.ones(3), np.eye(200, 3))
    assert set(fit.features(np.ones((2, 3)))) - flags == _names("deep_hist")


def test_check_finite_names_the_bad_columns():
    ok = pd.DataFrame({"slide_id": ["a"], "x": [1.0]})
    assert check_finite(ok) is ok
    with pytest.raises(FeatureError, match="y"):
        check_finite(pd.DataFrame({"slide_id": ["a"], "x": [1.0], "y": [math.inf]}))


def test_package_exposes_the_entry_points_lazily():
    assert callable(features.slide_features) and callable(features.cohort_features)
    assert callable(features.open_heatmaps)
