"""General features: the paper's two-network model, a frozen patch network feeding a small grade network.

1. A few patches of each slide (centred on its fringe patches) go through the frozen tumor or mitosis
   network; :func:`feature_volumes` keeps its penultimate convolutional feature volume (the input of
   its classifier layer, ``(C, h, w)`` per patch; MitosNet: 200 channels).
2. :class:`GradeNet`, the second network, standardizes the channels (mean/std of the training
   volumes), maps them with a 1x1 convolution + ReLU to 1,024 channels, averages those over the
   positions and patches of the slide (global average pool): that pooled 1,024-unit layer is the
   feature layer, and a linear head maps it to three grade logits. It is trained (full batch, Adam
   with weight decay, dropout on the feature layer, seeded) on the training slides' grades only.
   Every unit is its own filter pooled over the slide, so the layer is genuinely 1,024 wide; the
   earlier design (``GeneralConfig(width=64)``: a 64-channel conv, pooled, then Linear(64, 1024) +
   ReLU) made the 1,024 units a function of 64 pooled numbers, and stays available as an option.
3. Per slide the 1,024 pooled units and the 3 softmax probabilities are its general features.

Leakage: the network sees grades, so :func:`cross_fit` gives each training slide features from a
network fitted without it (out-of-fold, the folds of the predictive models' cross-validation:
:func:`tupac.data.folds.outer_splitter` over the training slides in label-file order), and gives new
slides features from a network fitted on all training slides. A new slide's features depend on that
slide and the frozen fit alone, never on other new slides.

Saved without pickle (:func:`save_grade_net`, :func:`load_grade_net`): weights in safetensors, the
settings in JSON. This module imports torch lazily and opens only the files it is handed.

Tracking: :func:`fit_grade_net` and :func:`cross_fit` report per-epoch metrics to an optional
:class:`tupac.train.tracking.Tracker` (in memory here; :mod:`tupac.tracking.general` sends them to
MLflow). Tracking only observes: without a tracker nothing extra runs, and with one the extra work is a
no-grad forward pass that touches neither the weights, the optimizer nor the random state, so the
features are the same numbers either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tupac.data.folds import outer_splitter
from tupac.errors import FeatureError, FeatureFileError
from tupac.features.deep_hist import _classifier_layer
from tupac.features.dictionary import Feature

__all__ = [
    "GeneralConfig",
    "general_dictionary",
    "feature_volumes",
    "fit_grade_net",
    "general_features",
    "cross_fit",
    "save_grade_net",
    "load_grade_net",
    "volumes_hash",
    "folds_hash",
]

GENERAL_DIM = 1024
GRADES = (1, 2, 3)
WEIGHTS_FILE = "general.safetensors"
META_FILE = "general.json"
# 2: ``width`` 0 (no bottleneck: the 1x1 conv is the dim-wide layer) is possible; version 1 files always had
# width > 0 and still load as that bottleneck design.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class GeneralConfig:
    """Settings of the grade network and its training.

    Attributes
    ----------
    width : int
        0 (default): no bottleneck, the 1x1 convolution has ``dim`` channels and its pooled output is
        the feature layer. A positive value gives the earlier design: a ``width``-channel 1x1
        convolution, pooled, then Linear(width, dim) + ReLU (the dim units then carry only ``width``
        pooled numbers).
    dim : int
        Units of the pooled feature layer (1,024 in the paper).
    epochs : int
        Full-batch training epochs (slides are few, so each epoch is one step).
    lr, weight_decay : float
        Adam settings (``weight_decay``: L2 penalty on every weight, against overfitting a small cohort).
    dropout : float
        Dropout probability on the feature layer during training (masks from a generator seeded with
        ``seed``, so training stays deterministic and does not touch torch's global random state).
    seed : int
        Seed of the initialization and the dropout masks (training is deterministic on CPU given it).

    Notes
    -----
    Measured on a synthetic cohort (60 slides, 200-channel volumes of 4 patches x 6 x 6, the grade in
    5 channels at 20 % of positions), out-of-fold accuracy and log loss of the grade probabilities,
    5 folds, seeds 0 / 1:

    - ``width=64, dropout=0, weight_decay=1e-4`` (the earlier design): 0.63 / 0.67, 1.12 / 0.80;
    - ``width=0, dropout=0, weight_decay=1e-4``: 0.63 / 0.65, 0.69 / 0.68;
    - defaults (``width=0, dropout=0.5, weight_decay=1e-3``): 0.78 / 0.80, 0.56 / 0.55.

    The 1,024-filter conv costs about 3x the bottleneck's training time there (151 s vs 54 s for
    the 12 fits, one thread); it grows with positions x channels x 1,024 per slide and epoch.
    """

    width: int = 0
    dim: int = GENERAL_DIM
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-3
    dropout: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if (min(self.dim, self.epochs) < 1 or self.width < 0 or not self.lr > 0 or self.weight_decay < 0
                or not 0 <= self.dropout < 1):
            raise FeatureError(f"invalid GeneralConfig {self!r}: dim and epochs >= 1, width >= 0, lr > 0, "
                               "weight_decay >= 0, 0 <= dropout < 1")


def general_dictionary(dim: int = GENERAL_DIM) -> tuple[Feature, ...]:
    """Dictionary entries of ``general_0000`` .. ``general_{dim-1}`` and ``general_prob_grade1..3``."""
    units = tuple(
        Feature(f"general_{i:04d}", "general", "1",
                f"Unit {i} of the grade network's {dim}-unit feature layer: one learned 1x1 filter (+ ReLU) over the "
                "standardized frozen-network feature volumes, averaged over the slide's patches and positions "
                "(out-of-fold for training slides, network fitted on all training slides for new ones).")
        for i in range(dim)
    )
    probs = tuple(
        Feature(f"general_prob_grade{g}", "general", "probability",
                f"Grade network probability of mitotic score {g} (out-of-fold for training slides).")
        for g in GRADES
    )
    return units + probs


def feature_volumes(model, patches: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Penultimate convolutional feature volumes of a frozen tupac network.

    Parameters
    ----------
    model : TupacModel
        Tumor or mitosis network (``card``, ``logits``; fully convolutional ones also ``dense_logits``).
    patches : ndarray of uint8, shape (N, H, W, 3)
        RGB at ``model.card.mpp``; H, W >= the card's patch size (exactly it for sliding-window models).
    batch_size : int
        Patches per forward pass.

    Returns
    -------
    ndarray of float32, shape (N, C, h, w)
        The input of the network's classifier layer (a vector input becomes ``(C, 1, 1)``).
    """
    import torch

    # Deferred: this pulls torch, which importing this module should not.
    from tupac.models import to_input

    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        raise FeatureError(f"patches must be (N, H, W, 3) uint8, got {patches.dtype} {patches.shape}")
    layer = _classifier_layer(model)
    run = model.dense_logits if getattr(model, "dense_logits", None) else model.logits
    captured: list = []

    def hook(_module, inputs):
        a = inputs[0].detach().float().cpu()
        captured.append(a if a.ndim == 4 else a.flatten(1)[:, :, None, None])

    handle = layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            for i in range(0, len(patches), batch_size):
                run(to_input(patches[i : i + batch_size]).to(device))
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise FeatureError("no patches: every slide needs at least one patch for the general features")
    # C order (oneDNN leaves channels-last strides): the same bytes and strides wherever the volumes travel.
    return np.ascontiguousarray(torch.cat(captured).numpy(), dtype=np.float32)


def _net_class():
    import torch
    from torch import nn

    class GradeNet(nn.Module):
        """Channel standardization, 1x1 conv + ReLU, global average pool (the feature layer), 3-way head.

        Parameters
        ----------
        in_channels : int
            Channels C of the frozen network's volumes.
        width : int
            0: ``fc`` is a 1x1 conv with ``dim`` channels, pooled: the feature layer. > 0: the earlier
            bottleneck, ``reduce`` a ``width``-channel 1x1 conv, pooled, then ``fc`` = Linear(width, dim) + ReLU.
        dim : int
            Width of the feature layer.
        """

        def __init__(self, in_channels: int, width: int, dim: int) -> None:
            super().__init__()
            self.width, self.dim = int(width), int(dim)
            self.register_buffer("mean", torch.zeros(in_channels))
            self.register_buffer("std", torch.ones(in_channels))
            # ``fc`` always makes the dim-wide feature layer: a 1x1 conv applied at every position (pooled
            # afterwards) without bottleneck, or Linear(width, dim) after the ``reduce`` conv and the pool.
            if width:
                self.reduce = nn.Conv2d(in_channels, width, 1)
                self.fc = nn.Linear(width, dim)
            else:
                self.reduce = None
                self.fc = nn.Conv2d(in_channels, dim, 1)
            self.head = nn.Linear(dim, len(GRADES))

        @property
        def conv(self):
            """The 1x1 convolution applied at every position before the pool."""
            return self.reduce if self.reduce is not None else self.fc

        @property
        def in_channels(self) -> int:
            return int(self.conv.in_channels)

        def embed(self, volumes: Sequence) -> torch.Tensor:
            """``(S, dim)`` feature layer of S slides, each ``(n_i, C, h, w)``."""
            # Every slide's patches in one convolution (slides: (n_i, C, h, w), h and w may differ between
            # slides only if their patches do, so group by spatial size), then a per-slide mean.
            sums = torch.zeros(len(volumes), self.conv.out_channels)
            counts = torch.tensor([float(v.shape[0]) for v in volumes])
            by_size: dict = {}
            for i, v in enumerate(volumes):
                by_size.setdefault(tuple(v.shape[2:]), []).append(i)
            for idx in by_size.values():
                z = torch.cat([volumes[i] for i in idx])
                z = (z - self.mean[None, :, None, None]) / self.std[None, :, None, None]
                per_patch = torch.relu(self.conv(z)).mean(dim=(2, 3))
                owner = torch.repeat_interleave(torch.tensor(idx), torch.tensor([volumes[i].shape[0] for i in idx]))
                sums = sums.index_add(0, owner, per_patch)
            pooled = sums / counts[:, None]
            return torch.relu(self.fc(pooled)) if self.reduce is not None else pooled

        def forward(self, volumes: Sequence) -> torch.Tensor:
            return self.head(self.embed(volumes))

    return GradeNet


def _dropout(emb, p: float, generator):
    """Inverted dropout of the feature layer ``(S, dim)`` with masks from ``generator`` (not torch's global RNG)."""
    import torch

    if p <= 0:
        return emb
    keep = (torch.rand(emb.shape, generator=generator) >= p).to(emb.dtype)
    return emb * keep / (1.0 - p)


class _one_thread:
    """Run torch on one thread inside the block: the grade network's tensors are small (a 1x1 conv of a few
    hundred positions per slide), on a busy machine OpenMP threads spinning over them cost several times the
    work itself, and one thread keeps the sums in one order, so features do not depend on the thread count."""

    def __enter__(self):
        import torch

        self._n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._n)
        return False


def _tensors(volumes: Sequence[np.ndarray]) -> list:
    import torch

    out = []
    for v in volumes:
        # C order whatever the layout handed in: oneDNN's convolutions leave channels-last volumes, which a copy
        # (pickling through Ray's object store, np.copy) turns into C order, and torch's 1x1 convolution sums
        # in another order on each layout; one layout makes a slide's features the same bits wherever it was read.
        v = np.ascontiguousarray(v, dtype=np.float32)
        if v.ndim != 4 or len(v) == 0:
            raise FeatureError(f"each slide's feature volumes must be (n >= 1, C, h, w), got {v.shape}")
        out.append(torch.from_numpy(v))
    if len({t.shape[1] for t in out}) != 1:
        raise FeatureError(f"feature volumes have different channel counts {sorted({t.shape[1] for t in out})}")
    return out


def fit_grade_net(
    volumes: Sequence[np.ndarray],
    grades: Sequence[int],
    config: GeneralConfig = GeneralConfig(),
    *,
    tracker=None,
    held_out: tuple[Sequence[np.ndarray], Sequence[int]] | None = None,
):
    """Train the grade network on training slides.

    Parameters
    ----------
    volumes : sequence of ndarray (n_i, C, h, w) float32
        Each training slide's frozen-network feature volumes.
    grades : sequence of int in {1, 2, 3}
        Their mitotic scores.
    config : GeneralConfig
    tracker : tupac.train.tracking.Tracker, optional
        Receives, per epoch (``step`` = 1 .. epochs), ``train_loss`` (the full-batch cross-entropy the
        epoch's step descended) and, with ``held_out``, ``heldout_loss`` and ``heldout_accuracy`` of the
        network after that step.
    held_out : (volumes, grades), optional
        Slides left out of this fit, evaluated per epoch for the tracker only (ignored without one).

    Returns
    -------
    torch.nn.Module
        The fitted ``GradeNet`` in eval mode (its channel mean/std are the training volumes').
    """
    import torch

    x = _tensors(volumes)
    y = np.asarray(grades, dtype=np.int64)
    if len(y) != len(x) or len(x) == 0 or not np.isin(y, GRADES).all():
        raise FeatureError(f"need one grade in {GRADES} per training slide, got {len(y)} grades for {len(x)} slides")
    held = None
    if tracker is not None and held_out is not None and len(held_out[0]):
        held = (_tensors(held_out[0]), torch.from_numpy(np.asarray(held_out[1], dtype=np.int64) - 1))
    flat = torch.cat([v.permute(1, 0, 2, 3).reshape(v.shape[1], -1) for v in x], dim=1)
    torch.manual_seed(config.seed)
    net = _net_class()(x[0].shape[1], config.width, config.dim)
    masks = torch.Generator().manual_seed(config.seed)
    net.mean.copy_(flat.mean(dim=1))
    net.std.copy_(flat.std(dim=1, unbiased=False).clamp_min(1e-6))
    target = torch.from_numpy(y - 1)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    net.train()
    with _one_thread():
        for epoch in range(1, config.epochs + 1):
            opt.zero_grad()
            logits = net.head(_dropout(net.embed(x), config.dropout, masks))
            loss = torch.nn.functional.cross_entropy(logits, target)
            loss.backward()
            opt.step()
            if tracker is not None:
                tracker.log_metrics(_epoch_metrics(net, float(loss.detach()), held), step=epoch)
    return net.eval()


def _epoch_metrics(net, train_loss: float, held) -> dict[str, float]:
    """``train_loss`` and, for held-out slides, their loss and accuracy (no grad: the fit is untouched;
    GradeNet's modules have no dropout or batch norm, the training dropout is applied by the loop with its
    own generator, so this forward pass draws no random numbers)."""
    import torch

    out = {"train_loss": train_loss}
    if held is not None:
        with torch.no_grad():
            logits = net(held[0])
        out["heldout_loss"] = float(torch.nn.functional.cross_entropy(logits, held[1]))
        out["heldout_accuracy"] = float((logits.argmax(dim=1) == held[1]).double().mean())
    return out


def general_features(net, volumes: Sequence[np.ndarray]) -> np.ndarray:
    """``(S, dim + 3)`` float64: each slide's pooled units, then its grade probabilities (finite)."""
    import torch

    x = _tensors(volumes)
    rows = []
    with torch.no_grad(), _one_thread():
        # One slide per forward pass: a batched matmul may round differently with the batch's size, and a
        # slide's features must not depend, even in the last bit, on which other slides were computed with it.
        for v in x:
            emb = net.embed([v])
            rows.append(torch.cat([emb, torch.softmax(net.head(emb), dim=1)], dim=1))
    out = torch.cat(rows).double().numpy()
    if not np.isfinite(out).all():
        raise FeatureError("grade network produced non-finite features")
    return out


@dataclass(frozen=True)
class CrossFit:
    """Result of :func:`cross_fit`: out-of-fold rows for training slides, rows for new slides, the final net
    (``fold_nets``: the network of each fold, which made that fold's out-of-fold rows)."""

    train: np.ndarray
    new: np.ndarray
    folds: np.ndarray
    net: object
    fold_nets: tuple = ()


def check_fold_sizes(grades: np.ndarray, n_splits: int, source: str = "the training slides") -> list[str]:
    """Check that the grades can be split into ``n_splits`` stratified folds, before any work.

    Stratified K-fold puts every grade into every fold when it has ``n_splits`` slides; a grade with
    fewer is allowed (some folds then train without it, which is said), but when no grade has
    ``n_splits`` slides scikit-learn cannot split at all.

    Parameters
    ----------
    grades : ndarray of int, shape (n_slides,)
    n_splits : int
    source : str
        Where the grades come from (the labels file), for the message.

    Returns
    -------
    list of str
        Notes on grades with fewer slides than folds.

    Raises
    ------
    FeatureError
        No grade has ``n_splits`` slides; the message gives the counts and the largest possible
        number of folds.
    """
    y = np.asarray(grades, dtype=np.int64)
    counts = {int(g): int((y == g).sum()) for g in GRADES}
    shown = ", ".join(f"grade {g}: {n}" for g, n in counts.items())
    most = max(counts.values(), default=0)
    if most < n_splits:
        fix = f"use --folds {most} or fewer, or label more slides" if most >= 2 else "label more slides"
        raise FeatureError(f"{source}: the general features' cross-fitting in {n_splits} folds needs at least "
                           f"{n_splits} slides of one grade, and has {shown} ({fix})")
    return [f"general: grade {g} has {n} training slide(s), fewer than the {n_splits} folds: some folds train "
            "without it" for g, n in counts.items() if 0 < n < n_splits]


def cross_fit(
    train_volumes: Sequence[np.ndarray],
    grades: Sequence[int],
    new_volumes: Sequence[np.ndarray],
    *,
    n_splits: int = 5,
    config: GeneralConfig = GeneralConfig(),
    tracker_for=None,
) -> CrossFit:
    """General features without leakage.

    Parameters
    ----------
    train_volumes, grades
        Training slides in label-file order (the order the predictive CV uses) and their grades.
    new_volumes
        Slides without labels.
    n_splits : int
        Folds of ``outer_splitter("grade", n_splits, config.seed)`` (StratifiedKFold, shuffled, seeded),
        the split :mod:`tupac.predict.cv` makes of the same slides.
    tracker_for : callable(name) -> Tracker, optional
        Called once per fit, ``"fold0"`` .. ``"fold{n_splits-1}"`` then ``"all"`` (every training slide);
        the fit reports its per-epoch metrics to the returned tracker (fold fits with their held-out
        fold's loss and accuracy) and ``fold``, ``n_train``, ``n_heldout`` to ``log_params``.

    Returns
    -------
    CrossFit
        ``train``: ``(n_train, dim + 3)`` out-of-fold; ``new``: ``(n_new, dim + 3)`` from the network fitted
        on every training slide; ``folds``: each training slide's fold (int64); ``net``: that network;
        ``fold_nets``: the fold networks.
    """
    import warnings

    y = np.asarray(grades, dtype=np.int64)
    check_fold_sizes(y, n_splits)
    oof = np.zeros((len(y), config.dim + len(GRADES)))
    folds = np.full(len(y), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # A grade with fewer slides than folds is allowed (sklearn warns); the predictive CV checks sizes itself.
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(outer_splitter("grade", n_splits, config.seed).split(np.zeros(len(y)), y))
    fold_nets = []
    for k, (tr, te) in enumerate(splits):
        tracker = _start(tracker_for, f"fold{k}", k, len(tr), len(te))
        held = [train_volumes[i] for i in te]
        net = fit_grade_net([train_volumes[i] for i in tr], y[tr], config, tracker=tracker, held_out=(held, y[te]))
        oof[te] = general_features(net, held)
        folds[te] = k
        fold_nets.append(net)
    tracker = _start(tracker_for, "all", "all", len(y), 0)
    final = fit_grade_net(train_volumes, y, config, tracker=tracker)
    new = general_features(final, new_volumes) if len(new_volumes) else np.zeros((0, oof.shape[1]))
    return CrossFit(oof, new, folds, final, tuple(fold_nets))


def _start(tracker_for, name: str, fold, n_train: int, n_heldout: int):
    if tracker_for is None:
        return None
    tracker = tracker_for(name)
    tracker.log_params({"fold": fold, "n_train": n_train, "n_heldout": n_heldout})
    return tracker


def save_grade_net(net, directory: str | Path, meta: dict) -> Path:
    """Write ``general.safetensors`` (weights and channel statistics) and ``general.json`` (shape, settings, ``meta``)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(d / WEIGHTS_FILE))
    shape = {"in_channels": net.in_channels, "width": int(net.width), "dim": int(net.dim)}
    doc = dict(meta, format_version=FORMAT_VERSION, **shape)
    (d / META_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return d


def load_grade_net(directory: str | Path):
    """Read a network written by :func:`save_grade_net`: ``(net, meta)``; FeatureFileError names a bad file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    wpath, mpath = d / WEIGHTS_FILE, d / META_FILE
    for p in (wpath, mpath):
        if not p.is_file():
            raise FeatureFileError(p, "missing (expected a grade network saved by `tupac features --labels ...`)")
    try:
        meta = json.loads(mpath.read_text())
        net = _net_class()(int(meta["in_channels"]), int(meta["width"]), int(meta["dim"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise FeatureFileError(mpath, f"not a grade-network description: {e}") from None
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise FeatureFileError(mpath, f"format_version {meta.get('format_version')!r}, expected one of "
                                      f"{READABLE_VERSIONS}")
    try:
        net.load_state_dict(load_file(str(wpath)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise FeatureFileError(wpath, f"weights do not fit the description in {META_FILE}: {e}") from None
    return net.eval(), meta


def ids_hash(ids: Sequence[str]) -> str:
    """SHA-256 of the newline-joined slide ids (provenance of a fit)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def volumes_hash(volumes: Sequence[np.ndarray]) -> str:
    """SHA-256 of the slides' feature volumes (shapes and float32 bytes, in order): the grade network's input."""
    h = hashlib.sha256()
    for v in volumes:
        a = np.ascontiguousarray(v, dtype=np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def folds_hash(ids: Sequence[str], folds: Sequence[int]) -> str:
    """SHA-256 of the ``slide_id,fold`` lines: which slide was held out by which fold network."""
    return hashlib.sha256("\n".join(f"{s},{int(k)}" for s, k in zip(ids, folds)).encode()).hexdigest()


def config_dict(config: GeneralConfig) -> dict:
    return asdict(config)
