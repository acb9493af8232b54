"""LocNet: the fully convolutional tumor localizer, and why each choice.

Reference (the authors' public code, Caffe): 100x100 input; pairs of 3x3 convolutions (padding 1,
ReLU) with 32, 64, 96, 128, 256 filters; a 2x2 max-pool after each of the first four pairs; a 7x7
convolution with 256 filters acting as the fully connected layer; dropout 0.4; a 1x1 convolution to
two classes; softmax.

- **Why 7x7 in the reference.** 100 / 16 = 6.25, so with floor pooling the last map is 6x6 and a 7x7
  kernel would not fit. Caffe pools in *ceil* mode: 100 -> 50 -> 25 -> 13 -> 7, and the 7x7 kernel is
  exactly the "fully connected layer over the whole last map" that makes a 100 px patch give 1x1.
  That variant is kept as ``padding="same"`` (ceil-mode pools, 7x7 head, 100 px).
- **Why the default has no padding.** The point of an FCN is that one pass over a 1k x 1k tile gives
  the same answer the patch classifier would give on every window. With padded convolutions it does
  not: inside a large image each output sees real neighbors where the 100 px training patch saw zero
  padding (its true receptive field is 236 px, not 100), so the heatmap is computed from a different
  input distribution than the one trained on (the test suite measures the gap). With valid
  convolutions every output cell is *exactly* the patch classifier on its window, tiles stitch without
  seams, and the patch size is no longer a free choice: it is the receptive field.
- **Why 140 px and a 1x1 "FC" layer.** With valid 3x3 pairs and four 2x2 pools the receptive field is
  ``16 K + 124`` for a K x K head; the smallest patch is 140 px (K = 1): 140 -> 136 -> 68 -> 64 -> 32 ->
  28 -> 14 -> 10 -> 5 -> 1. The fifth pair already reduces the map to 1x1, so the fully connected layer
  is a 1x1 convolution with 256 filters. A 7x7 head would need 236 px patches (2.8x the pixels per
  training patch on CPU) for more context than cellularity at 10x needs (140 um already spans a few
  dozen nuclei). Every pooled map is even-sized at 140 px, so ceil and floor pooling agree.
- **Filters 32..256, pairs of 3x3.** Two 3x3 convolutions see 5x5 with fewer weights and an extra
  nonlinearity (VGG); widths grow as resolution falls so each stage costs about the same. About
  1.4 M parameters: small enough to train from scratch on a few hundred annotated regions.
- **Dropout 0.4** before the classifier, as in the reference: the one wide layer is where a small
  network over-fits. **Softmax** over two classes gives the probability used for the heatmap.
- Output stride 16 px at 1.0 um/px: a 16 um heatmap, finer than any tumor region boundary matters.
"""

from __future__ import annotations

from torch import nn

from tupac.errors import ModelError

from tupac.models.base import FCNModel, init_vgg_style
from tupac.models.receptive import geometry, output_size
from tupac.models.registry import DEFAULT_MEAN, DEFAULT_STD, make_card, parse_options, register_model

_DEFAULTS = {
    "padding": "valid",
    "widths": [32, 64, 96, 128, 256],
    "fc_width": 256,
    "dropout": 0.4,
    "patch_size": None,  # "same" only: the reference 100 px
    "mean": list(DEFAULT_MEAN),
    "std": list(DEFAULT_STD),
}


def _pair(cin: int, cout: int, pad: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=pad),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=pad),
        nn.ReLU(inplace=True),
    ]


def _trunk(widths, pad: int, ceil: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for i, w in enumerate(widths):
        layers += _pair(cin, w, pad)
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil))
        cin = w
    return nn.Sequential(*layers)


class LocNet(FCNModel):
    """LocNet (see the module docstring for each design choice)."""

    def __init__(self, card, body: nn.Sequential, exact: bool) -> None:
        super().__init__(card, exact=exact)
        self.body = body
        init_vgg_style(body)


@register_model("locnet", default_task="tumor")
def locnet(task: str, **kw) -> LocNet:
    """LocNet: fully convolutional localizer, valid 3x3 pairs (32-256), 140 px, stride 16."""
    o = parse_options("locnet", kw, _DEFAULTS)
    if o["padding"] not in ("valid", "same"):
        raise ModelError(f"locnet: padding must be 'valid' or 'same', got {o['padding']!r}")
    same = o["padding"] == "same"
    trunk = _trunk(o["widths"], pad=1 if same else 0, ceil=same)
    if same:
        patch = int(o["patch_size"] or 100)
        k = output_size(trunk, patch)  # 7 at 100 px: the head covers the whole last map
    else:
        k = 1
    head = [
        nn.Conv2d(o["widths"][-1], o["fc_width"], k),
        nn.ReLU(inplace=True),
        nn.Dropout(o["dropout"]),
        nn.Conv2d(o["fc_width"], 2, 1),
    ]
    body = nn.Sequential(*trunk, *head)
    geo = geometry(body)
    if not same:
        if o["patch_size"] not in (None, geo.receptive_field):
            raise ModelError(f"locnet: valid LocNet's patch is its receptive field {geo.receptive_field}")
        patch = geo.receptive_field
    card = make_card(
        name="locnet",
        architecture="LocNet" + (" (reference, padded)" if same else ""),
        task=task,
        patch_size=patch,
        geometry=geo,
        fully_convolutional=True,
        model_kwargs=kw,
        mean=o["mean"],
        std=o["std"],
    )
    return LocNet(card, body, exact=not same)
