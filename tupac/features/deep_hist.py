"""Data-driven features: a bag-of-words histogram of the mitosis network's deep descriptors.

1. Each detected mitosis inside the slide's fringe patches (the paper's 50 patches) gives a patch
   centred on it, at the network's own size and magnification, that goes through the mitosis
   network. :func:`mitosis_descriptors` keeps, for MitosNet, its third convolution's feature volume
   after ReLU, 16 channels x 16 x 16 on the 79 px patch = 4,096 values, flattened channel-major: the
   paper's 4,096 attributes per mitosis, taken from a real 4,096-value layer. The paper's 63 x 63
   patch was its own network's input; MitosNet's is 79 px (its receptive field), and 63 px would
   give 12 x 12 x 16 = 2,304 values at that layer, so the network's patch is used.
   For another architecture (GoogLeNet, DenseNet, ... baselines) the descriptor is the spatially
   averaged input of its classifier layer at the network's own width (not 4,096; recorded as
   ``descriptor`` and ``dim`` in the fit's JSON). No random projection is applied anywhere.
2. :func:`fit_deep_histogram` standardizes each dimension (mean and std of the TRAINING slides'
   mitoses, saved with the fit) and fits k-means (MiniBatchKMeans, 200 clusters by default, fixed
   seed) on the training slides' standardized descriptors only.
3. :meth:`DeepHistogram.transform` assigns each descriptor of a slide to its nearest centre and returns
   the normalized histogram of cluster labels. It depends on that slide alone and the frozen fit, so a
   new slide's features never change when other new slides are added or removed. A slide without
   mitoses in its fringe patches gets an all-zero histogram and ``deep_hist_missing = 1``.

The fit is saved without pickle: the arrays (``mean``, ``scale``, ``centers``) in safetensors and
the settings in JSON (:meth:`DeepHistogram.save`, :meth:`DeepHistogram.load`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tupac.errors import FeatureError, FeatureFileError
from tupac.features.dictionary import Feature

__all__ = [
    "DeepHistogram",
    "deep_hist_dictionary",
    "fit_deep_histogram",
    "Descriptor",
    "descriptor_of",
    "descriptor_width",
    "mitosis_descriptors",
]

DEEP_DIM = 4096
ARRAYS_FILE = "deep_hist.safetensors"
META_FILE = "deep_hist.json"
# 2: descriptors are network activations (MitosNet conv3, 4,096), no longer a random projection.
FORMAT_VERSION = 2


def deep_hist_dictionary(n_clusters: int = 200) -> tuple[Feature, ...]:
    """Dictionary entries of the ``deep_hist_000`` .. ``deep_hist_{k-1}`` columns and their flag."""
    width = max(3, len(str(n_clusters - 1)))
    bins = tuple(
        Feature(
            f"deep_hist_{i:0{width}d}", "deep_hist", "fraction",
            f"Fraction of the mitoses in the slide's fringe patches whose standardized deep descriptor (MitosNet: "
            f"the 4,096 third-convolution activations on the 79 px patch centred on the mitosis; other networks: "
            f"pooled penultimate activations, width in deep_hist.json) is nearest to k-means centre {i} (of "
            f"{n_clusters}, fitted on the training slides' fringe mitoses); 0 for every bin without mitoses.",
        )
        for i in range(n_clusters)
    )
    flag = Feature("deep_hist_missing", "flags", "flag",
                   "1 when the slide has no detected mitosis in its fringe patches: the histogram is all zeros.")
    return bins + (flag,)


def _classifier_layer(model):
    """The last Linear or Conv2d module in definition order: the layer producing the class scores."""
    from torch import nn

    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    if last is None:
        raise FeatureError(f"{type(model).__name__} has no Linear or Conv2d layer to take features before")
    return last


def _mitosnet_conv3(model):
    """The module whose output is MitosNet's third convolution after its ReLU, or None for other nets.

    MitosNet's ``body`` is ``[conv, relu, pool] * 4, fc-conv, relu, (dropout), conv``; the third conv's
    ReLU is the module right after the third Conv2d (index 7 with the default kernels).
    """
    from torch import nn

    card = getattr(model, "card", None)
    body = getattr(model, "body", None)
    if getattr(card, "architecture", None) != "MitosNet" or not isinstance(body, nn.Sequential):
        return None
    convs = [i for i, m in enumerate(body) if isinstance(m, nn.Conv2d)]
    if len(convs) < 4 or not isinstance(body[convs[2] + 1], nn.ReLU):
        return None
    return body[convs[2] + 1]


@dataclass(frozen=True)
class Descriptor:
    """Which activations of a mitosis network describe one mitosis.

    Attributes
    ----------
    kind : str
        ``"mitosnet_conv3"``: MitosNet's third convolution after ReLU, ``(16, 16, 16)`` on its 79 px
        patch, flattened channel-major: 4,096 values. ``"penultimate_pooled"`` (any other network): the
        input of the classifier layer, spatially averaged when convolutional; its width is the
        network's (1,024 for GoogLeNet, 200 for an FCN's fc-conv, ...), NOT 4,096, and is used as is.
    layer : torch.nn.Module
        The hooked module (forward hook on its output for ``mitosnet_conv3``, pre-hook on its input
        for ``penultimate_pooled``).
    """

    kind: str
    layer: object

    @property
    def text(self) -> str:
        """One line for the feature dictionary and the fit's JSON."""
        if self.kind == "mitosnet_conv3":
            return ("MitosNet third-convolution activations after ReLU (16 channels x 16 x 16 on the network's "
                    "79 px patch centred on the mitosis), flattened channel-major")
        return ("spatially averaged input of the network's classifier layer (penultimate activations, the "
                "network's own width; no projection)")


def descriptor_of(model) -> Descriptor:
    """The :class:`Descriptor` of a mitosis network (MitosNet's third conv, else its pooled penultimate layer)."""
    conv3 = _mitosnet_conv3(model)
    if conv3 is not None:
        return Descriptor("mitosnet_conv3", conv3)
    return Descriptor("penultimate_pooled", _classifier_layer(model))


def _to_input(patches, size: int | None):
    import torch

    t = torch.as_tensor(np.asarray(patches)) if isinstance(patches, np.ndarray) else torch.as_tensor(patches)
    if t.ndim != 4:
        raise FeatureError(f"patches must be (N, H, W, 3) uint8 or (N, 3, H, W) float, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        if t.shape[-1] != 3:
            raise FeatureError(f"uint8 patches must be (N, H, W, 3), got {tuple(t.shape)}")
        t = t.permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and t.shape[-1] != size:
        # Patches should be read at the network's own size (feature_run does); a patch of another size is
        # centre-cropped when larger and reflect-padded when smaller, so it still describes the centred figure.
        d = size - t.shape[-1]
        if d > 0:
            lo = d // 2
            t = torch.nn.functional.pad(t, (lo, d - lo, lo, d - lo), mode="reflect")
        else:
            lo = (-d) // 2
            t = t[..., lo : lo + size, lo : lo + size]
    return t


def mitosis_descriptors(model, patches, *, batch_size: int = 256, device=None) -> np.ndarray:
    """Deep descriptors of mitosis patches: the activations :func:`descriptor_of` picks.

    For MitosNet (the default mitosis network) this is the paper's 4,096 attributes per mitosis: the
    third convolution's post-ReLU feature volume on the 79 px patch, 16 x 16 x 16 = 4,096 values
    (79 -conv4-> 76 -pool-> 38 -conv3-> 36 -pool-> 18 -conv3-> 16). The paper cut 63 x 63 patches
    for its own network; MitosNet's input is 79 px (its receptive field, see
    :mod:`tupac.models.mitosnet`), and a 63 px input would give 12 x 12 at that layer (2,304 values)
    and no 1 x 1 output, so the descriptor uses the patch the network was trained on. Other
    architectures give their spatially pooled penultimate activations at their own width (see
    :class:`Descriptor`); nothing is projected to 4,096.

    Parameters
    ----------
    model : torch.nn.Module
        The mitosis network. A tupac model (with ``card`` and ``logits``) is run through ``logits`` so
        that it normalizes its own input, with patches brought to ``card.patch_size``; any other module
        is called directly.
    patches : ndarray or tensor
        ``(N, H, W, 3)`` uint8 RGB (best at the card's patch size and mpp) or ``(N, 3, H, W)`` float in [0, 1].
    batch_size : int
        Patches per forward pass (the descriptors are gathered batch by batch, on the CPU).
    device : str or torch.device, optional
        Where to run (default: the model's device).

    Returns
    -------
    ndarray of float32, shape (N, D)
        D = 4,096 for MitosNet with its default options; the pooled penultimate width otherwise.
    """
    import torch

    desc = descriptor_of(model)
    card = getattr(model, "card", None)
    x = _to_input(patches, getattr(card, "patch_size", None))
    device = device or next(model.parameters()).device
    captured: list = []

    if desc.kind == "mitosnet_conv3":
        def hook(_module, _inputs, output):
            # clone: the ReLU is in place and must not alias a buffer a later layer could reuse.
            captured.append(output.detach().float().flatten(1).cpu().clone())

        handle = desc.layer.register_forward_hook(hook)
    else:
        def hook(_module, inputs):
            a = inputs[0]
            captured.append((a.mean(dim=(2, 3)) if a.ndim == 4 else a.flatten(1)).detach().float().cpu())

        handle = desc.layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run = model.logits if (card is not None and hasattr(model, "logits")) else model
            for i in range(0, len(x), batch_size):
                run(x[i : i + batch_size].to(device))
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        return np.zeros((0, descriptor_width(model)), dtype=np.float32)
    return torch.cat(captured).numpy().astype(np.float32, copy=False)


def descriptor_width(model) -> int:
    """Width D of :func:`mitosis_descriptors` for ``model`` (one forward pass of a blank patch when needed)."""
    desc = descriptor_of(model)
    if desc.kind == "penultimate_pooled":
        return int(getattr(desc.layer, "in_channels", None) or desc.layer.in_features)
    size = int(model.card.patch_size)
    return int(mitosis_descriptors(model, np.zeros((1, size, size, 3), np.uint8)).shape[1])


@dataclass(frozen=True)
class DeepHistogram:
    """A fitted scaler + k-means codebook that turns a slide's mitosis vectors into a histogram.

    Attributes
    ----------
    mean, scale : ndarray of float64, shape (d,)
        StandardScaler ``mean_`` and ``scale_`` (zero-variance dimensions have scale 1).
    centers : ndarray of float64, shape (k, d)
        k-means ``cluster_centers_`` in standardized space.
    meta : dict
        Settings and provenance (seed, number of training slides and vectors, their ids' hash).
    """

    mean: np.ndarray
    scale: np.ndarray
    centers: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.scale.shape != (d,) or self.centers.ndim != 2 or self.centers.shape[1] != d:
            raise FeatureError(
                f"inconsistent deep histogram: mean {self.mean.shape}, scale {self.scale.shape}, centers {self.centers.shape}"
            )

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    def labels(self, vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Nearest centre of each vector ``(n, d)`` -> ``(n,)`` int64, in chunks to bound memory."""
        v = self._check(vectors)
        c = self.centers
        c2 = (c * c).sum(axis=1)
        out = np.empty(len(v), dtype=np.int64)
        for i in range(0, len(v), chunk):
            z = (v[i : i + chunk] - self.mean) / self.scale
            # |z - c|² = |z|² - 2 z.c + |c|²; |z|² does not change the argmin.
            out[i : i + chunk] = np.argmin(c2[None, :] - 2.0 * z @ c.T, axis=1)
        return out

    def transform(self, vectors: np.ndarray) -> tuple[np.ndarray, bool]:
        """Normalized histogram ``(k,)`` float64 of one slide's vectors, and whether it is missing (no vectors)."""
        v = self._check(vectors)
        if len(v) == 0:
            return np.zeros(self.n_clusters), True
        counts = np.bincount(self.labels(v), minlength=self.n_clusters).astype(np.float64)
        return counts / counts.sum(), False

    def features(self, vectors: np.ndarray) -> dict[str, float]:
        """The ``deep_hist_*`` columns of one slide (see :func:`deep_hist_dictionary`)."""
        hist, missing = self.transform(vectors)
        names = [f.name for f in deep_hist_dictionary(self.n_clusters)]
        out = dict(zip(names[:-1], hist.tolist()))
        out["deep_hist_missing"] = float(missing)
        return out

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float64)
        if v.size == 0:
            return v.reshape(0, self.dim)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise FeatureError(f"expected deep feature vectors of shape (n, {self.dim}), got {v.shape}")
        return v

    def save(self, directory: str | Path) -> Path:
        """Write ``deep_hist.safetensors`` (mean, scale, centers) and ``deep_hist.json``; returns the directory."""
        from safetensors.numpy import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file(
            {"mean": np.ascontiguousarray(self.mean), "scale": np.ascontiguousarray(self.scale),
             "centers": np.ascontiguousarray(self.centers)},
            str(d / ARRAYS_FILE),
        )
        meta = dict(self.meta, format_version=FORMAT_VERSION, n_clusters=self.n_clusters, dim=self.dim)
        (d / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> DeepHistogram:
        """Read a fit written by :meth:`save`; :class:`FeatureFileError` names the file when it is missing or malformed."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        d = Path(directory)
        arrays_path, meta_path = d / ARRAYS_FILE, d / META_FILE
        for p in (arrays_path, meta_path):
            if not p.is_file():
                raise FeatureFileError(p, "missing (expected a deep histogram fit saved by DeepHistogram.save)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FeatureFileError(meta_path, f"not valid JSON: {e}") from e
        try:
            arrays = load_file(str(arrays_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise FeatureFileError(arrays_path, f"not a readable safetensors file: {e}") from e
        missing = {"mean", "scale", "centers"} - set(arrays)
        if missing:
            raise FeatureFileError(arrays_path, f"lacks arrays {sorted(missing)}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise FeatureFileError(meta_path, f"format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        try:
            fit = cls(arrays["mean"], arrays["scale"], arrays["centers"], meta)
        except FeatureError as e:
            raise FeatureFileError(arrays_path, str(e)) from e
        if (meta.get("n_clusters"), meta.get("dim")) != (fit.n_clusters, fit.dim):
            raise FeatureFileError(
                meta_path, f"says {meta.get('n_clusters')} clusters of dim {meta.get('dim')}, arrays hold "
                f"{fit.n_clusters} of dim {fit.dim}"
            )
        return fit


def fit_deep_histogram(
    train_vectors: Mapping[str, np.ndarray],
    *,
    n_clusters: int = 200,
    seed: int = 0,
    batch_size: int = 4096,
    max_iter: int = 100,
) -> DeepHistogram:
    """Fit the per-dimension standardization and k-means on the training slides' mitosis descriptors.

    Parameters
    ----------
    train_vectors : mapping of slide id -> ndarray (n_i, d)
        Deep descriptors (:func:`mitosis_descriptors`) of the mitoses in each TRAINING slide's fringe
        patches (never new slides: no leakage). Each dimension is standardized with the mean and
        population std of these vectors (a constant dimension, e.g. a unit that never fires, keeps
        scale 1), saved as ``mean`` and ``scale`` with the centres.
    n_clusters : int
        Number of k-means clusters (histogram bins), 200 in the paper.
    seed : int
        Seed of MiniBatchKMeans.
    batch_size, max_iter : int
        MiniBatchKMeans settings.

    Returns
    -------
    DeepHistogram
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.preprocessing import StandardScaler

    ids = sorted(train_vectors)
    # float32 halves the memory of the stacked training vectors (n x 4096); the fit is saved in float64.
    mats = [np.asarray(train_vectors[i], dtype=np.float32) for i in ids]
    mats = [m for m in mats if m.size]
    if not mats:
        raise FeatureError("no training vectors: the deep histogram needs mitoses on the training slides")
    dims = {m.shape[1] for m in mats if m.ndim == 2}
    if len(dims) != 1 or any(m.ndim != 2 for m in mats):
        raise FeatureError(f"training vectors must all be (n, d) with one d, got widths {sorted(dims)}")
    x = np.concatenate(mats)
    if len(x) < n_clusters:
        raise FeatureError(f"{len(x)} training vectors cannot make {n_clusters} clusters; lower n_clusters")
    scaler = StandardScaler().fit(x)
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, batch_size=batch_size, max_iter=max_iter, n_init=3)
    km.fit(scaler.transform(x))
    meta = {
        "seed": seed,
        "n_train_slides": len(ids),
        "n_train_vectors": int(len(x)),
        "train_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }
    return DeepHistogram(scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64),
                         km.cluster_centers_.astype(np.float64), meta)
