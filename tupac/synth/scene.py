"""The scene description of one phantom slide: region fields, textures and object lists.

Nothing here holds level-0 pixels. Regions are signed-distance fields on an 8 um grid; rare objects
(mitoses, apoptotic bodies, ducts) are global arrays; frequent nuclei are generated on demand per
``CELL`` x ``CELL`` cell from an RNG seeded by ``(seed, slide, cell)``, so any block renders the same
no matter in which order blocks are drawn, and memory does not grow with the slide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from tupac.synth import fields as F
from tupac.synth.sprites import MITOSIS_PHASES, SpriteBank
from tupac.synth.stain import Center, od_to_rgb
from tupac.synth.style import DEFAULT, Style

MPP = 0.25
"""Level-0 resolution of every phantom slide (um/px)."""
MASK_STEP = 16
"""Level-0 pixels per truth-mask pixel (4 um)."""
CELL = 256
"""Edge of a nucleus-generation cell (level-0 px)."""
MARGIN = 64
"""Largest half-extent of a stamped object: objects this far outside a block can still reach into it."""
_MAX_BLUR_MARGIN = 32
"""Render margin (level-0 px) of the blurriest style the textures are pre-tiled for (sigma <= 7.5)."""

KIND_TUMOR, KIND_LYMPH, KIND_FIBRO, KIND_DUCT, KIND_PYKNOTIC = 0, 1, 2, 3, 4

# RNG streams (third seed word) of the style's additions. They are separate from the streams the
# default look uses (0-7), and drawn from only when the style asks, so "default" stays byte-identical.
# (Pyknotic sprites come last from the sprite bank's stream 1, and only for styles that use them.)
_S_STYLE_OBJECTS, _S_PYKNOTIC, _S_CLUSTER, _S_FOCUS = 8, 9, 10, 11
INKS: dict[str, tuple[float, float, float]] = {
    "green": (0.95, 0.22, 0.75),
    "blue": (0.95, 0.55, 0.12),
    "black": (0.85, 0.85, 0.80),
}
"""Optical density per unit ink of the pen colours, (R, G, B)."""


@dataclass(frozen=True)
class SceneSpec:
    """What to draw: identity, size, stain center and the mitotic activity of one slide.

    Attributes
    ----------
    seed, index : int
        Cohort seed and slide index; together they seed everything in the scene.
    size_px : (width, height)
        Level-0 size.
    center : Center
        Stain center.
    mitotic_density : float
        Mitoses per mm^2 of tumor.
    patch : bool
        A mitosis-set patch (tissue everywhere, mostly tumor) instead of a slide.
    n_mitoses : int, optional
        Exact number of mitoses in tumor (overrides ``mitotic_density``); used for patches.
    style : Style
        Visual style (:mod:`tupac.synth.style`); the center is chosen by the caller.
    """

    seed: int
    index: int
    size_px: tuple[int, int]
    center: Center
    mitotic_density: float
    patch: bool = False
    n_mitoses: int | None = None
    style: Style = DEFAULT


@dataclass
class Points:
    """Objects sorted by ``y`` (level-0 px) for range queries; extra columns ride along."""

    x: np.ndarray
    y: np.ndarray
    cols: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, x, y, **cols) -> "Points":
        order = np.argsort(np.asarray(y, dtype=np.float64), kind="stable")
        return cls(
            np.asarray(x, np.float64)[order],
            np.asarray(y, np.float64)[order],
            {k: np.asarray(v)[order] for k, v in cols.items()},
        )

    def __len__(self) -> int:
        return int(self.x.size)

    def query(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Indices of objects with ``x0 <= x < x1`` and ``y0 <= y < y1``."""
        i0, i1 = np.searchsorted(self.y, [y0, y1])
        idx = np.arange(i0, i1)
        return idx[(self.x[idx] >= x0) & (self.x[idx] < x1)]


@dataclass
class Scene:
    spec: SceneSpec
    tissue: np.ndarray
    tumor: np.ndarray
    lumen: np.ndarray
    lymph: np.ndarray
    orient: np.ndarray
    fiber_angles: tuple[float, float]
    textures: dict[str, F.Texture]
    bank: SpriteBank
    mitoses: Points
    apoptoses: Points
    ducts: Points
    tumor_area_mm2: float
    tissue_area_mm2: float
    lymph_clusters: Points = field(default_factory=lambda: Points.build([], [], r=np.array([])))
    folds: Points = field(default_factory=lambda: Points.build([], []))
    pens: Points = field(default_factory=lambda: Points.build([], []))
    focus: np.ndarray | None = None
    """Focus blur sigma (level-0 px) on the field grid; None when the style is sharp."""

    @property
    def style(self) -> Style:
        return self.spec.style

    @property
    def size_px(self) -> tuple[int, int]:
        return self.spec.size_px

    def rng(self, *stream: int) -> np.random.Generator:
        """An RNG for one named piece of the scene, independent of drawing order."""
        return np.random.default_rng([self.spec.seed, self.spec.index, *stream])


def _region_fields(rng: np.random.Generator, spec: SceneSpec) -> dict[str, np.ndarray]:
    gs = F.grid_shape(spec.size_px)
    w, h = spec.size_px
    small = min(w, h)
    if spec.patch:
        tissue = np.full(gs, 1e4, np.float32)
    else:
        f = F.smooth_field(rng, gs, small / 5) + 0.5 * F.smooth_field(rng, gs, small / 14)
        # Push the slide border toward glass, so fragments lie on the slide like real sections.
        gy, gx = np.mgrid[0 : gs[0], 0 : gs[1]]
        edge = np.minimum.reduce([gy, gx, gs[0] - 1 - gy, gs[1] - 1 - gx]) * F.FIELD_STEP
        f = f - 2.5 * np.exp(-edge / (0.06 * small))
        thr = np.quantile(f, 1.0 - rng.uniform(0.45, 0.62))
        tissue = F.to_signed_distance(f - thr)
    t = F.smooth_field(rng, gs, small / 7) + 0.4 * F.smooth_field(rng, gs, 500)
    inside = tissue > 0
    frac = 0.85 if spec.patch else rng.uniform(0.28, 0.45)
    thr = np.quantile(t[inside], 1.0 - frac) if inside.any() else 0.0
    tumor = F.to_signed_distance(t - thr)
    lum = F.smooth_field(rng, gs, 90)
    lumen = F.to_signed_distance(lum - np.quantile(lum, 0.93))
    lymph = np.clip(F.smooth_field(rng, gs, 1400) - 0.6, 0, None)
    orient = F.smooth_field(rng, gs, 1800)
    return {"tissue": tissue, "tumor": tumor, "lumen": lumen, "lymph": lymph, "orient": orient}


@lru_cache(maxsize=4)
def _textures(seed: int, center: Center) -> tuple[dict[str, F.Texture], tuple[float, float]]:
    """Textures of one (cohort, stain center): shared by its slides, which saves their FFTs."""
    rng = np.random.default_rng([seed, ord(center.name), 0x7E57])
    a1 = rng.uniform(0, np.pi)
    a2 = a1 + rng.uniform(0.6, 1.2)
    fib1 = F.periodic_texture(rng, 1024, 22.0, 2.6, a1)
    fib2 = F.periodic_texture(rng, 1024, 22.0, 2.6, a2)
    wave = F.periodic_texture(rng, 1024, 90.0, 18.0, a1)
    # Domain warp (periodic, so the warped texture still tiles): wavy collagen, not straight streaks.
    warp = np.stack([F.periodic_texture(rng, 1024, 30.0, 30.0, 0.0) for _ in range(2)], -1) * 8.0
    yy, xx = np.mgrid[0:1024, 0:1024]
    rows = (yy + warp[..., 1].astype(np.intp)) % 1024
    cols = (xx + warp[..., 0].astype(np.intp)) % 1024
    noise = np.stack([F.periodic_texture(rng, 509, 0.6, 0.6, 0.0) for _ in range(3)], -1) * 0.018
    z = np.zeros(noise.shape[:2], np.float32)
    # Blurring styles render blocks with a margin: pre-tile for those sizes too (a view, not a gather;
    # the values are the same either way).
    tx = lambda a: F.Texture(a, max_h=256 + 2 * _MAX_BLUR_MARGIN, max_w=2048 + 2 * _MAX_BLUR_MARGIN)  # noqa: E731
    tex = {
        "fibA": tx(fib1[rows, cols] + 0.6 * wave),
        "fibB": tx(fib2[rows, cols] + 0.6 * wave),
        "gran": tx(F.periodic_texture(rng, 512, 3.0, 3.0, 0.0)),
        "grain": tx(F.periodic_texture(rng, 512, 5.0, 5.0, 0.0)),
        "noise": tx(noise.astype(np.float32)),
        # Empty glass depends on the noise only: render it once.
        "glass": tx(od_to_rgb(z, z, center, noise.astype(np.float32))),
    }
    return tex, (a1, a2)


def _sample_where(rng, scene_fields, size_px, n, accept, min_dist, avoid=(), max_tries=60):
    """Up to ``n`` uniform points satisfying ``accept(x, y)``, at least ``min_dist`` apart and from ``avoid``."""
    w, h = size_px
    xs: list[float] = []
    ys: list[float] = []
    ax = np.array([p[0] for p in avoid], np.float64)
    ay = np.array([p[1] for p in avoid], np.float64)
    for _ in range(max_tries):
        if len(xs) >= n:
            break
        cx = rng.uniform(0, w, 4 * n + 64)
        cy = rng.uniform(0, h, 4 * n + 64)
        ok = accept(cx, cy)
        for x, y in zip(cx[ok], cy[ok]):
            if len(xs) >= n:
                break
            if xs and np.min((np.array(xs) - x) ** 2 + (np.array(ys) - y) ** 2) < min_dist**2:
                continue
            if ax.size and np.min((ax - x) ** 2 + (ay - y) ** 2) < min_dist**2:
                continue
            xs.append(float(x))
            ys.append(float(y))
    return np.array(xs), np.array(ys)


def region_masks(scene: Scene, x0: int, y0: int, w_px: int, h_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and tumor truth at ``MASK_STEP`` resolution for a block given in mask pixels.

    Returns
    -------
    tissue, tumor : ndarray of bool, shape (h_px, w_px)
    """
    t = F.sample_block(scene.tissue, x0 * MASK_STEP, y0 * MASK_STEP, w_px, h_px, MASK_STEP) > 0
    u = F.sample_block(scene.tumor, x0 * MASK_STEP, y0 * MASK_STEP, w_px, h_px, MASK_STEP) > 0
    return t, t & u


def mask_shape(size_px: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the truth masks of a slide of level-0 (width, height)."""
    return (-(-size_px[1] // MASK_STEP), -(-size_px[0] // MASK_STEP))


def _areas(scene_like: Scene) -> tuple[float, float]:
    rows, cols = mask_shape(scene_like.size_px)
    n_t = n_u = 0
    for r0 in range(0, rows, 512):
        t, u = region_masks(scene_like, 0, r0, cols, min(512, rows - r0))
        n_t += int(t.sum())
        n_u += int(u.sum())
    px_mm2 = (MASK_STEP * MPP / 1000.0) ** 2
    return n_t * px_mm2, n_u * px_mm2


def make_scene(spec: SceneSpec) -> Scene:
    """Build the full scene description of one slide (fields, textures, sprites, rare objects)."""
    rng = np.random.default_rng([spec.seed, spec.index, 0])
    fl = _region_fields(rng, spec)
    tex, angles = _textures(spec.seed, spec.center)
    bank = SpriteBank(np.random.default_rng([spec.seed, spec.index, 1]), style=spec.style)
    empty = Points.build([], [], phase=np.array([], np.int64), in_tumor=np.array([], bool))
    scene = Scene(spec, fl["tissue"], fl["tumor"], fl["lumen"], fl["lymph"], fl["orient"], angles, tex, bank,
                  empty, empty, Points.build([], []), 0.0, 0.0)
    scene.tissue_area_mm2, scene.tumor_area_mm2 = _areas(scene)
    _place_objects(scene, np.random.default_rng([spec.seed, spec.index, 2]))
    _place_style_objects(scene)
    return scene


def _place_objects(scene: Scene, rng: np.random.Generator) -> None:
    spec = scene.spec
    tis = lambda x, y: F.sample_points(scene.tissue, x, y)  # noqa: E731
    tum = lambda x, y: F.sample_points(scene.tumor, x, y)  # noqa: E731
    lum = lambda x, y: F.sample_points(scene.lumen, x, y)  # noqa: E731
    in_tumor = lambda x, y: (tis(x, y) > 40) & (tum(x, y) > 40) & (lum(x, y) < -30)  # noqa: E731
    normal = lambda x, y: (tis(x, y) > 40) & (tum(x, y) < -60)  # noqa: E731

    # Ducts first (normal tissue only), so that the rare cells can avoid them.
    non_tumor_mm2 = max(scene.tissue_area_mm2 - scene.tumor_area_mm2, 0.0)
    n_ducts = 0 if spec.patch else int(rng.poisson(5.0 * non_tumor_mm2))
    a = rng.uniform(90, 170, max(n_ducts, 1))
    dx, dy = _sample_where(
        rng, None, spec.size_px, n_ducts,
        lambda x, y: (tis(x, y) > 220) & (tum(x, y) < -260), 420,
    )
    k = dx.size
    scene.ducts = Points.build(dx, dy, a=a[:k], b=a[:k] * rng.uniform(0.7, 1.0, k), angle=rng.uniform(0, np.pi, k),
                               sid=np.arange(k))
    duct_xy = list(zip(dx, dy))

    if spec.n_mitoses is not None:
        n_in = spec.n_mitoses
    else:
        n_in = int(round(spec.mitotic_density * scene.tumor_area_mm2))
    mx, my = _sample_where(rng, None, spec.size_px, n_in, in_tumor, 110)
    n_out = 0 if spec.patch else int(rng.poisson(0.3 * non_tumor_mm2))
    ox, oy = _sample_where(rng, None, spec.size_px, n_out, normal, 110, avoid=duct_xy)
    allx, ally = np.concatenate([mx, ox]), np.concatenate([my, oy])
    phases = rng.choice(len(MITOSIS_PHASES), size=allx.size, p=[0.3, 0.45, 0.25])
    scene.mitoses = Points.build(allx, ally, phase=phases, in_tumor=np.arange(allx.size) < mx.size,
                                 sid=np.arange(allx.size))

    apo_rate = rng.uniform(*spec.style.apoptosis_rate)  # per mm^2 of tumor
    n_apo = int(round(apo_rate * max(scene.tumor_area_mm2, 0.05 if spec.patch else 0.0)))
    if spec.patch:
        # 0-2 in a default patch (a 0.2 mm^2 field); proportionally more for styles rich in them.
        n_apo = int(rng.integers(0, max(3, int(round(spec.style.apoptosis_rate[1] * 0.25)))))
    ax, ay = _sample_where(rng, None, spec.size_px, n_apo, in_tumor, 110, avoid=list(zip(allx, ally)))
    scene.apoptoses = Points.build(ax, ay, sid=np.arange(ax.size))


def _place_style_objects(scene: Scene) -> None:
    """Lymphocyte clusters, tissue folds, pen strokes and the focus field the style asks for.

    From their own RNG streams: a style without them draws nothing, so the default look is unchanged.
    """
    st, spec = scene.style, scene.spec
    gs = F.grid_shape(spec.size_px)
    if st.blur_sigma[1] > 0:
        lo, hi = st.blur_sigma
        f = F.smooth_field(scene.rng(_S_FOCUS), gs, min(spec.size_px) / 3)
        # A slowly varying focus over the slide: the scanner's focus points miss some regions.
        scene.focus = (lo + (hi - lo) * np.clip(0.5 + 0.35 * f, 0.0, 1.0)).astype(np.float32)
    rng = scene.rng(_S_STYLE_OBJECTS)
    tis = lambda x, y: F.sample_points(scene.tissue, x, y)  # noqa: E731
    lum = lambda x, y: F.sample_points(scene.lumen, x, y)  # noqa: E731
    if st.lymph_cluster_rate > 0:
        n = int(rng.poisson(st.lymph_cluster_rate * max(scene.tissue_area_mm2, 0.0)))
        # 500 px from any mitosis, more than the largest radius (240 px): no mitosis inside a cluster.
        avoid = list(zip(scene.mitoses.x, scene.mitoses.y))
        cx, cy = _sample_where(rng, None, spec.size_px, n, lambda x, y: (tis(x, y) > 120) & (lum(x, y) < -60), 500,
                               avoid=avoid)
        r = rng.uniform(*st.lymph_cluster_radius_um, cx.size) / MPP
        scene.lymph_clusters = Points.build(cx, cy, r=r)
    if spec.patch:
        return  # folds and pen marks are slide artifacts; the mitosis set is cropped from clean fields
    if st.folds_per_slide > 0:
        n = int(rng.poisson(st.folds_per_slide))
        fx, fy = _sample_where(rng, None, spec.size_px, n, lambda x, y: tis(x, y) > 200, 800)
        k = fx.size
        scene.folds = Points.build(fx, fy, angle=rng.uniform(0, np.pi, k), half_len=rng.uniform(600, 2400, k),
                                   half_width=rng.uniform(60, 160, k), bend=rng.uniform(-0.25, 0.25, k),
                                   sid=np.arange(k))
    if st.pen_marks_per_slide > 0:
        k = int(rng.poisson(st.pen_marks_per_slide))
        w, h = spec.size_px
        inks = list(INKS)
        scene.pens = Points.build(rng.uniform(0.1 * w, 0.9 * w, k), rng.uniform(0.1 * h, 0.9 * h, k),
                                  angle=rng.uniform(0, np.pi, k), half_len=rng.uniform(1200, 4000, k),
                                  half_width=rng.uniform(120, 320, k), bend=rng.uniform(-0.35, 0.35, k),
                                  strength=rng.uniform(0.5, 1.0, k), ink=rng.integers(0, len(inks), k),
                                  sid=np.arange(k))


BAND_REACH = 4800
"""Largest distance (level-0 px) from a fold's or pen stroke's anchor to a pixel it touches."""


def band_weights(bands: Points, x0: float, y0: float, w: int, h: int, step: float = 1.0,
                 only: int | None = None) -> np.ndarray:
    """Coverage (0..1) of a block by slightly bent bands (folds or pen strokes), soft-edged.

    Each band ``i`` is a parabola-bent strip through its anchor ``(x, y)`` along ``angle``:
    ``|u| <= half_len``, ``|v - bend * u^2 / half_len| <= half_width``; coverage is the maximum over bands.
    Pixel ``(i, j)`` is at level-0 ``(x0 + (j + 0.5) * step, y0 + (i + 0.5) * step)``, like
    :func:`tupac.synth.fields.sample_block`, so the truth masks see what is drawn. ``only``: just
    band ``only``.

    Returns
    -------
    ndarray of float32, shape (h, w)
    """
    out = np.zeros((h, w), np.float32)
    idx = bands.query(x0 - BAND_REACH, y0 - BAND_REACH, x0 + w * step + BAND_REACH, y0 + h * step + BAND_REACH)
    if only is not None:
        idx = idx[idx == only]
    if idx.size == 0:
        return out
    xs = (x0 + (np.arange(w) + 0.5) * step)[None, :]
    ys = (y0 + (np.arange(h) + 0.5) * step)[:, None]
    edge = 2.0 * max(step, 1.0)
    for i in idx:
        c, s = np.cos(bands.cols["angle"][i]), np.sin(bands.cols["angle"][i])
        hl, hw, bend = bands.cols["half_len"][i], bands.cols["half_width"][i], bands.cols["bend"][i]
        u = (xs - bands.x[i]) * c + (ys - bands.y[i]) * s
        v = -(xs - bands.x[i]) * s + (ys - bands.y[i]) * c - bend * u * u / hl
        # Tapered ends: the stroke narrows over its last 15 %.
        taper = np.clip((hl - np.abs(u)) / (0.15 * hl), 0.0, 1.0)
        cov = np.clip(0.5 + (hw * np.sqrt(taper) - np.abs(v)) / edge, 0.0, 1.0) * (taper > 0)
        np.maximum(out, cov.astype(np.float32), out=out)
    return out


def _free_of_rare(scene: Scene, x: np.ndarray, y: np.ndarray, ox: int, oy: int) -> np.ndarray:
    """Points not in the neighbourhood that mitoses, apoptotic bodies and ducts own (they own it)."""
    ok = np.ones(x.shape, bool)
    for pts, r in ((scene.mitoses, 40.0), (scene.apoptoses, 34.0)):
        for i in pts.query(ox - r, oy - r, ox + CELL + r, oy + CELL + r):
            ok &= (x - pts.x[i]) ** 2 + (y - pts.y[i]) ** 2 > r**2
    dm = MARGIN + 190
    for i in scene.ducts.query(ox - dm, oy - dm, ox + CELL + dm, oy + CELL + dm):
        ok &= _duct_rho(scene, i, x, y) > 1.12
    return ok


def _style_nuclei(scene: Scene, cy: int, cx: int, nuc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn some tumor nuclei pyknotic and add cluster lymphocytes, from the style's own streams."""
    st = scene.style
    if st.pyknotic_fraction > 0 and scene.bank.pyknotic:
        rng = scene.rng(_S_PYKNOTIC, cy, cx)
        pick = (nuc["kind"] == KIND_TUMOR) & (rng.random(nuc["kind"].size) < st.pyknotic_fraction)
        nuc["kind"] = np.where(pick, KIND_PYKNOTIC, nuc["kind"])
        nuc["sprite"] = np.where(pick, rng.integers(0, len(scene.bank.pyknotic), pick.size), nuc["sprite"])
    cl = scene.lymph_clusters
    if len(cl) == 0:
        return nuc
    ox, oy = cx * CELL, cy * CELL
    reach = float(cl.cols["r"].max())
    hits = cl.query(ox - reach, oy - reach, ox + CELL + reach, oy + CELL + reach)
    if hits.size == 0:
        return nuc
    rng = scene.rng(_S_CLUSTER, cy, cx)
    # Packed lymphocytes: one per ~7 um square, kept where some cluster's disc covers them.
    n = rng.poisson(CELL * CELL / 28.0**2)
    x, y = ox + rng.uniform(0, CELL, n), oy + rng.uniform(0, CELL, n)
    inside = np.zeros(n, bool)
    for i in hits:
        rho = np.hypot(x - cl.x[i], y - cl.y[i]) / cl.cols["r"][i]
        # A ragged rim: density falls off over the outer quarter.
        inside |= rho < 1.0 - 0.25 * rng.random(n)
    ok = inside & (F.sample_points(scene.tissue, x, y) > 12) & (F.sample_points(scene.lumen, x, y) < -12)
    ok &= _free_of_rare(scene, x, y, ox, oy)
    k = int(ok.sum())
    return {
        "x": np.concatenate([nuc["x"], x[ok]]),
        "y": np.concatenate([nuc["y"], y[ok]]),
        "kind": np.concatenate([nuc["kind"], np.full(k, KIND_LYMPH)]),
        "sprite": np.concatenate([nuc["sprite"], rng.integers(0, len(scene.bank.lymph), k)]),
        "flip": np.concatenate([nuc["flip"], rng.integers(0, 8, k)]),
    }


def pyknotic_points(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Centers (level-0 px) of every pyknotic nucleus drawn on the slide: the look-alike truth.

    Visits only the cells where a tumor nucleus can be accepted (tumor field above its threshold
    somewhere near the cell), so it costs a fraction of rendering.
    """
    if scene.style.pyknotic_fraction <= 0:
        return np.zeros(0), np.zeros(0)
    w, h = scene.size_px
    n_cx, n_cy = -(-w // CELL), -(-h // CELL)
    step = 16
    xs_all, ys_all = [], []
    for cy in range(n_cy):
        # Tumor nuclei need d_tumor > -2 and d_tissue > 26; sampled every 16 px with a slack of 40 px.
        du = F.sample_block(scene.tumor, 0, cy * CELL, n_cx * CELL // step, CELL // step, step)
        dt = F.sample_block(scene.tissue, 0, cy * CELL, n_cx * CELL // step, CELL // step, step)
        du = du.reshape(CELL // step, n_cx, CELL // step).max(axis=(0, 2))
        dt = dt.reshape(CELL // step, n_cx, CELL // step).max(axis=(0, 2))
        for cx in np.flatnonzero((du > -42) & (dt > -14)):
            nuc = cell_nuclei(scene, cy, int(cx))
            m = (nuc["kind"] == KIND_PYKNOTIC) & (nuc["x"] >= 0) & (nuc["x"] < w) & (nuc["y"] >= 0) & (nuc["y"] < h)
            xs_all.append(nuc["x"][m])
            ys_all.append(nuc["y"][m])
    if not xs_all:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(xs_all), np.concatenate(ys_all)


def cell_nuclei(scene: Scene, cy: int, cx: int) -> dict[str, np.ndarray]:
    """Frequent nuclei of one cell: ``x, y`` (level-0 px), ``kind``, ``sprite``, ``flip`` (dihedral index)."""
    rng = scene.rng(3, cy, cx)
    ox, oy = cx * CELL, cy * CELL
    # Tumor cells: a jittered lattice (cells pack, they do not overlap like Poisson points).
    g = (np.arange(5) + 0.5) * (CELL / 5)
    ty, tx = np.meshgrid(g, g, indexing="ij")
    tx = tx.ravel() + ox + rng.normal(0, 11, 25)
    ty = ty.ravel() + oy + rng.normal(0, 11, 25)
    keep_t = rng.random(25) < 0.8
    n_l = rng.poisson(0.5 + 12.0 * float(F.sample_points(scene.lymph, ox + CELL / 2, oy + CELL / 2)))
    lx, ly = ox + rng.uniform(0, CELL, n_l), oy + rng.uniform(0, CELL, n_l)
    n_f = rng.poisson(3.0)
    fx, fy = ox + rng.uniform(0, CELL, n_f), oy + rng.uniform(0, CELL, n_f)
    x = np.concatenate([tx, lx, fx])
    y = np.concatenate([ty, ly, fy])
    kind = np.concatenate([np.full(25, KIND_TUMOR), np.full(n_l, KIND_LYMPH), np.full(n_f, KIND_FIBRO)])
    d_t = F.sample_points(scene.tissue, x, y)
    d_u = F.sample_points(scene.tumor, x, y)
    d_l = F.sample_points(scene.lumen, x, y)
    ok = np.where(
        kind == KIND_TUMOR,
        np.concatenate([keep_t, np.ones(n_l + n_f, bool)]) & (d_t > 26) & (d_u > -2) & (d_l < -20),
        np.where(kind == KIND_LYMPH, (d_t > 12) & ((d_u < 0) | (rng.random(kind.size) < 0.25)) & (d_l < -12),
                 (d_t > 12) & (d_u < -12)),
    )
    # Rare objects and ducts own their neighbourhood.
    ok &= _free_of_rare(scene, x, y, ox, oy)
    x, y, kind = x[ok], y[ok], kind[ok]
    sprite = np.zeros(x.size, np.int64)
    nt = (kind == KIND_TUMOR).sum()
    sprite[kind == KIND_TUMOR] = rng.integers(0, len(scene.bank.tumor), nt)
    sprite[kind == KIND_LYMPH] = rng.integers(0, len(scene.bank.lymph), (kind == KIND_LYMPH).sum())
    fm = kind == KIND_FIBRO
    if fm.any():
        blend = F.sample_points(scene.orient, x[fm], y[fm]) > 0
        ang = np.where(blend, scene.fiber_angles[0], scene.fiber_angles[1]) % np.pi
        # Sprite angles are in image (x right, y down) coordinates, like the texture angles.
        abin = np.round(ang / np.pi * SpriteBank.N_ANGLES).astype(int) % SpriteBank.N_ANGLES
        sprite[fm] = abin * 4 + rng.integers(0, 4, fm.sum())
    flip = rng.integers(0, 8, x.size)
    flip[fm] = 0
    nuc = {"x": x, "y": y, "kind": kind, "sprite": sprite, "flip": flip}
    return _style_nuclei(scene, cy, cx, nuc)


def _duct_rho(scene: Scene, i: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = scene.ducts
    c, s = np.cos(d.cols["angle"][i]), np.sin(d.cols["angle"][i])
    u = (x - d.x[i]) * c + (y - d.y[i]) * s
    v = -(x - d.x[i]) * s + (y - d.y[i]) * c
    return np.sqrt((u / d.cols["a"][i]) ** 2 + (v / d.cols["b"][i]) ** 2)
