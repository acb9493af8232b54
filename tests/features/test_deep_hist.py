"""Deep-feature histograms: MitosNet third-conv descriptors (4,096), pooled penultimate fallback, training-only
standardization and k-means, pickle-free save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tupac.errors import FeatureError, FeatureFileError
from tupac.features.deep_hist import (
    DeepHistogram,
    deep_hist_dictionary,
    descriptor_of,
    descriptor_width,
    fit_deep_histogram,
    mitosis_descriptors,
)


class TinyNet(nn.Module):
    """conv -> relu -> conv -> relu -> global pool -> linear classifier (penultimate width 8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.trunk(x).mean(dim=(2, 3)))


class TinyFCN(nn.Module):
    """Fully convolutional: the classifier is a 1x1 convolution over a 6-channel map."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 7, stride=4), nn.ReLU(), nn.Conv2d(6, 2, 1))

    def forward(self, x):
        return self.body(x)


def _patches(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 63, 63, 3), dtype=np.uint8)


def _mitosnet():
    registry = pytest.importorskip("tupac.models.registry")
    torch.manual_seed(0)
    return registry.create_model("mitosnet")


def test_other_networks_get_their_pooled_penultimate_layer_at_its_own_width():
    net = TinyNet()
    p = _patches(5)
    f = mitosis_descriptors(net, p, batch_size=2)
    assert descriptor_of(net).kind == "penultimate_pooled"
    assert f.shape == (5, 8) and f.dtype == np.float32  # the network's width: no projection to 4096
    with torch.no_grad():
        x = torch.as_tensor(p).permute(0, 3, 1, 2).float() / 255
        expected = net.trunk(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f, mitosis_descriptors(net, p))  # deterministic, batch size aside
    assert net.training  # mode restored
    assert descriptor_width(net) == 8


def test_convolutional_classifier_gets_spatially_pooled_features():
    net = TinyFCN()
    p = _patches(3)
    f = mitosis_descriptors(net, p)
    with torch.no_grad():
        x = torch.as_tensor(p).permute(0, 3, 1, 2).float() / 255
        expected = net.body[:2](x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-6)


def test_mitosnet_descriptor_is_its_third_convolution_after_relu_4096_wide():
    model = _mitosnet()
    assert model.card.patch_size == 79  # 79 -conv4-> 76 -pool-> 38 -conv3-> 36 -pool-> 18 -conv3-> 16
    p = np.random.default_rng(1).integers(0, 256, (6, 79, 79, 3), dtype=np.uint8)
    f = mitosis_descriptors(model, p, batch_size=4)
    assert descriptor_of(model).kind == "mitosnet_conv3"
    assert f.shape == (6, 4096) and f.dtype == np.float32 and descriptor_width(model) == 4096
    # Manual forward: normalize, conv-relu-pool, conv-relu-pool, conv-relu -> (6, 16, 16, 16), channel-major.
    with torch.no_grad():
        x = model.normalize(torch.as_tensor(p).permute(0, 3, 1, 2).float() / 255)
        b = model.body
        h = b[7](b[6](b[5](b[4](b[3](b[2](b[1](b[0](x.clone()))))))))
    assert isinstance(b[6], nn.Conv2d) and isinstance(b[7], nn.ReLU) and tuple(h.shape) == (6, 16, 16, 16)
    np.testing.assert_allclose(f, h.flatten(1).numpy(), rtol=1e-5, atol=1e-6)
    assert (f >= 0).all() and (f > 0).any()  # post-ReLU
    assert model.training  # mode restored


def test_mitosnet_descriptors_are_not_a_projection_of_the_200_wide_layer():
    # A projection of the 200-filter fc layer has rank <= 200 over any batch; real conv3 volumes do not.
    model = _mitosnet()
    p = np.random.default_rng(2).integers(0, 256, (260, 79, 79, 3), dtype=np.uint8)
    f = mitosis_descriptors(model, p)
    assert np.linalg.matrix_rank(f.astype(np.float64)) > 200


def test_registered_mitosis_network_takes_63px_patches_padded_to_its_79px_input():
    model = _mitosnet()
    f = mitosis_descriptors(model, _patches(4))  # 63 px patches reflect-padded to the 79 px native size
    assert f.shape == (4, 4096) and np.isfinite(f).all()
    assert mitosis_descriptors(model, _patches(0)).shape == (0, 4096)


def _training_vectors(rng, d=16):
    centres = rng.normal(0, 5, (6, d))
    return {f"train{i}": centres[rng.integers(0, 6, 40)] + rng.normal(0, 0.3, (40, d)) for i in range(4)}, centres


def test_fit_is_on_training_vectors_and_new_slides_do_not_affect_each_other(rng):
    train, centres = _training_vectors(rng)
    fit = fit_deep_histogram(train, n_clusters=6, seed=0)
    assert fit.n_clusters == 6 and fit.dim == 16 and fit.meta["n_train_vectors"] == 160
    again = fit_deep_histogram(dict(reversed(list(train.items()))), n_clusters=6, seed=0)
    np.testing.assert_array_equal(fit.centers, again.centers)  # slide order does not matter
    new = {f"new{i}": centres[rng.integers(0, 6, 25)] + rng.normal(0, 0.3, (25, 16)) for i in range(3)}
    alone = fit.transform(new["new0"])[0]
    assert alone.sum() == pytest.approx(1.0) and alone.shape == (6,)
    # A slide's histogram is a function of its vectors and the frozen fit only.
    for others in ([], ["new1"], ["new1", "new2"]):
        batch = {k: fit.transform(new[k])[0] for k in ["new0", *others]}
        np.testing.assert_array_equal(batch["new0"], alone)
    # Vectors drawn around one centre fall in one bin.
    one = fit.transform(centres[2] + rng.normal(0, 0.1, (10, 16)))[0]
    assert one.max() == 1.0


def test_zero_mitoses_give_a_flagged_all_zero_histogram(rng):
    fit = fit_deep_histogram(_training_vectors(rng)[0], n_clusters=6)
    f = fit.features(np.zeros((0, 16)))
    assert f["deep_hist_missing"] == 1
    assert all(v == 0 for k, v in f.items() if k != "deep_hist_missing")
    assert list(f) == [x.name for x in deep_hist_dictionary(6)]


def test_save_and_load_without_pickle(tmp_path, rng):
    train = _training_vectors(rng)[0]
    fit = fit_deep_histogram(train, n_clusters=6, seed=3)
    d = fit.save(tmp_path / "deep")
    from safetensors.numpy import load_file

    arrays = load_file(str(d / "deep_hist.safetensors"))
    assert set(arrays) == {"mean", "scale", "centers"}
    meta = json.loads((d / "deep_hist.json").read_text())
    assert meta["n_clusters"] == 6 and meta["dim"] == 16 and meta["seed"] == 3
    loaded = DeepHistogram.load(d)
    np.testing.assert_array_equal(loaded.centers, fit.centers)
    # The standardization is the training vectors' per-dimension mean and std, saved and read back exactly.
    x = np.concatenate(list(train.values()))
    np.testing.assert_allclose(fit.mean, x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(fit.scale, x.std(axis=0), rtol=1e-4)
    np.testing.assert_array_equal(loaded.mean, fit.mean)
    np.testing.assert_array_equal(loaded.scale, fit.scale)
    v = rng.normal(0, 5, (50, 16))
    np.testing.assert_array_equal(loaded.labels(v), fit.labels(v))
    # Same labels as the scikit-learn pipeline the arrays came from.
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=6, n_init=1).fit(np.r_[fit.centers, fit.centers])
    km.cluster_centers_ = fit.centers
    np.testing.assert_array_equal(km.predict((v - fit.mean) / fit.scale), fit.labels(v))


def test_errors_name_the_problem(tmp_path, rng):
    with pytest.raises(FeatureError, match="cannot make 500 clusters"):
        fit_deep_histogram(_training_vectors(rng)[0], n_clusters=500)
    with pytest.raises(FeatureError):
        fit_deep_histogram({"a": np.zeros((0, 4))})
    with pytest.raises(FeatureFileError) as e:
        DeepHistogram.load(tmp_path / "nowhere")
    assert isinstance(e.value, OSError) and "deep_hist.safetensors" in str(e.value)
    fit = fit_deep_histogram(_training_vectors(rng)[0], n_clusters=6)
    d = fit.save(tmp_path / "bad")
    (d / "deep_hist.json").write_text(json.dumps({"format_version": 2, "n_clusters": 7, "dim": 16}))
    with pytest.raises(FeatureFileError, match="7 clusters"):
        DeepHistogram.load(d)
    (d / "deep_hist.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FeatureFileError, match="safetensors"):
        DeepHistogram.load(d)
    with pytest.raises(FeatureError, match=r"\(n, 16\)"):
        fit.transform(np.zeros((3, 5)))
