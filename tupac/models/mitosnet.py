"""MitosNet: the small fully convolutional mitosis detector, and why each choice.

Reference (the authors' public code): 64x64 input; four convolutions with 16 filters each (kernels
4x4, 3x3, 3x3, 3x3, no padding, ReLU), each followed by a 2x2 max-pool in ceil mode; a 3x3 convolution
with 200 filters acting as the fully connected layer; a 1x1 convolution to two classes; softmax.

- **Few, fine layers.** A mitotic figure is 5-10 um, 20-40 px at 0.25 um/px. Deep stacks of wide
  layers (GoogLeNet, DenseNet) pool a figure of that size into a few activations of a 7x7 map and
  "distill it away"; four narrow layers keep it resolved while still seeing the nuclear context. 16
  filters per layer: the signal is mostly shape and darkness of one nucleus; about 45 k parameters,
  which trains from scratch on a few thousand candidate patches.
- **4x4 first kernel** (from the reference): with the odd 79 px patch it gives an even 76 px map, so
  the first pool divides evenly (see the patch size below).
- **No padding.** As in LocNet: with valid convolutions each heatmap cell is exactly the patch
  classifier on its window, so the detector's heatmap over a whole 2k x 2k field equals what the
  training patches taught it, with no border artifacts.
- **Why 79 px, not 64, and the ceil-mode subtlety.** The receptive field of this stack is 79 px
  (stride 16). At 64 px the reference only reaches a 1x1 output because every ceil-mode pool emits a
  last window that hangs over the edge (61 -> 31, 29 -> 15, 13 -> 7, 5 -> 3): the 64 px classifier
  computes maxima over *partial* windows that, inside a larger image, would include 15 more pixels.
  Its patch answers therefore differ from the FCN's cells on a field. At 79 px every pooled map is
  even (76, 36, 16, 6): ceil and floor pooling agree, no window is partial, and the FCN is exactly the
  patch classifier. ``ceil_mode`` stays an option (default True, as in the reference); on a large
  input a ceil-mode pool may add one last cell from a partial window, which ``heatmap`` drops.
  79 px = 20 um: a mitotic figure plus a ring of context.
- **3x3 conv with 200 filters as the fully connected layer** over the last 3x3 map, then a 1x1
  convolution to two classes: the network stays convolutional end to end. Softmax gives the
  probability whose local maxima become detections.
"""

from __future__ import annotations

from torch import nn

from tupac.errors import ModelError
from tupac.models.base import FCNModel, init_vgg_style
from tupac.models.receptive import geometry
from tupac.models.registry import DEFAULT_MEAN, DEFAULT_STD, make_card, parse_options, register_model

_DEFAULTS = {
    "width": 16,
    "kernels": [4, 3, 3, 3],
    "fc_width": 200,
    "ceil_mode": True,
    "dropout": 0.0,
    "mean": list(DEFAULT_MEAN),
    "std": list(DEFAULT_STD),
}


class MitosNet(FCNModel):
    """MitosNet (see the module docstring for each design choice)."""

    def __init__(self, card, body: nn.Sequential) -> None:
        super().__init__(card, exact=True)
        self.body = body
        init_vgg_style(body)


@register_model("mitosnet", default_task="mitosis")
def mitosnet(task: str, **kw) -> MitosNet:
    """MitosNet: four 16-filter valid convs (4,3,3,3) + pools, 3x3x200 FC conv, 79 px, stride 16."""
    o = parse_options("mitosnet", kw, _DEFAULTS)
    layers: list[nn.Module] = []
    cin = 3
    for k in o["kernels"]:
        layers += [nn.Conv2d(cin, o["width"], k), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2, ceil_mode=o["ceil_mode"])]
        cin = o["width"]
    layers += [nn.Conv2d(cin, o["fc_width"], 3), nn.ReLU(inplace=True)]
    if o["dropout"] > 0:
        layers.append(nn.Dropout(o["dropout"]))
    layers.append(nn.Conv2d(o["fc_width"], 2, 1))
    body = nn.Sequential(*layers)
    geo = geometry(body)
    if geo.padded:
        raise ModelError("mitosnet: the body must be unpadded")
    card = make_card(
        name="mitosnet",
        architecture="MitosNet",
        task=task,
        patch_size=geo.receptive_field,
        geometry=geo,
        fully_convolutional=True,
        model_kwargs=kw,
        mean=o["mean"],
        std=o["std"],
    )
    return MitosNet(card, body)
