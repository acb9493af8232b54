"""One parametrized test per registered model: probabilities, heatmap, save/load, card JSON."""

from __future__ import annotations

import pytest
import torch

from tupac.errors import ModelError, ModelFileError
from tupac.models import ModelCard, create_model, list_models, load_model, save_model

ALL = list_models()
# Full-size ImageNet backbones take tens of seconds on two shared CPU cores.
HEAVY = {"densenet121", "googlenet", "googlenet_fcn"}
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ALL]


def test_registry_lists_the_paper_networks():
    assert set(ALL) >= {"locnet", "mitosnet", "googlenet", "googlenet_fcn", "densenet121", "resnet18", "alexnet"}
    assert "mitosnet" in list_models(task="mitosis") and "locnet" in list_models(task="tumor")


@pytest.mark.parametrize("name", PARAMS)
def test_every_model_end_to_end(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    card = model.card
    assert card.name == name and card.mpp == {"tumor": 1.0, "mitosis": 0.25}[card.task]
    p = card.patch_size
    x = torch.rand(2, 3, p, p, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = model(x)
    assert probs.shape == (2, 2)
    assert torch.all(probs >= 0) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-6)

    # Arbitrary, non-square, non-aligned input size.
    big = torch.rand(1, 3, p + 7, p + card.output_stride + 5, generator=torch.Generator().manual_seed(2))
    heat = model.heatmap(big)
    assert heat.shape[:2] == (1, 2) and heat.shape[2] >= 1 and heat.shape[3] >= heat.shape[2]
    assert torch.allclose(heat.sum(1), torch.ones(heat.shape[2:]), atol=1e-6)
    if card.fully_convolutional is False or model.exact:
        assert tuple(heat.shape[2:]) == card.heatmap_shape(*big.shape[-2:])

    save_model(model, card, tmp_path / "m")
    assert sorted(f.name for f in (tmp_path / "m").iterdir()) == ["card.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert loaded.card == card and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), probs)
    assert torch.equal(loaded.heatmap(big), heat)
    assert ModelCard.from_json(card.to_json()) == card


def test_native_size_is_enforced_by_logits():
    model = create_model("mitosnet")
    with pytest.raises(ModelError, match="native 79x79"):
        model.logits(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ModelError, match="smaller than"):
        model.heatmap(torch.zeros(1, 3, 40, 200))


def test_bad_names_options_and_tasks_fail_with_a_clear_message():
    with pytest.raises(ModelError, match="unknown model 'vgg'"):
        create_model("vgg")
    with pytest.raises(ModelError, match="unknown options"):
        create_model("locnet", depth=3)
    with pytest.raises(ModelError, match="too small"):
        create_model("alexnet", patch_size=40)


def test_options_travel_through_the_card(tmp_path):
    model = create_model("locnet", task="mitosis", widths=[8, 8, 8, 8, 16], fc_width=16)
    assert model.card.task == "mitosis" and model.card.mpp == 0.25
    save_model(model, None, tmp_path)
    again = load_model(tmp_path)
    assert again.body[0].out_channels == 8 and again.card == model.card


def test_loading_refuses_missing_or_mismatched_files(tmp_path):
    with pytest.raises(ModelFileError, match="card.json"):
        load_model(tmp_path)
    small = create_model("locnet", widths=[8, 8, 8, 8, 16], fc_width=16)
    save_model(small, small.card, tmp_path)
    # A card that claims the default widths no longer fits the saved tensors.
    card = small.card.to_dict()
    card["model_kwargs"] = {}
    (tmp_path / "card.json").write_text(ModelCard.from_dict(card).to_json())
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(tmp_path)
