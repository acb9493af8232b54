"""The per-slide out-of-distribution check (tupac.features.ood): statistics, reference ranges, the rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from tupac.features.ood import (
    NO_REFERENCE,
    REFERENCE_KEY,
    OodConfig,
    check_slide,
    check_with_cards,
    image_stats,
    qc_frame,
    reference_from_stats,
    slide_density_stats,
)
from tupac.models.card import ModelCard
from tupac.preprocess.color import od_to_rgb as od_back_to_rgb
from tupac.preprocess.color import rgb_to_od
from tupac.synth.stain import CENTERS, od_to_rgb


def he_tile(rng: np.random.Generator, center, size: int = 128) -> np.ndarray:
    """A phantom H&E tile: eosin stroma everywhere, blobs of hematoxylin (nuclei), a glass corner."""
    e = ndimage.gaussian_filter(rng.uniform(0.3, 0.9, (size, size)), 2).astype(np.float32)
    h = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(25):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 6)
        h[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.8, 1.4)
    h = ndimage.gaussian_filter(h, 0.7)
    e[: size // 6, : size // 6] = 0.0  # glass: not tissue
    h[: size // 6, : size // 6] = 0.0
    noise = rng.normal(0, 0.01, (size, size, 3)).astype(np.float32)
    return od_to_rgb(h.astype(np.float32), e, center, noise)


def darker(tile: np.ndarray, factor: float) -> np.ndarray:
    """The tile with every optical density scaled by ``factor`` (a much heavier stain)."""
    return od_back_to_rgb(rgb_to_od(tile) * np.float32(factor))


def blurred(tile: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(tile[..., c].astype(np.float32), sigma) for c in range(3)],
                    axis=-1).round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def training():
    """Reference ranges over 24 training 'slides' (3 tiles each) from the three phantom centers."""
    rng = np.random.default_rng(7)
    items = [image_stats([he_tile(rng, CENTERS[i % 3]) for _ in range(3)]) for i in range(24)]
    return reference_from_stats(items)


def test_reference_is_small_robust_json(training):
    assert training["n"] == 24
    text = json.dumps(training)
    assert len(text) < 2000
    for name in ("od_mean", "od_std", "h_od_p50", "h_od_p95", "e_od_p50", "sharpness"):
        r = training["stats"][name]
        assert r["q01"] <= r["median"] <= r["q99"] and r["mad"] >= 0 and r["n"] == 24


def test_an_in_distribution_slide_is_not_flagged(training):
    rng = np.random.default_rng(99)
    for center in CENTERS:
        stats = image_stats([he_tile(rng, center) for _ in range(3)])
        res = check_slide({"tumor": stats}, {"tumor": training})
        assert not res.ood, res.reasons
        assert "tumor:h_od_p50" in res.checked and "tumor:sharpness" in res.checked and res.note == ""


def test_a_much_darker_slide_is_flagged_with_a_reason_naming_the_statistic(training):
    rng = np.random.default_rng(5)
    stats = image_stats([darker(he_tile(rng, CENTERS[0]), 2.5) for _ in range(3)])
    res = check_slide({"tumor": stats}, {"tumor": training})
    assert res.ood
    text = res.reasons_text
    assert "hematoxylin OD" in text and "above the training range" in text and "(tumor model, z=+" in text, text


def test_a_blurred_slide_is_flagged_for_sharpness(training):
    rng = np.random.default_rng(6)
    stats = image_stats([blurred(he_tile(rng, CENTERS[1]), 3.0) for _ in range(3)])
    res = check_slide({"mitosis": stats}, {"mitosis": training})
    assert res.ood
    assert any(r.startswith("sharpness (Laplacian variance)") and "below the training range" in r
               and "(mitosis model" in r for r in res.reasons), res.reasons


def test_the_rule_needs_both_a_large_z_and_a_value_outside_the_widened_range():
    ref = {"n": 20, "stats": {"tumor_fraction": {"median": 0.5, "mad": 0.1, "q01": 0.2, "q99": 0.8, "n": 20}}}
    # z = 0.35 / (1.4826 * 0.1) = 2.4: inside the default max_z although outside [q01, q99]
    assert not check_slide({"tumor": {"tumor_fraction": 0.85}}, {"tumor": ref}).ood
    res = check_slide({"tumor": {"tumor_fraction": 0.99}}, {"tumor": ref}, OodConfig(max_z=2.0, margin=0.1))
    assert res.ood and res.reasons == [
        "tumor fraction of tissue 0.99 above the training range 0.2-0.8 (tumor model, z=+3.3)"]
    # a zero-MAD reference (identical training items) does not make every other value an outlier
    flat = {"n": 5, "stats": {"od_mean": {"median": 0.4, "mad": 0.0, "q01": 0.4, "q99": 0.4, "n": 5}}}
    assert not check_slide({"tumor": {"od_mean": 0.43}}, {"tumor": flat}).ood
    assert check_slide({"tumor": {"od_mean": 0.9}}, {"tumor": flat}).ood


def test_cards_without_reference_statistics_load_and_say_so():
    old = ModelCard(name="tumor-old", architecture="X", task="tumor", mpp=1.0, patch_size=64,
                    mean=(0.5,) * 3, std=(0.25,) * 3, output_stride=8, output_offset=31.5, receptive_field=64,
                    extra={"threshold": 0.5})
    assert ModelCard.from_json(old.to_json()) == old  # an old card round-trips unchanged
    res = check_with_cards({"tumor": {"od_mean": 5.0}, "mitosis": None}, {"tumor": old, "mitosis": old})
    assert not res.ood and res.checked == []
    assert res.note == f"{NO_REFERENCE} (mitosis, tumor)" and res.reasons_text == res.note
    new = ModelCard.from_json(json.dumps({**old.to_dict(), "extra": {REFERENCE_KEY: reference_from_stats(
        [{"od_mean": 0.4 + 0.01 * i} for i in range(10)])}}))
    assert check_with_cards({"tumor": {"od_mean": 5.0}}, {"tumor": new}).ood


def test_density_statistics_are_defined_only_where_they_mean_something():
    assert slide_density_stats(2.0, 8.0, 10) == {"tumor_fraction": 0.25, "mitoses_per_mm2": 5.0}
    assert slide_density_stats(0.0, 8.0, 0) == {"tumor_fraction": 0.0}
    assert slide_density_stats(None, 8.0, None) == {}
    assert image_stats([np.full((64, 64, 3), 250, np.uint8)]) is None  # glass only


def test_qc_frame_flags_reasons_and_slides_from_before_the_check():
    flagged = {"ood": True, "reasons": ["a", "b"], "checked": ["tumor:a"], "note": "", "stats": {}}
    clean = {"ood": False, "reasons": [], "checked": ["tumor:a"], "note": "", "stats": {}}
    qc = qc_frame({"s1": flagged, "s2": clean, "s3": None, "s4": None}, ["s1", "s2", "s3", "s4"], blank=["s4"])
    assert qc["qc_ood"].tolist()[:3] == [1.0, 0.0, 0.0] and np.isnan(qc["qc_ood"].iloc[3])
    assert qc["qc_ood_reasons"].tolist()[:2] == ["a; b", ""]
    assert qc["qc_ood_reasons"].iloc[2].startswith("not checked")


def test_a_reference_of_too_few_training_items_is_not_used():
    ref = reference_from_stats([{"od_mean": 0.4}, {"od_mean": 0.41}])
    res = check_slide({"tumor": {"od_mean": 3.0}}, {"tumor": ref})
    assert not res.ood and res.checked == []
    assert res.note == "reference from fewer than 3 training items (tumor: 2): not checked"
    assert check_slide({"tumor": {"od_mean": 3.0}}, {"tumor": ref}, OodConfig(min_items=2)).ood
