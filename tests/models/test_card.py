"""ModelCard: validation at construction, JSON round trip, metadata-only updates."""

from __future__ import annotations

import json

import pytest

from tupac.errors import ModelError
from tupac.models import ModelCard, create_model


def _card(**over):
    d = dict(
        name="locnet",
        architecture="LocNet",
        task="tumor",
        mpp=1.0,
        patch_size=140,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        output_stride=16,
        output_offset=69.5,
        receptive_field=140,
    )
    d.update(over)
    return ModelCard(**d)


def test_json_round_trip_keeps_every_field():
    card = _card(
        model_kwargs={"widths": (8, 16)},
        training_data_hash="sha256:abc",
        stain_reference="templates/he.png",
        stain_method="macenko",
        detection_threshold=0.8,
        seed=3,
        created="2026-01-01T00:00:00+00:00",
        extra={"best_epoch": 4},
    )
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.model_kwargs == {"widths": [8, 16]}  # JSON-normalized at construction
    assert json.loads(card.to_json())["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "over, words",
    [
        ({"task": "grade"}, "task='grade'"),
        ({"mpp": 0.0}, "mpp=0.0"),
        ({"std": (0.2, 0.0, 0.2)}, "std="),
        ({"mean": (0.5, 0.5)}, "expected 3"),
        ({"detection_threshold": 1.5}, "detection_threshold"),
        ({"extra": {"f": object()}}, "JSON"),
    ],
)
def test_invalid_values_are_refused_with_what_was_received(over, words):
    with pytest.raises(ModelError, match=words.replace("(", r"\(")):
        _card(**over)


def test_from_json_rejects_unknown_fields_and_garbage():
    d = _card().to_dict()
    d["colour"] = "blue"
    with pytest.raises(ModelError, match="unknown fields"):
        ModelCard.from_dict(d)
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelCard.from_json("{nope")
    d = _card().to_dict()
    del d["patch_size"]
    with pytest.raises(ModelError, match="incomplete"):
        ModelCard.from_dict(d)


def test_with_metadata_changes_metadata_only():
    card = _card()
    assert card.with_metadata(seed=5).seed == 5
    with pytest.raises(ModelError, match="patch_size"):
        card.with_metadata(patch_size=64)


def test_heatmap_shape_and_centers_follow_the_window_contract():
    card = create_model("locnet").card
    assert card.patch_size == card.receptive_field == 140
    assert card.heatmap_shape(140, 140) == (1, 1)
    assert card.heatmap_shape(140 + 16 * 3 + 15, 139 + 16) == (4, 1)
    assert card.heatmap_shape(100, 500) == (0, 0)
    assert card.cell_centers(3) == [69.5, 85.5, 101.5]
