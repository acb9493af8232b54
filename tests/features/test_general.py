"""General features: frozen feature volumes, the grade network, cross-fitting and its save format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tupac.errors import FeatureError, FeatureFileError
from tupac.features import feature_dictionary
from tupac.features.general import (
    GeneralConfig, cross_fit, feature_volumes, fit_grade_net, general_features, load_grade_net, save_grade_net,
)
from tupac.predict.cv import outer_splitter

CFG = GeneralConfig(dim=32, epochs=40, lr=2e-2, seed=0)


def _volumes(grades, rng, c=6):
    """Slides whose channel 0 carries the grade (plus noise): a grade network can learn it."""
    out = []
    for g in grades:
        v = rng.normal(0, 1, (3, c, 4, 4)).astype(np.float32)
        v[:, 0] += 3.0 * g
        out.append(v)
    return out


def test_feature_volumes_are_the_penultimate_conv_of_the_frozen_network(rng):
    from tupac.models import create_model

    torch.manual_seed(0)
    m = create_model("mitosnet")
    patches = rng.integers(0, 255, (2, 111, 111, 3), dtype=np.uint8)
    vol = feature_volumes(m, patches)
    # 111 px through MitosNet (79 px, stride 16): a 3 x 3 map of its 200-channel fully connected conv.
    assert vol.shape == (2, 200, 3, 3) and vol.dtype == np.float32 and (vol >= 0).all()
    one = feature_volumes(m, patches[1:])
    np.testing.assert_allclose(one[0], vol[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(FeatureError, match="uint8"):
        feature_volumes(m, patches.astype(np.float32))


def test_grade_network_learns_the_grade_and_is_seeded(rng):
    grades = np.array([1, 2, 3] * 6)
    vols = _volumes(grades, rng)
    net = fit_grade_net(vols, grades, CFG)
    f = general_features(net, vols)
    assert f.shape == (18, CFG.dim + 3) and np.isfinite(f).all()
    np.testing.assert_allclose(f[:, -3:].sum(axis=1), 1.0, rtol=1e-6)
    assert (f[:, -3:].argmax(axis=1) + 1 == grades).mean() >= 0.9
    again = general_features(fit_grade_net(vols, grades, CFG), vols)
    np.testing.assert_array_equal(again, f)
    with pytest.raises(FeatureError, match="grade"):
        fit_grade_net(vols, grades[:-1], CFG)


def test_cross_fit_uses_the_predictive_folds_and_is_out_of_fold(rng):
    grades = np.array([1, 2, 3, 3, 2, 1, 1, 2, 3, 2, 1, 3])
    vols = _volumes(grades, rng)
    new = _volumes([3, 1], rng)
    cf = cross_fit(vols, grades, new, n_splits=3, config=CFG)
    # The same split as tupac.predict.cv makes of the same slides and grades.
    for k, (tr, te) in enumerate(outer_splitter("grade", 3, CFG.seed).split(np.zeros(12), grades)):
        assert (cf.folds[te] == k).all()
        # Each training slide's row comes from a network fitted without it.
        net = fit_grade_net([vols[i] for i in tr], grades[tr], CFG)
        np.testing.assert_array_equal(cf.train[te], general_features(net, [vols[i] for i in te]))
    np.testing.assert_array_equal(cf.new, general_features(cf.net, new))
    # A new slide's row does not depend on the other new slides.
    alone = cross_fit(vols, grades, new[:1], n_splits=3, config=CFG)
    np.testing.assert_array_equal(alone.new[0], cf.new[0])
    with pytest.raises(FeatureError, match="folds"):
        cross_fit(vols[:2], grades[:2], [], n_splits=3, config=CFG)


def test_saved_without_pickle_and_read_back(tmp_path, rng):
    grades = np.array([1, 2, 3, 1, 2, 3])
    vols = _volumes(grades, rng)
    net = fit_grade_net(vols, grades, CFG)
    save_grade_net(net, tmp_path / "g", {"seed": 0})
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["general.json", "general.safetensors"]
    back, meta = load_grade_net(tmp_path / "g")
    assert meta["dim"] == CFG.dim and meta["seed"] == 0
    np.testing.assert_array_equal(general_features(back, vols), general_features(net, vols))
    (tmp_path / "g" / "general.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FeatureFileError, match="general.safetensors"):
        load_grade_net(tmp_path / "g")
    with pytest.raises(FeatureFileError, match="missing"):
        load_grade_net(tmp_path / "nothing")


def test_general_columns_are_documented():
    d = feature_dictionary(("general",))
    assert len(d) == 1027 and d["name"].iloc[0] == "general_0000" and d["name"].iloc[-1] == "general_prob_grade3"


def test_the_default_feature_layer_is_1024_filters_pooled_over_the_slide(rng):
    grades = np.array([1, 2, 3] * 3)
    vols = _volumes(grades, rng)
    cfg = GeneralConfig(epochs=3, seed=0)
    assert cfg.dim == 1024 and cfg.width == 0 and cfg.dropout > 0 and cfg.weight_decay > 0
    net = fit_grade_net(vols, grades, cfg)
    # Parameters: C -> 1024 1x1 conv, 1024 -> 3 head, and no narrower layer in between (no 64-wide bottleneck).
    shapes = {k: tuple(v.shape) for k, v in net.named_parameters()}
    assert shapes == {"fc.weight": (1024, 6, 1, 1), "fc.bias": (1024,), "head.weight": (3, 1024), "head.bias": (3,)}
    f = general_features(net, vols)
    assert f.shape == (9, 1027) and np.isfinite(f).all()
    # Each unit is its filter's ReLU averaged over the slide's patches and positions.
    with torch.no_grad():
        z = (torch.from_numpy(vols[0]) - net.mean[None, :, None, None]) / net.std[None, :, None, None]
        manual = torch.relu(net.fc(z)).mean(dim=(0, 2, 3)).double().numpy()
    np.testing.assert_allclose(f[0, :1024], manual, rtol=1e-5, atol=1e-6)
    # Over enough slides the 1,024 units span more than 64 dimensions (the old bottleneck's pooled width).
    many = [rng.normal(0, 1, (2, 6, 4, 4)).astype(np.float32) for _ in range(120)]
    assert np.linalg.matrix_rank(general_features(net, many)[:, :1024]) > 64


def test_dropout_training_is_seeded_and_leaves_the_global_random_state_alone(rng):
    grades = np.array([1, 2, 3] * 3)
    vols = _volumes(grades, rng)
    cfg = GeneralConfig(dim=64, epochs=5, dropout=0.5, seed=3)
    a = general_features(fit_grade_net(vols, grades, cfg), vols)
    torch.manual_seed(123)
    torch.rand(7)  # other draws on torch's global generator between the fits change nothing
    b = general_features(fit_grade_net(vols, grades, cfg), vols)
    np.testing.assert_array_equal(a, b)
    c = general_features(fit_grade_net(vols, grades, GeneralConfig(dim=64, epochs=5, dropout=0.5, seed=4)), vols)
    assert not np.array_equal(a, c)
    no_drop = general_features(fit_grade_net(vols, grades, GeneralConfig(dim=64, epochs=5, dropout=0.0, seed=3)), vols)
    assert not np.array_equal(a, no_drop)  # the masks were applied
    with pytest.raises(FeatureError, match="dropout"):
        GeneralConfig(dropout=1.0)


def test_the_bottleneck_option_and_version_1_files_still_load(tmp_path, rng):
    import json

    grades = np.array([1, 2, 3, 1, 2, 3])
    vols = _volumes(grades, rng)
    net = fit_grade_net(vols, grades, GeneralConfig(width=8, dim=32, epochs=5, seed=0))
    assert net.reduce.out_channels == 8 and net.fc.in_features == 8 and net.fc.out_features == 32
    save_grade_net(net, tmp_path / "g", {"seed": 0})
    meta_path = tmp_path / "g" / "general.json"
    meta = json.loads(meta_path.read_text())
    assert meta["format_version"] == 2 and meta["width"] == 8 and meta["dim"] == 32
    meta_path.write_text(json.dumps(dict(meta, format_version=1)))  # as written before the 1,024-filter layer
    back, _ = load_grade_net(tmp_path / "g")
    np.testing.assert_array_equal(general_features(back, vols), general_features(net, vols))
    meta_path.write_text(json.dumps(dict(meta, format_version=3)))
    with pytest.raises(FeatureFileError, match="format_version"):
        load_grade_net(tmp_path / "g")
