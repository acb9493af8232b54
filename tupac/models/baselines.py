"""Baselines from torchvision backbones, trained from scratch (``weights=None``; nothing downloads).

The paper compares LocNet / MitosNet against established object-recognition CNNs used as
sliding-window patch classifiers whose output is assigned to the patch center: GoogLeNet (auxiliary
classifiers off), DenseNet-121, ResNet-18 and AlexNet, each with its last layer replaced by a 2-class
one. Their ``heatmap`` unfolds the input into patches at a chosen stride (default 16 px) and
classifies them in batches (:class:`tupac.models.base.PatchClassifier`); the card's receptive field
is the patch, because the global pooling makes every output depend on the whole patch.

``googlenet_fcn`` is the paper's fully convolutional GoogLeNet for mitosis: the torchvision trunk
(up to inception5b) with global average pooling + fc replaced by a convolution whose kernel covers
the last map of a native patch (2x2 at 64 px), so one pass over a field gives a stride-32 heatmap.
Its convolutions are padded, so unlike LocNet / MitosNet its cells are close to, not exactly, the
patch classifier's answers; its geometry (receptive field, offset) is computed analytically.

Default patch sizes are kept small so the baselines train on CPU: 96 px for tumor (at 1.0 um/px),
64 px for mitosis (at 0.25 um/px); ``patch_size=`` overrides. torchvision backbones need >= ~32 px
(AlexNet >= 63 px).
"""

from __future__ import annotations

from torch import nn

from tupac.errors import ModelError
from tupac.models.base import FCNModel, PatchClassifier
from tupac.models.receptive import Geometry, geometry, output_size
from tupac.models.registry import DEFAULT_MEAN, DEFAULT_STD, make_card, parse_options, register_model

_PATCH = {"tumor": 96, "mitosis": 64}
_MIN_PATCH = {"alexnet": 63}
_DEFAULTS = {"patch_size": None, "stride": 16, "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)}


def _backbone(arch: str) -> nn.Module:
    import torchvision.models as tvm

    if arch == "googlenet":
        return tvm.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=2)
    if arch == "densenet121":
        return tvm.densenet121(weights=None, num_classes=2)
    if arch == "resnet18":
        return tvm.resnet18(weights=None, num_classes=2)
    if arch == "alexnet":
        return tvm.alexnet(weights=None, num_classes=2)
    raise ModelError(f"unknown backbone {arch!r}")


class SlidingWindowCNN(PatchClassifier):
    """A torchvision classifier run as a sliding window (output assigned to the patch center)."""

    def __init__(self, card, net: nn.Module) -> None:
        super().__init__(card)
        self.net = net


def _sliding(arch: str, title: str, task: str, kw: dict) -> SlidingWindowCNN:
    o = parse_options(arch, kw, _DEFAULTS)
    patch = int(o["patch_size"] or _PATCH[task])
    if patch < max(32, _MIN_PATCH.get(arch, 32)):
        raise ModelError(f"{arch}: patch_size {patch} is too small for this backbone (>= {_MIN_PATCH.get(arch, 32)})")
    if int(o["stride"]) < 1:
        raise ModelError(f"{arch}: stride must be >= 1, got {o['stride']}")
    geo = Geometry(receptive_field=patch, stride=int(o["stride"]), offset=(patch - 1) / 2, padded=False)
    card = make_card(
        name=arch,
        architecture=f"{title} (sliding window)",
        task=task,
        patch_size=patch,
        geometry=geo,
        fully_convolutional=False,
        model_kwargs=kw,
        mean=o["mean"],
        std=o["std"],
    )
    return SlidingWindowCNN(card, _backbone(arch))


@register_model("googlenet")
def googlenet(task: str, **kw) -> SlidingWindowCNN:
    """GoogLeNet (Inception v1, no auxiliary heads) as a sliding-window patch classifier."""
    return _sliding("googlenet", "GoogLeNet", task, kw)


@register_model("densenet121")
def densenet121(task: str, **kw) -> SlidingWindowCNN:
    """DenseNet-121 as a sliding-window patch classifier."""
    return _sliding("densenet121", "DenseNet-121", task, kw)


@register_model("resnet18")
def resnet18(task: str, **kw) -> SlidingWindowCNN:
    """ResNet-18 as a sliding-window patch classifier."""
    return _sliding("resnet18", "ResNet-18", task, kw)


@register_model("alexnet")
def alexnet(task: str, **kw) -> SlidingWindowCNN:
    """AlexNet as a sliding-window patch classifier."""
    return _sliding("alexnet", "AlexNet", task, kw)


class GoogLeNetFCN(FCNModel):
    """GoogLeNet trunk + convolutional head: a fully convolutional GoogLeNet (padded, so not exact)."""

    def __init__(self, card, body: nn.Sequential) -> None:
        super().__init__(card, exact=False)
        self.body = body


_TRUNK = (
    "conv1 maxpool1 conv2 conv3 maxpool2 inception3a inception3b maxpool3 inception4a inception4b "
    "inception4c inception4d inception4e maxpool4 inception5a inception5b"
).split()


@register_model("googlenet_fcn", default_task="mitosis")
def googlenet_fcn(task: str, **kw) -> GoogLeNetFCN:
    """Fully convolutional GoogLeNet: torchvision trunk, conv head over the last map, stride 32."""
    o = parse_options("googlenet_fcn", kw, {k: v for k, v in _DEFAULTS.items() if k != "stride"})
    patch = int(o["patch_size"] or _PATCH[task])
    if patch < 32:
        raise ModelError(f"googlenet_fcn: patch_size {patch} is too small (>= 32)")
    g = _backbone("googlenet")
    trunk = nn.Sequential(*[getattr(g, name) for name in _TRUNK])
    k = output_size(trunk, patch)  # the head covers the whole last map of a native patch
    body = nn.Sequential(trunk, nn.Dropout(0.2), nn.Conv2d(1024, 2, k))
    card = make_card(
        name="googlenet_fcn",
        architecture="GoogLeNet (fully convolutional)",
        task=task,
        patch_size=patch,
        geometry=geometry(body),
        fully_convolutional=True,
        model_kwargs=kw,
        mean=o["mean"],
        std=o["std"],
    )
    return GoogLeNetFCN(card, body)
