"""Cell sprites: nuclei, mitotic figures and their look-alikes, as stain-amount stamps.

Every sprite is a float32 array of shape (3, s, s) with its center at ``(s // 2, s // 2)``:

- layer 0 ``h``: hematoxylin amount, combined with what is below by maximum (nuclei do not stack);
- layer 1 ``e``: eosin amount added on top (nucleoli, eosinophilic bodies);
- layer 2 ``clear``: multiplier (0..1, 1 = no effect) on the background cytoplasm/stroma stain, combined by
  minimum (a nucleus displaces cytoplasm; a mitosis sits in a clear halo).

Sizes are in level-0 pixels at 0.25 um/px: tumor nuclei 8-13 um, lymphocytes ~5 um, mitotic figures 8-15 um.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tupac.synth.style import DEFAULT, Style

MITOSIS_PHASES = ("prophase", "metaphase", "anaphase")


def _coords(s: int) -> tuple[np.ndarray, np.ndarray]:
    c = s // 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    return yy - c, xx - c


def _ellipse_depth(rng, s: int, a: float, b: float, angle: float, wobble: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed depth (pixels inside the boundary, negative outside) of an irregular ellipse, and its polar angle."""
    yy, xx = _coords(s)
    c, si = np.cos(angle), np.sin(angle)
    u = xx * c + yy * si
    v = -xx * si + yy * c
    theta = np.arctan2(v / b, u / a)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    k = np.arange(2, 6)[:, None, None]
    amp = rng.normal(0.0, wobble, size=(4, 1, 1)) / k
    phase = rng.uniform(0, 2 * np.pi, size=(4, 1, 1))
    radius = 1.0 + (amp * np.cos(k * theta[None] + phase)).sum(0)
    depth = (radius - rho) * min(a, b)
    return depth.astype(np.float32), theta


def _soft(depth: np.ndarray, width: float = 1.2) -> np.ndarray:
    return np.clip(0.5 + depth / (2 * width), 0.0, 1.0)


def _speckle(rng, s: int, sigma: float) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), sigma)
    return t / max(float(t.std()), 1e-6)


def _stack(h: np.ndarray, e: np.ndarray | None, clear: np.ndarray) -> np.ndarray:
    e = np.zeros_like(h) if e is None else e
    return np.stack([h, e, clear]).astype(np.float32)


def tumor_nucleus(rng: np.random.Generator, s: int | None = None, style: Style = DEFAULT) -> np.ndarray:
    """Large pleomorphic carcinoma nucleus: vesicular chromatin, membrane rim, nucleoli; some hyperchromatic.

    ``style`` sets the size, aspect, boundary irregularity, chromatin strength and hyperchromatic
    fraction; the default style draws exactly what this function always drew (same RNG calls).
    ``s`` (sprite edge, px) defaults to 64, more for nuclei scaled above 1.
    """
    if s is None:
        s = 64 if style.nucleus_scale <= 1.0 else 2 * int(np.ceil(32 * style.nucleus_scale + 2))
    # low + (high - low) * u: with scale 1.0 the same floats as the literal bounds.
    a = rng.uniform(18.0 * style.nucleus_scale, 30.0 * style.nucleus_scale)
    b = a * rng.uniform(*style.nucleus_aspect)
    depth, _ = _ellipse_depth(rng, s, a, b, rng.uniform(0, np.pi), style.nucleus_wobble)
    inside = _soft(depth)
    clumps = np.clip(_speckle(rng, s, 1.3) - 0.2, 0, None)
    yy, xx = _coords(s)
    if rng.random() < style.hyperchromatic_fraction:  # hyperchromatic, coarse: an intensity look-alike of mitoses
        h = inside * (rng.uniform(0.85, 1.15) + 0.3 * clumps)
        return _stack(h, None, 1.0 - 0.35 * inside)
    rim = np.exp(-((depth / 1.8) ** 2)) * (depth > -1.5)
    h = inside * (rng.uniform(0.50, 0.80) + style.chromatin * clumps) + 0.45 * rim * inside
    e = np.zeros_like(h)
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.normal(0, b * 0.25), rng.normal(0, a * 0.25)
        sig = rng.uniform(1.8, 3.0)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2)) * inside
        h = h + 0.55 * g
        e = e + 0.45 * g
    return _stack(h, e, 1.0 - 0.35 * inside)


def lymphocyte(rng: np.random.Generator, s: int = 32) -> np.ndarray:
    """Small, round, uniformly dark nucleus with scant cytoplasm (an intensity look-alike)."""
    r = rng.uniform(8.5, 12.0)
    depth, _ = _ellipse_depth(rng, s, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi), 0.05)
    inside = _soft(depth, 1.0)
    h = inside * (rng.uniform(1.25, 1.65) + 0.08 * _speckle(rng, s, 1.0))
    return _stack(h, None, 1.0 - 0.6 * _soft(depth + 1.0, 1.0))


def fibroblast(rng: np.random.Generator, angle: float, s: int = 64) -> np.ndarray:
    """Spindle-shaped stromal nucleus along ``angle`` (radians)."""
    a = rng.uniform(14.0, 28.0)
    b = rng.uniform(2.8, 5.0)
    depth, _ = _ellipse_depth(rng, s, a, b, angle + rng.normal(0, 0.15), 0.05)
    inside = _soft(depth, 1.0)
    return _stack(inside * rng.uniform(0.8, 1.2), None, 1.0 - 0.4 * inside)


def duct_nucleus(rng: np.random.Generator, s: int = 32) -> np.ndarray:
    """Normal luminal epithelial nucleus: small, oval, evenly stained."""
    a = rng.uniform(9.0, 13.0)
    depth, _ = _ellipse_depth(rng, s, a, a * rng.uniform(0.7, 0.95), rng.uniform(0, np.pi), 0.05)
    inside = _soft(depth)
    h = inside * (rng.uniform(0.6, 0.85) + 0.12 * _speckle(rng, s, 1.0)) + 0.25 * np.exp(-((depth / 1.5) ** 2)) * inside
    return _stack(h, None, 1.0 - 0.7 * inside)


def pyknotic_nucleus(rng: np.random.Generator, s: int = 48) -> np.ndarray:
    """Pyknotic tumor nucleus: shrunken (4.5-7 um), round, smooth, uniformly very dark, in a thin clear halo.

    The classic mitosis mimic: as dark as a figure but compact, with a smooth edge and no arms.
    """
    r = rng.uniform(9.0, 14.0)
    depth, _ = _ellipse_depth(rng, s, r, r * rng.uniform(0.8, 1.0), rng.uniform(0, np.pi), 0.04)
    inside = _soft(depth, 0.9)
    h = inside * (rng.uniform(1.9, 2.5) + 0.06 * _speckle(rng, s, 1.0))
    # Shrinkage leaves a clear space around the nucleus.
    return _stack(h, None, 1.0 - 0.55 * _soft(depth + rng.uniform(3.0, 6.0), 1.2))


def _splat(s: int, ys: np.ndarray, xs: np.ndarray, wts: np.ndarray, sigma: float) -> np.ndarray:
    img = np.zeros((s, s), np.float32)
    iy = np.clip(np.round(ys + s // 2).astype(int), 0, s - 1)
    ix = np.clip(np.round(xs + s // 2).astype(int), 0, s - 1)
    np.add.at(img, (iy, ix), wts)
    return ndimage.gaussian_filter(img, sigma)


def _hairs(rng, base_y, base_x, dir_angle, n, length, s):
    """Short chromosome arms sticking out of a figure: the 'hairy' edge of a mitosis."""
    idx = rng.integers(0, len(base_y), n)
    ang = dir_angle[idx] + rng.normal(0, 0.5, n)
    ln = rng.uniform(*length, n)
    t = rng.uniform(0.2, 1.0, (n, 6)) * ln[:, None]
    ys = base_y[idx, None] + np.sin(ang)[:, None] * t
    xs = base_x[idx, None] + np.cos(ang)[:, None] * t
    return _splat(s, ys.ravel(), xs.ravel(), np.full(ys.size, 1.0, np.float32), 0.9)


def mitosis(rng: np.random.Generator, phase: str, s: int | None = None, style: Style = DEFAULT) -> np.ndarray:
    """A mitotic figure: clumped hyperchromatic chromosomes with hairy projections, in a clear halo.

    Parameters
    ----------
    phase : {"prophase", "metaphase", "anaphase"}
        "prophase": irregular clumped ball; "metaphase": dense elongated plate (bar);
        "anaphase": two parallel bars.
    s : int, optional
        Sprite edge (px): 112, or 128 (the most ``MARGIN`` allows) for larger or thicker figures.
    style : Style
        Plate width, clump raggedness, number of arms, darkness and extent; the default style
        draws exactly what this function always drew (same RNG calls, same floats).
    """
    k_len = style.mitosis_scale
    if s is None:
        s = 112 if k_len <= 1.0 and style.mitosis_plate_width[1] <= 16.0 else 128
    theta = rng.uniform(0, np.pi)
    c, si = np.cos(theta), np.sin(theta)
    if phase == "prophase":
        r = rng.uniform(14.0 * k_len, 21.0 * k_len)
        n_c = rng.integers(9, 16)
        rr = r * np.sqrt(rng.uniform(0, 0.7, n_c))
        aa = rng.uniform(0, 2 * np.pi, n_c)
        cy, cx = rr * np.sin(aa), rr * np.cos(aa)
        k = rng.integers(6, 13, n_c)
        ys = np.repeat(cy, k) + rng.normal(0, style.mitosis_clump_spread, k.sum())
        xs = np.repeat(cx, k) + rng.normal(0, style.mitosis_clump_spread, k.sum())
        out_ang = np.arctan2(ys, xs)
        n_hair, hair_len = int(round(30 * style.mitosis_arms)), (4.0, 9.0)
    elif phase in ("metaphase", "anaphase"):
        bars = [0.0] if phase == "metaphase" else [-1.0, 1.0]
        lo, hi = (40.0, 60.0) if phase == "metaphase" else (32.0, 50.0)
        length = rng.uniform(lo * k_len, hi * k_len)
        width = rng.uniform(*style.mitosis_plate_width)
        # Thicker plates need wider anaphase gaps to stay two bars (factor 1 for the default widths).
        k_gap = max(1.0, sum(style.mitosis_plate_width) / 26.0)
        gap = rng.uniform(12.0 * k_gap, 19.0 * k_gap)
        ys_l, xs_l, ang_l = [], [], []
        for side in bars:
            n = rng.integers(90, 140)
            along = rng.uniform(-length / 2, length / 2, n) * rng.uniform(0.85, 1.0)
            across = rng.normal(0, width / 3.2, n) + side * gap
            xs_l.append(along * c - across * si)
            ys_l.append(along * si + across * c)
            # arms leave the plate on both sides (metaphase) or trail toward the midline (anaphase)
            normal = theta + np.pi / 2
            dirs = np.where(rng.random(n) < 0.5, normal, normal + np.pi) if side == 0 else np.full(n, normal + (np.pi if side > 0 else 0.0))
            ang_l.append(dirs)
        ys, xs, out_ang = np.concatenate(ys_l), np.concatenate(xs_l), np.concatenate(ang_l)
        n_hair, hair_len = int(round(36 * style.mitosis_arms)), (4.0, 10.0)
    else:
        raise ValueError(f"unknown mitosis phase {phase!r}; expected one of {MITOSIS_PHASES}")
    body = _splat(s, ys, xs, rng.uniform(0.6, 1.4, ys.size).astype(np.float32), 1.7)
    hair = _hairs(rng, ys, xs, out_ang, n_hair, hair_len, s)
    dens = body / max(float(body.max()), 1e-6) + 0.9 * hair / max(float(hair.max()), 1e-6)
    hmax = rng.uniform(*style.mitosis_darkness)
    h = hmax * (1.0 - np.exp(-3.5 * dens))
    h[h < 0.04] = 0
    halo = np.clip(ndimage.gaussian_filter((dens > 0.12).astype(np.float32), 7.0) * 3.0, 0, 1)
    return _stack(h, None, 1.0 - 0.6 * halo)


def apoptotic_body(rng: np.random.Generator, s: int = 64) -> np.ndarray:
    """Shrunken hypereosinophilic cell with smooth, round, very dark nuclear fragments in a clear halo."""
    rb = rng.uniform(10.0, 16.0)
    depth, _ = _ellipse_depth(rng, s, rb, rb * rng.uniform(0.8, 1.0), rng.uniform(0, np.pi), 0.04)
    body = _soft(depth)
    halo_w = rng.uniform(5.0, 9.0)
    yy, xx = _coords(s)
    h = np.zeros((s, s), np.float32)
    for _ in range(rng.integers(1, 4)):
        rf = rng.uniform(3.5, 7.5)
        ry, rx = rng.normal(0, rb * 0.25, 2)
        frag = _soft(rf - np.hypot(yy - ry, xx - rx), 0.8)
        h = np.maximum(h, frag * rng.uniform(1.9, 2.4))
    e = body * rng.uniform(0.9, 1.3)
    clear = 1.0 - 0.6 * _soft(depth + halo_w, 1.5)
    return _stack(h, e, clear)


class SpriteBank:
    """Pre-rendered sprites for the frequent cell types of one slide (cheap to stamp thousands of).

    Mitoses and apoptotic bodies are rare and drawn one by one from their own seeds instead.
    """

    N_ANGLES = 12

    def __init__(self, rng: np.random.Generator, n_tumor: int = 64, n_small: int = 32, n_fibro_per_angle: int = 4,
                 style: Style = DEFAULT):
        self.tumor = [tumor_nucleus(rng, style=style) for _ in range(n_tumor)]
        self.lymph = [lymphocyte(rng) for _ in range(n_small)]
        self.duct = [duct_nucleus(rng) for _ in range(n_small)]
        self.fibro = [
            [fibroblast(rng, np.pi * k / self.N_ANGLES) for _ in range(n_fibro_per_angle)] for k in range(self.N_ANGLES)
        ]
        # Drawn last from the same stream, and only when used: the sprites above do not change.
        self.pyknotic = [pyknotic_nucleus(rng) for _ in range(n_small)] if style.pyknotic_fraction > 0 else []


def dihedral(sprite: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations/flips of a (3, s, s) sprite (a view, no copy)."""
    out = np.rot90(sprite, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def stamp(layers: tuple[np.ndarray, np.ndarray, np.ndarray], sprite: np.ndarray, cx: int, cy: int) -> None:
    """Combine ``sprite`` into block layers ``(h, e, clear)`` with its center at block pixel ``(cx, cy)``."""
    hb, eb, cb = layers
    s = sprite.shape[1]
    top, left = cy - s // 2, cx - s // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + s, hb.shape[0]), min(left + s, hb.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    sp = sprite[:, y0 - top : y1 - top, x0 - left : x1 - left]
    np.maximum(hb[y0:y1, x0:x1], sp[0], out=hb[y0:y1, x0:x1])
    eb[y0:y1, x0:x1] += sp[1]
    np.minimum(cb[y0:y1, x0:x1], sp[2], out=cb[y0:y1, x0:x1])
