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

MPP = 0.25
"""Level-0 resolution of every phantom slide (um/px)."""
MASK_STEP = 16
"""Level-0 pixels per truth-mask pixel (4 um)."""
CELL = 256
"""Edge of a nucleus-generation cell (level-0 px)."""
MARGIN = 64
"""Largest half-extent of a stamped object: objects this far outside a block can still reach into it."""

KIND_TUMOR, KIND_LYMPH, KIND_FIBRO, KIND_DUCT = 0, 1, 2, 3


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
    """

    seed: int
    index: int
    size_px: tuple[int, int]
    center: Center
    mitotic_density: float
    patch: bool = False
    n_mitoses: int | None = None


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
    tex = {
        "fibA": F.Texture(fib1[rows, cols] + 0.6 * wave),
        "fibB": F.Texture(fib2[rows, cols] + 0.6 * wave),
        "gran": F.Texture(F.periodic_texture(rng, 512, 3.0, 3.0, 0.0)),
        "grain": F.Texture(F.periodic_texture(rng, 512, 5.0, 5.0, 0.0)),
        "noise": F.Texture(noise.astype(np.float32)),
        # Empty glass depends on the noise only: render it once.
        "glass": F.Texture(od_to_rgb(z, z, center, noise.astype(np.float32))),
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
    bank = SpriteBank(np.random.default_rng([spec.seed, spec.index, 1]))
    empty = Points.build([], [], phase=np.array([], np.int64), in_tumor=np.array([], bool))
    scene = Scene(spec, fl["tissue"], fl["tumor"], fl["lumen"], fl["lymph"], fl["orient"], angles, tex, bank,
                  empty, empty, Points.build([], []), 0.0, 0.0)
    scene.tissue_area_mm2, scene.tumor_area_mm2 = _areas(scene)
    _place_objects(scene, np.random.default_rng([spec.seed, spec.index, 2]))
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

    n_apo = int(round(rng.uniform(4, 10) * max(scene.tumor_area_mm2, 0.05 if spec.patch else 0.0)))
    if spec.patch:
        n_apo = int(rng.integers(0, 3))
    ax, ay = _sample_where(rng, None, spec.size_px, n_apo, in_tumor, 110, avoid=list(zip(allx, ally)))
    scene.apoptoses = Points.build(ax, ay, sid=np.arange(ax.size))


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
    for pts, r in ((scene.mitoses, 40.0), (scene.apoptoses, 34.0)):
        for i in pts.query(ox - r, oy - r, ox + CELL + r, oy + CELL + r):
            ok &= (x - pts.x[i]) ** 2 + (y - pts.y[i]) ** 2 > r**2
    dm = MARGIN + 190
    for i in scene.ducts.query(ox - dm, oy - dm, ox + CELL + dm, oy + CELL + dm):
        ok &= _duct_rho(scene, i, x, y) > 1.12
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
    return {"x": x, "y": y, "kind": kind, "sprite": sprite, "flip": flip}


def _duct_rho(scene: Scene, i: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = scene.ducts
    c, s = np.cos(d.cols["angle"][i]), np.sin(d.cols["angle"][i])
    u = (x - d.x[i]) * c + (y - d.y[i]) * s
    v = -(x - d.x[i]) * s + (y - d.y[i]) * c
    return np.sqrt((u / d.cols["a"][i]) ** 2 + (v / d.cols["b"][i]) ** 2)
