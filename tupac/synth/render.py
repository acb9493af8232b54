"""Rendering a block of level-0 pixels of a scene, vectorized, in stain-amount (optical density) space."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tupac.synth import fields as F
from tupac.synth import sprites as S
from tupac.synth.scene import (
    CELL, INKS, KIND_DUCT, KIND_FIBRO, KIND_LYMPH, KIND_PYKNOTIC, KIND_TUMOR, MARGIN, Scene, band_weights, cell_nuclei,
)
from tupac.synth.stain import od_to_rgb

_INK_OD = np.array(list(INKS.values()), np.float32)


class _SpriteCache:
    """Rare objects (mitoses, apoptotic bodies) are drawn from their own seed once and reused."""

    def __init__(self) -> None:
        self._d: dict[tuple, np.ndarray] = {}

    def get(self, key: tuple, make) -> np.ndarray:
        if key not in self._d:
            self._d[key] = make()
        return self._d[key]


def _tissue_weight(scene: Scene, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    grain = scene.textures["grain"].block(x0, y0, w, h)
    t = F.sample_block(scene.tissue, x0, y0, w, h)
    t += 2.5 * grain
    t /= 2.5
    t += 0.5
    return np.clip(t, 0, 1, out=t)


def _background(scene: Scene, t: np.ndarray, x0: int, y0: int, w: int, h: int):
    tex = scene.textures
    grain = tex["grain"].block(x0, y0, w, h)
    u = np.clip(0.5 + F.sample_block(scene.tumor, x0, y0, w, h) / 4.0, 0, 1) * t
    lum = np.clip(0.5 + (F.sample_block(scene.lumen, x0, y0, w, h) + 3.0 * grain) / 3.0, 0, 1) * u
    stroma = t - u
    blend = np.clip(0.5 + F.sample_block(scene.orient, x0, y0, w, h), 0, 1)
    fib = tex["fibA"].block(x0, y0, w, h) * blend + tex["fibB"].block(x0, y0, w, h) * (1 - blend)
    # Collagen: pink bundles with pale clefts between them.
    coll = np.clip(0.5 + 0.32 * fib, 0.0, 1.0) ** 1.4
    gran = tex["gran"].block(x0, y0, w, h)
    e = stroma * (0.22 + 0.85 * coll) + u * (0.46 + 0.04 * gran)
    hb = t * 0.04 + u * (0.27 + 0.03 * gran)
    clear = 1.0 - 0.95 * lum
    return hb.astype(np.float32), e.astype(np.float32), clear.astype(np.float32)


def _draw_ducts(scene: Scene, layers, hb, e, x0, y0, w, h) -> None:
    d = scene.ducts
    reach = 190 + MARGIN
    for i in d.query(x0 - reach, y0 - reach, x0 + w + reach, y0 + h + reach):
        a, b, ang = d.cols["a"][i], d.cols["b"][i], d.cols["angle"][i]
        r = int(a * 1.15) + 2
        cx, cy = int(round(d.x[i])) - x0, int(round(d.y[i])) - y0
        ys0, ys1, xs0, xs1 = max(cy - r, 0), min(cy + r, h), max(cx - r, 0), min(cx + r, w)
        if ys0 < ys1 and xs0 < xs1:
            yy, xx = np.mgrid[ys0:ys1, xs0:xs1].astype(np.float32)
            c, s = np.cos(ang), np.sin(ang)
            uu = (xx - cx) * c + (yy - cy) * s
            vv = -(xx - cx) * s + (yy - cy) * c
            rho = np.sqrt((uu / a) ** 2 + (vv / b) ** 2)
            depth = (1.0 - rho) * b
            epi = np.clip(0.5 + depth / 2, 0, 1)
            lumen = np.clip(0.5 + (0.5 - rho) * b / 2, 0, 1)
            sl = (slice(ys0, ys1), slice(xs0, xs1))
            e[sl] = e[sl] * (1 - epi) + epi * 0.42
            hb[sl] = hb[sl] * (1 - epi) + epi * 0.12
            np.minimum(layers[2][sl], 1.0 - 0.97 * lumen, out=layers[2][sl])
        # Luminal nuclei on a ring, myoepithelial (spindle) nuclei at the basement membrane.
        rng = scene.rng(4, int(d.cols["sid"][i]))
        n = int(2 * np.pi * np.sqrt((a * a + b * b) / 2) * 0.72 / 24)
        th = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
        rr = rng.uniform(0.66, 0.8, n)
        c, s = np.cos(ang), np.sin(ang)
        pu, pv = rr * a * np.cos(th), rr * b * np.sin(th)
        px, py = d.x[i] + pu * c - pv * s - x0, d.y[i] + pu * s + pv * c - y0
        for j in range(n):
            sp = S.dihedral(scene.bank.duct[rng.integers(len(scene.bank.duct))], int(rng.integers(8)))
            S.stamp(layers, sp, int(round(px[j])), int(round(py[j])))
        m = int(n * 0.6)
        th2 = rng.uniform(0, 2 * np.pi, m)
        pu, pv = 1.02 * a * np.cos(th2), 1.02 * b * np.sin(th2)
        px, py = d.x[i] + pu * c - pv * s - x0, d.y[i] + pu * s + pv * c - y0
        tang = (np.arctan2(py - (d.y[i] - y0), px - (d.x[i] - x0)) + np.pi / 2) % np.pi
        abin = np.round(tang / np.pi * S.SpriteBank.N_ANGLES).astype(int) % S.SpriteBank.N_ANGLES
        for j in range(m):
            sp = scene.bank.fibro[abin[j]][int(rng.integers(4))]
            S.stamp(layers, sp, int(round(px[j])), int(round(py[j])))


def _draw_cells(scene: Scene, layers, x0, y0, w, h) -> None:
    bank = scene.bank
    for cy in range((y0 - MARGIN) // CELL, (y0 + h + MARGIN) // CELL + 1):
        for cx in range((x0 - MARGIN) // CELL, (x0 + w + MARGIN) // CELL + 1):
            if cx < 0 or cy < 0:
                continue
            nuc = cell_nuclei(scene, cy, cx)
            xs = np.round(nuc["x"]).astype(int) - x0
            ys = np.round(nuc["y"]).astype(int) - y0
            near = (xs > -MARGIN) & (xs < w + MARGIN) & (ys > -MARGIN) & (ys < h + MARGIN)
            for j in np.flatnonzero(near):
                k = nuc["kind"][j]
                if k == KIND_TUMOR:
                    sp = S.dihedral(bank.tumor[nuc["sprite"][j]], nuc["flip"][j])
                elif k == KIND_LYMPH:
                    sp = S.dihedral(bank.lymph[nuc["sprite"][j]], nuc["flip"][j])
                elif k == KIND_FIBRO:
                    sp = bank.fibro[nuc["sprite"][j] // 4][nuc["sprite"][j] % 4]
                elif k == KIND_DUCT:
                    sp = S.dihedral(bank.duct[nuc["sprite"][j]], nuc["flip"][j])
                elif k == KIND_PYKNOTIC:
                    sp = S.dihedral(bank.pyknotic[nuc["sprite"][j]], nuc["flip"][j])
                else:
                    continue
                S.stamp(layers, sp, xs[j], ys[j])


def _draw_rare(scene: Scene, layers, cache: _SpriteCache, x0, y0, w, h) -> None:
    m = scene.mitoses
    for i in m.query(x0 - MARGIN, y0 - MARGIN, x0 + w + MARGIN, y0 + h + MARGIN):
        sid = int(m.cols["sid"][i])
        phase = S.MITOSIS_PHASES[int(m.cols["phase"][i])]
        sp = cache.get(("m", sid), lambda: S.mitosis(scene.rng(5, sid), phase, style=scene.style))
        S.stamp(layers, sp, int(round(m.x[i])) - x0, int(round(m.y[i])) - y0)
    a = scene.apoptoses
    for i in a.query(x0 - MARGIN, y0 - MARGIN, x0 + w + MARGIN, y0 + h + MARGIN):
        sid = int(a.cols["sid"][i])
        sp = cache.get(("a", sid), lambda: S.apoptotic_body(scene.rng(6, sid)))
        S.stamp(layers, sp, int(round(a.x[i])) - x0, int(round(a.y[i])) - y0)


def render_block(scene: Scene, x0: int, y0: int, w: int, h: int, cache: _SpriteCache | None = None) -> np.ndarray:
    """Render level-0 pixels ``[y0:y0+h, x0:x0+w]`` of a scene.

    The result depends only on the scene and the block coordinates (not on which blocks were drawn
    before), so tiles can be drawn in any order or in parallel. A blurring style renders the block
    with a margin of :attr:`~tupac.synth.style.Style.blur_margin` px and crops it after blurring, so
    blocks stay seamless.

    Returns
    -------
    ndarray of uint8, shape (h, w, 3), RGB.
    """
    cache = cache or _SpriteCache()
    m = scene.style.blur_margin
    if m == 0 or scene.focus is None:
        return _render_sharp(scene, x0, y0, w, h, cache)
    big = _render_sharp(scene, x0 - m, y0 - m, w + 2 * m, h + 2 * m, cache)
    return _blur(scene, big, x0 - m, y0 - m)[m : m + h, m : m + w]


def _blur(scene: Scene, img: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Focus blur with a per-pixel sigma from the scene's focus field.

    The image is filtered at a few sigmas spanning the style's range (at most 0.7 px apart) and each
    pixel interpolates linearly between the two nearest: a spatially varying Gaussian at the cost of
    a few separable filters (only those some pixel of the block needs; the focus field varies slowly,
    so usually two). Every filter reaches less than the render margin, so block edges are exact.
    """
    h, w = img.shape[:2]
    lo, hi = scene.style.blur_sigma
    f = img.astype(np.float32)
    n_levels = 1 + int(np.ceil((hi - lo) / 0.7))
    if n_levels == 1:
        out = ndimage.gaussian_filter(f, (hi, hi, 0), mode="nearest")
    else:
        levels = np.linspace(lo, hi, n_levels)
        pos = (F.sample_block(scene.focus, x0, y0, w, h) - lo) / (levels[1] - levels[0])
        out = np.zeros_like(f)
        for k, sig in enumerate(levels):
            wk = np.abs(pos - k)
            np.subtract(1.0, wk, out=wk)
            np.clip(wk, 0.0, 1.0, out=wk)  # hat weights: they sum to 1 at every pixel
            if not wk.any():
                continue
            fk = f.copy() if sig <= 0 else ndimage.gaussian_filter(f, (sig, sig, 0), mode="nearest")
            fk *= wk[..., None]
            out += fk
    out += 0.5
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _apply_folds(scene: Scene, layers_sum: tuple[np.ndarray, np.ndarray], x0: int, y0: int, w: int, h: int) -> None:
    """A fold lays the section on itself: every stain amount doubles under it (in place)."""
    if len(scene.folds) == 0:
        return
    cov = band_weights(scene.folds, x0, y0, w, h)
    if cov.any():
        for a in layers_sum:
            a *= 1.0 + cov


def _apply_pen(scene: Scene, out: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Pen ink adds optical density on top of everything (glass or tissue): intensities multiply."""
    p = scene.pens
    if len(p) == 0:
        return out
    h, w = out.shape[:2]
    od = np.zeros((h, w, 3), np.float32)
    for i in range(len(p)):  # one stroke at a time: each has its own ink
        cov = band_weights(p, x0, y0, w, h, only=i)
        if cov.any():
            od += (cov * p.cols["strength"][i])[..., None] * _INK_OD[int(p.cols["ink"][i])]
    if not od.any():
        return out
    return np.clip(out * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)


def _render_sharp(scene: Scene, x0: int, y0: int, w: int, h: int, cache: _SpriteCache) -> np.ndarray:
    """:func:`render_block` before focus blur."""
    out = np.array(scene.textures["glass"].block(x0, y0, w, h))
    t_full = _tissue_weight(scene, x0, y0, w, h)
    # Only the bounding box of tissue (plus the reach of a stamped object) needs the full model.
    rows = np.flatnonzero(t_full.max(axis=1) > 0)
    if rows.size == 0:
        return _apply_pen(scene, out, x0, y0)
    cols = np.flatnonzero(t_full.max(axis=0) > 0)
    r0, r1 = max(rows[0] - MARGIN, 0), min(rows[-1] + 1 + MARGIN, h)
    c0, c1 = max(cols[0] - MARGIN, 0), min(cols[-1] + 1 + MARGIN, w)
    sx, sy, sw, sh = x0 + c0, y0 + r0, c1 - c0, r1 - r0
    t = t_full[r0:r1, c0:c1]
    hb, e, clear = _background(scene, t, sx, sy, sw, sh)
    nuc_h = np.zeros((sh, sw), np.float32)
    e_add = np.zeros((sh, sw), np.float32)
    layers = (nuc_h, e_add, clear)
    _draw_ducts(scene, layers, hb, e, sx, sy, sw, sh)
    _draw_cells(scene, layers, sx, sy, sw, sh)
    _draw_rare(scene, layers, cache, sx, sy, sw, sh)
    hb *= clear
    hb += nuc_h
    e *= clear
    e += e_add
    _apply_folds(scene, (hb, e), sx, sy, sw, sh)
    noise = scene.textures["noise"].block(sx, sy, sw, sh)
    out[r0:r1, c0:c1] = od_to_rgb(hb, e, scene.spec.center, noise)
    return _apply_pen(scene, out, x0, y0)


new_cache = _SpriteCache
