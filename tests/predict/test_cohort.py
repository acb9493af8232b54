"""Feature tables and labels: every problem is an error or a reported exclusion, never silent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tupac.errors import CohortError
from tupac.predict.cohort import build_cohort, feature_table_hash, read_feature_table, validate_feature_table


def _features(ids, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"slide_id": ids, "f1": rng.normal(size=len(ids)), "f2": rng.normal(size=len(ids))})


def _labels(ids, grades=None, rna=None):
    n = len(ids)
    return pd.DataFrame({
        "slide_id": ids,
        "mitosis_score": grades if grades is not None else [1 + i % 3 for i in range(n)],
        "proliferation_score": rna if rna is not None else np.linspace(-1, 1, n),
    })


IDS = [f"TUPAC-TR-{i:03d}" for i in range(1, 7)]


def test_matching_tables_keep_every_slide_in_label_order():
    feats = validate_feature_table(_features(IDS[::-1]))
    c = build_cohort(feats, _labels(IDS))
    assert list(c.slide_ids) == IDS and c.exclusions == []
    assert c.grade.tolist() == [1, 2, 3, 1, 2, 3]
    assert c.X.loc["TUPAC-TR-002", "f1"] == feats.loc["TUPAC-TR-002", "f1"]


def test_unmatched_slides_are_excluded_and_reported_both_ways():
    c = build_cohort(validate_feature_table(_features(IDS[:5] + ["TUPAC-TR-099"])), _labels(IDS))
    reasons = {e.slide_id: e.reason for e in c.exclusions}
    assert "no row in the feature table" in reasons["TUPAC-TR-006"]
    assert "no label" in reasons["TUPAC-TR-099"]
    assert len(c.X) == 5
    s = c.summary()
    assert s["n_excluded"] == 2 and {e["slide_id"] for e in s["excluded"]} == {"TUPAC-TR-006", "TUPAC-TR-099"}


@pytest.mark.parametrize(
    ("grades", "rna", "reason"),
    [
        ([1, 2, 4, 1, 2, 3], None, "is not 1, 2 or 3"),
        ([1, 2, np.nan, 1, 2, 3], None, "missing or not a number"),
        (None, [0.1, 0.2, np.nan, 0.3, 0.4, 0.5], "proliferation score is missing"),
    ],
)
def test_bad_label_values_are_excluded_or_fatal_when_strict(grades, rna, reason):
    feats = validate_feature_table(_features(IDS))
    c = build_cohort(feats, _labels(IDS, grades, rna), labels_source="gt.csv")
    assert [e.slide_id for e in c.exclusions] == ["TUPAC-TR-003"]
    assert reason in c.exclusions[0].reason and "gt.csv" in c.exclusions[0].reason
    with pytest.raises(CohortError, match=f"gt.csv: slide TUPAC-TR-003 .*{reason}"):
        build_cohort(feats, _labels(IDS, grades, rna), strict=True, labels_source="gt.csv")


def test_all_nan_feature_row_is_excluded():
    f = _features(IDS)
    f.loc[1, ["f1", "f2"]] = np.nan
    c = build_cohort(validate_feature_table(f), _labels(IDS))
    assert [(e.slide_id, e.reason) for e in c.exclusions] == [("TUPAC-TR-002", "every feature is NaN")]


def test_nothing_usable_is_an_error():
    with pytest.raises(CohortError, match="no slide has both"):
        build_cohort(validate_feature_table(_features(["TUPAC-TR-050"])), _labels(IDS))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: f.drop(columns="slide_id"), "no 'slide_id' column"),
        (lambda f: f.assign(slide_id=[IDS[0]] * 6), "appears more than once"),
        (lambda f: f.assign(f2=["x"] * 6), "'f2' is not numeric"),
        (lambda f: f.assign(f1=np.inf), "'f1' has infinite values"),
        (lambda f: f[["slide_id"]], "no feature columns"),
    ],
)
def test_invalid_feature_tables(mutate, match):
    with pytest.raises(CohortError, match=match):
        validate_feature_table(mutate(_features(IDS)), source="RUN/features.parquet")


def test_read_feature_table_names_the_file(tmp_path):
    with pytest.raises(CohortError, match="features.parquet: feature table not found"):
        read_feature_table(tmp_path / "features.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(CohortError, match="bad.parquet: cannot read"):
        read_feature_table(bad)
    good = tmp_path / "f.parquet"
    _features(IDS).to_parquet(good, index=False)
    assert read_feature_table(good).shape == (6, 2)


def test_feature_hash_follows_content_not_file(tmp_path):
    f = _features(IDS)
    f.to_parquet(tmp_path / "a.parquet", index=False, compression="snappy")
    f.to_parquet(tmp_path / "b.parquet", index=False, compression="gzip")
    h = feature_table_hash(read_feature_table(tmp_path / "a.parquet"))
    assert (tmp_path / "a.parquet").read_bytes() != (tmp_path / "b.parquet").read_bytes()
    assert h == feature_table_hash(read_feature_table(tmp_path / "b.parquet")) == feature_table_hash(validate_feature_table(f))
    g = f.copy()
    g.loc[2, "f1"] += 1e-9
    assert feature_table_hash(validate_feature_table(g)) != h
    assert feature_table_hash(validate_feature_table(f.rename(columns={"f2": "g2"}))) != h
    assert len(h) == 64
