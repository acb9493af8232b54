"""Fixtures for the stain tests: Beer-Lambert phantom tiles from several 'centers' and a fake
SlideReader over a numpy image (a fake of tupac's own protocol, for unit tests of fit_slide)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

# Unit OD vectors (rows: R, G, B absorbance) per center; center 0 is close to Ruifrok's H&E.
CENTERS = {
    "ref": dict(h=(0.65, 0.70, 0.29), e=(0.07, 0.99, 0.11), h_gain=1.0, e_gain=1.0, glass=(246, 244, 245)),
    "A": dict(h=(0.55, 0.78, 0.30), e=(0.12, 0.95, 0.28), h_gain=1.35, e_gain=0.8, glass=(250, 246, 238)),
    "B": dict(h=(0.74, 0.62, 0.26), e=(0.02, 0.90, 0.42), h_gain=0.75, e_gain=1.4, glass=(238, 240, 246)),
    "C": dict(h=(0.62, 0.74, 0.26), e=(0.20, 0.96, 0.16), h_gain=1.1, e_gain=0.75, glass=(244, 238, 242)),
}


@dataclass
class Phantom:
    rgb: np.ndarray  # (h, w, 3) uint8
    nuclei: np.ndarray  # (h, w) bool
    tissue: np.ndarray  # (h, w) bool


def concentrations(shape: tuple[int, int], seed: int, nucleus_r: float = 4.0, background: float = 0.25):
    """Hematoxylin and eosin concentration maps of a drawn tissue scene (float32) + truth masks."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    # tissue: a smooth random field thresholded, so that about (1 - background) is tissue
    field = ndi.gaussian_filter(rng.normal(size=shape), min(h, w) / 10)
    tissue = field > np.quantile(field, background)
    stroma = ndi.gaussian_filter(rng.normal(size=shape), 3.0)
    # stroma: dense eosin with a faint hematoxylin counterstain, as in real H&E
    c_e = np.where(tissue, 1.1 + 1.2 * stroma, 0.0).clip(0.1, None) * tissue
    c_h_stroma = np.where(tissue, 0.12 + 0.6 * ndi.gaussian_filter(rng.normal(size=shape), 2.0), 0.0).clip(0, None)
    n_nuc = int(h * w * 0.9 / (np.pi * (3 * nucleus_r) ** 2))
    cy, cx = rng.uniform(0, h, n_nuc), rng.uniform(0, w, n_nuc)
    nuclei = np.zeros(shape, dtype=bool)
    for y0, x0 in zip(cy, cx):  # drawing the scene disk by disk, each in its own small window
        r = nucleus_r * rng.uniform(0.8, 1.3)
        ya, yb = max(int(y0 - r), 0), min(int(y0 + r) + 2, h)
        xa, xb = max(int(x0 - r), 0), min(int(x0 + r) + 2, w)
        disk = (yy[ya:yb, xa:xb] - y0) ** 2 + (xx[ya:yb, xa:xb] - x0) ** 2 <= r * r
        nuclei[ya:yb, xa:xb] |= disk
    nuclei &= tissue
    texture = ndi.gaussian_filter(rng.normal(size=shape), 1.0)
    c_h = np.where(nuclei, (1.0 + 1.5 * texture).clip(0.2, None), c_h_stroma)
    c_e = np.where(nuclei, 0.25 * c_e, c_e)
    return c_h.astype(np.float32), c_e.astype(np.float32), nuclei, tissue


def render(c_h, c_e, center: str, seed: int) -> np.ndarray:
    """Beer-Lambert: ``I = glass * exp(-(c_h h + c_e e))`` with the center's stains, + noise."""
    p = CENTERS[center]
    h = np.asarray(p["h"]) / np.linalg.norm(p["h"])
    e = np.asarray(p["e"]) / np.linalg.norm(p["e"])
    od = (c_h * p["h_gain"])[..., None] * h + (c_e * p["e_gain"])[..., None] * e
    rgb = np.asarray(p["glass"], dtype=np.float64) * np.exp(-od)
    rgb += np.random.default_rng(seed + 1000).normal(0, 2.0, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def phantom(center: str, seed: int, shape=(256, 256), **kw) -> Phantom:
    c_h, c_e, nuclei, tissue = concentrations(shape, seed, **kw)
    return Phantom(render(c_h, c_e, center, seed), nuclei, tissue)


class FakeReader:
    """A SlideReader over an in-memory image (level 0 at ``mpp``), with integer-factor
    downsampling by block means; enough of the protocol for fit_slide."""

    backend = "fake"

    def __init__(self, image: np.ndarray, mpp: float = 0.5) -> None:
        self.image = image
        self._mpp = mpp
        self.path = Path("fake.svs")
        self.reads: list[tuple[tuple[int, int], tuple[int, int], float]] = []

    @property
    def dimensions(self):
        return (self.image.shape[1], self.image.shape[0])

    @property
    def level_dimensions(self):
        return (self.dimensions,)

    @property
    def level_downsamples(self):
        return (1.0,)

    @property
    def mpp(self):
        return self._mpp

    objective_power = None
    vendor = None

    def read_region_mpp(self, xy_l0, size, mpp, allow_upsample=False):
        self.reads.append((tuple(xy_l0), tuple(size), mpp))
        f = int(round(mpp / self._mpp))
        assert f >= 1 and abs(f * self._mpp - mpp) < 1e-6, "fake reader: integer downsampling only"
        x, y = xy_l0
        w, h = size
        out = np.full((h * f, w * f, 3), 255, dtype=np.uint8)
        crop = self.image[y : y + h * f, x : x + w * f]
        out[: crop.shape[0], : crop.shape[1]] = crop
        return out.reshape(h, f, w, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)

    def read_region(self, xy_l0, level, size):
        return self.read_region_mpp(xy_l0, size, self._mpp)

    def read_regions(self, xys_l0, level, size):
        return np.stack([self.read_region(xy, level, size) for xy in xys_l0])

    def thumbnail(self, mpp):
        f = int(round(mpp / self._mpp))
        h, w = self.image.shape[0] // f, self.image.shape[1] // f
        return self.read_region_mpp((0, 0), (w, h), mpp)

    def close(self):
        pass


@dataclass
class Mask:
    mask: np.ndarray
    mpp: float


@pytest.fixture(scope="session")
def centers_tiles():
    """Three centers (A, B, C) x two tiles each, and a reference-center template."""
    tiles = {c: [phantom(c, seed=10 * i + ord(c)) for i in range(2)] for c in "ABC"}
    template = phantom("ref", seed=99, shape=(384, 384))
    return tiles, template
