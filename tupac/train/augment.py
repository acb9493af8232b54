"""Batch augmentation on tensors: flips, 90-degree rotations, stain jitter in HED optical density,
focus blur, JPEG compression.

Everything runs vectorized on the device the batch lives on, drawing from an explicit
``torch.Generator`` so that a seed fixes the result.

Stain jitter (Tellez et al. 2018 style): RGB -> optical density ``OD = -log((I + 1) / 256)`` (Beer-
Lambert; the +1 keeps black finite) -> stain concentrations ``C = OD @ inv(M)`` with the Ruifrok-
Johnston H, E, DAB matrix ``M`` (as in scikit-image) -> ``C' = C * alpha + beta`` per image and stain
-> back to RGB. With ``alpha = 1, beta = 0`` it is the identity up to float rounding.

Focus blur: scanners differ in focus, and a slide is rarely sharp everywhere (issue 17's styles
blur by sigma 0.4-2.2 level-0 px). A chosen share of the images gets a Gaussian blur of a random
sigma; every image's separable kernel is its own, applied in one grouped convolution per axis.

JPEG compression: slides are JPEG-tiled (quality 60-92 in the styles, often 70-80 in scanners) while
the mitosis fields a detector trains on are lossless TIFFs, so the network never sees block
artifacts it meets on every slide. A chosen share of the images is encoded and decoded at a random
quality (libjpeg through Pillow, on the CPU, one image at a time: patches are small).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tupac.train.config import AugmentConfig

# Rows: optical density of hematoxylin, eosin, DAB (skimage.color.rgb_from_hed, rows normalized).
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 3, H, W) H, E, DAB concentrations (OD units)."""
    od = -torch.log((x * 255.0 + 1.0) / 256.0)
    m = _HED_FROM_RGB.to(x.device, x.dtype)
    return torch.einsum("nchw,cd->ndhw", od, m)


def hed_to_rgb(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`, clipped to [0, 1]."""
    m = _RGB_FROM_HED.to(c.device, c.dtype)
    od = torch.einsum("ndhw,dc->nchw", c, m)
    return ((256.0 * torch.exp(-od) - 1.0) / 255.0).clamp_(0.0, 1.0)


def stain_jitter(x: torch.Tensor, sigma: float, bias: float, generator: torch.Generator) -> torch.Tensor:
    """Scale and shift each image's H, E, D concentrations by random ``alpha``, ``beta``."""
    n = x.shape[0]
    alpha = 1.0 + (torch.rand(n, 3, 1, 1, generator=generator, device=x.device) * 2 - 1) * sigma
    beta = (torch.rand(n, 3, 1, 1, generator=generator, device=x.device) * 2 - 1) * bias
    return hed_to_rgb(rgb_to_hed(x) * alpha.to(x.dtype) + beta.to(x.dtype))


def flip_rotate(x: torch.Tensor, generator: torch.Generator, flips: bool = True, rot90: bool = True) -> torch.Tensor:
    """Per-sample random flips and quarter turns of square (N, C, S, S) images."""
    n = x.shape[0]
    draws = torch.randint(0, 4, (n, 3), generator=generator, device=x.device)
    if flips:
        x = torch.where((draws[:, 0] % 2 == 1).view(n, 1, 1, 1), x.flip(-1), x)
        x = torch.where((draws[:, 1] % 2 == 1).view(n, 1, 1, 1), x.flip(-2), x)
    if rot90:
        out = x.clone()
        for k in (1, 2, 3):
            idx = torch.nonzero(draws[:, 2] == k).flatten()
            if len(idx):
                out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
        x = out
    return x


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 2 * radius + 1) normalized 1-D Gaussian kernels; a sigma of 0 gives the identity kernel."""
    t = torch.arange(-radius, radius + 1, device=sigmas.device, dtype=sigmas.dtype)
    safe = sigmas.clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / safe) ** 2)
    k = torch.where(sigmas[:, None] > 1e-3, k, (t[None, :] == 0).to(k.dtype))
    return k / k.sum(dim=1, keepdim=True)


def focus_blur(x: torch.Tensor, max_sigma: float, share: float, generator: torch.Generator) -> torch.Tensor:
    """Blur a random ``share`` of the images of (N, C, H, W) ``x`` by a Gaussian of sigma uniform
    in (0, ``max_sigma``] pixels (the others are left as they are); borders are reflected."""
    n, c, h, w = x.shape
    blurred = torch.rand(n, generator=generator, device=x.device) < share
    sigmas = torch.rand(n, generator=generator, device=x.device) * max_sigma * blurred
    radius = max(1, min(math.ceil(3 * max_sigma), (min(h, w) - 1) // 2))
    k = gaussian_kernels(sigmas.to(x.dtype), radius).repeat_interleave(c, dim=0)  # (N*C, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def jpeg_compress(x: torch.Tensor, min_quality: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """Encode and decode a random ``share`` of the images of (N, 3, H, W) ``x`` in [0, 1] as JPEG at a
    quality uniform in [``min_quality``, 95]; the others are returned unchanged (the rounding to
    8 bits a JPEG implies is applied only to the compressed ones)."""
    import io

    import numpy as np
    from PIL import Image

    n = x.shape[0]
    dev = generator.device  # draws on the generator's device (the batch's), as the other steps do
    hit = (torch.rand(n, generator=generator, device=dev) < share).tolist()
    quality = torch.randint(min_quality, 96, (n,), generator=generator, device=dev).tolist()
    out = x.clone()
    for i in (i for i in range(n) if hit[i]):
        u8 = (x[i].detach().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality[i]))
        back = np.asarray(Image.open(buf).convert("RGB"))
        out[i] = torch.from_numpy(back.copy()).permute(2, 0, 1).to(x.device, x.dtype) / 255.0
    return out


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply ``cfg`` to a float batch (N, 3, S, S) in [0, 1]; returns a new tensor."""
    if cfg.flips or cfg.rot90:
        x = flip_rotate(x, generator, cfg.flips, cfg.rot90)
    if cfg.stain_sigma > 0 or cfg.stain_bias > 0:
        x = stain_jitter(x, cfg.stain_sigma, cfg.stain_bias, generator)
    # Last and only when asked: a config without blur draws exactly the random numbers it drew before.
    if cfg.blur_sigma > 0 and cfg.blur_share > 0:
        x = focus_blur(x, cfg.blur_sigma, cfg.blur_share, generator)
    if cfg.jpeg_min_quality > 0 and cfg.jpeg_share > 0:
        x = jpeg_compress(x, cfg.jpeg_min_quality, cfg.jpeg_share, generator)
    return x
