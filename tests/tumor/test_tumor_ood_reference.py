"""Tumor training keeps its training slides' stain and texture ranges in the card (out-of-distribution check)."""

from __future__ import annotations

import json

import pytest

from tupac.tumor.training import TumorTrainConfig, train_tumor

pytestmark = pytest.mark.slow  # one tiny training run (~1 min on 2 CPUs)

TINY = dict(
    model_kwargs={"widths": [8, 8, 16, 16, 32], "fc_width": 16},
    positives_per_slide=12,
    negatives_per_slide=12,
    two_stage=False,
    train={"epochs": 1, "batch_size": 16, "lr": 0.003, "monitor": "loss"},
)


def test_the_trained_card_holds_the_training_reference_and_its_slides_pass(small_cohort, tmp_path):
    from tupac.features.ood import REFERENCE_KEY, OodConfig, check_slide, slide_stats
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide

    res = train_tumor(small_cohort, tmp_path / "m", TumorTrainConfig(seed=5, **TINY))
    card = json.loads((res.model_dir / "card.json").read_text())
    ref = card["extra"][REFERENCE_KEY]
    assert ref["n"] == len(res.train_slides) and len(json.dumps(ref)) < 2000
    assert set(ref["stats"]) == {"od_mean", "od_std", "h_od_p50", "h_od_p95", "e_od_p50", "sharpness"}
    for sid in res.train_slides + res.val_slides:
        path = next(small_cohort.rglob(f"{sid}.svs"))
        with open_slide(path) as reader:
            stats = slide_stats(reader, slide_tissue_mask(reader, 8.0), card["mpp"])
        # The phantom cohort's few training slides are under the default min_items: use them anyway,
        # to see that slides of the same cohort (other stain centers included) are not flagged.
        verdict = check_slide({"tumor": stats}, {"tumor": ref}, OodConfig(min_items=1))
        assert verdict.checked and not verdict.ood, (sid, verdict.reasons)
