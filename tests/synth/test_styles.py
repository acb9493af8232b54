"""Visual styles of the phantom slides: default unchanged, styled truth exact, styles really differ."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from typer.testing import CliRunner

from tupac.errors import ConfigError
from tupac.synth import generate_cohort, read_truth_mask
from tupac.synth import scene as S
from tupac.synth.stain import CENTERS, center_by_name
from tupac.synth.style import DEFAULT, STYLES, Style, style_by_name

SEED = 5
SIZE_UM = (800.0, 640.0)
SID = "TUPAC-TR-001"


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _meta(root: Path) -> dict:
    return json.loads((root / "truth" / "cohort.json").read_text())


def _l0(root: Path) -> np.ndarray:
    return tifffile.imread(root / "training_image_data" / f"{SID}.svs", key=0)


def _tumor_l0(root: Path, shape: tuple[int, int]) -> np.ndarray:
    tumor, _ = read_truth_mask(root / "truth" / SID / "tumor.png")
    # Away from the tumor edge (2 mask px), so blur and edges do not mix stroma in.
    tumor = ndimage.binary_erosion(tumor, iterations=2)
    return np.kron(tumor, np.ones((16, 16), bool))[: shape[0], : shape[1]]


@pytest.fixture(scope="module")
def styled(tmp_path_factory) -> dict[str, Path]:
    """One slide of 0.8 x 0.64 mm per style (same seed: same regions and mitoses), lab4 with a mitosis
    image, and lab4 on center A (to compare its look-alikes with the default's without the stain)."""
    base = tmp_path_factory.mktemp("styles")
    roots = {}
    for name in STYLES:
        roots[name] = base / name
        generate_cohort(roots[name], n_slides=1, seed=SEED, size_um=SIZE_UM, mitosis_images=1 if name == "lab4" else 0,
                        workers=1, style=name)
    roots["lab4A"] = base / "lab4A"
    generate_cohort(roots["lab4A"], n_slides=1, seed=SEED, size_um=SIZE_UM, mitosis_images=0, workers=1,
                    style="lab4", centers=["A"])
    return roots


# --- registry ---------------------------------------------------------------------------------------


def test_registry_names_and_errors() -> None:
    assert list(STYLES)[0] == "default" and len(STYLES) >= 4
    assert style_by_name("lab4") is STYLES["lab4"]
    with pytest.raises(ValueError, match="unknown style 'nope'.*default.*lab2"):
        style_by_name("nope")
    with pytest.raises(ValueError, match="unknown center 'Z'.*'D', 'P'"):
        center_by_name("Z")
    with pytest.raises(ValueError, match="jpeg_quality"):
        Style("bad", jpeg_quality=0)
    with pytest.raises(ConfigError, match="unknown style"):
        generate_cohort(Path("/nonexistent/never-created"), 1, 0, style="nope")
    with pytest.raises(ConfigError, match="unknown center"):
        generate_cohort(Path("/nonexistent/never-created"), 1, 0, centers=["A", "Q"])
    # The existing centers and the default rotation are untouched; D and P are extra.
    assert [c.name for c in CENTERS] == ["A", "B", "C"]
    assert CENTERS[0].h_scale == 1.0 and CENTERS[1].h_scale == 1.12 and CENTERS[2].h_scale == 0.82
    assert center_by_name("D").h_scale > 1.3 and max(center_by_name("P").h_scale, center_by_name("P").e_scale) < 0.75
    for s in STYLES.values():
        for c in s.centers:
            center_by_name(c)
    # Every non-default style changes several axes.
    axes = ("nucleus_scale", "nucleus_aspect", "chromatin", "mitosis_plate_width", "pyknotic_fraction",
            "lymph_cluster_rate", "centers", "blur_sigma", "jpeg_quality", "folds_per_slide", "pen_marks_per_slide")
    for s in STYLES.values():
        if s.name != "default":
            assert sum(getattr(s, a) != getattr(DEFAULT, a) for a in axes) >= 5, s.name


# --- default is byte-identical to the generator before styles -----------------------------------------

# Digests of the output of commit 9fdee99 (before styles), same library versions as this environment:
# generate_cohort(root, n_slides=2, seed=21, size_um=(800, 640), mitosis_images=1, workers=1).
BEFORE_STYLES_MD5 = {
    "ROI/TUPAC-TR-001-ROI.csv": "a364fa95de741fcb45904c416282df91",
    "ROI/TUPAC-TR-002-ROI.csv": "3be4471a2b4e2f913aba6d89e10e170c",
    "mitoses/mitoses_ground_truth/01/01.csv": "4d1407dfc2b9ddd80440d3374f660e81",
    "mitoses/mitoses_image_data/01/01.tif": "bcd0f4deb77e4c49e5d71c45aa038040",
    "training_ground_truth.csv": "c48904a362164c94eaeb71579927cffd",
    "training_image_data/TUPAC-TR-001.svs": "0dbd91174c9128255ab4984e711632bc",
    "training_image_data/TUPAC-TR-002.svs": "94932b85d18ee01aa841ba4e11c9cbb5",
    "truth/TUPAC-TR-001/mitoses.csv": "0254cd9820beba429b36d98b85789c8e",
    "truth/TUPAC-TR-001/tissue.png": "b4c3fc87564b92b8cd841af6bd8f5e00",
    "truth/TUPAC-TR-001/tumor.png": "46664a86639463e208207980edad1ce3",
    "truth/TUPAC-TR-002/mitoses.csv": "3a2efacec5125b5ea82a796c5242f234",
    "truth/TUPAC-TR-002/tissue.png": "df8bf02e2d08ef71853bbdbf5a65b010",
    "truth/TUPAC-TR-002/tumor.png": "179a2cab0b73776c5db6ee9c356bdcaf",
}
# Raw rendered pixels (before JPEG: numpy/scipy only) of SceneSpec(21, 1, (3200, 2560), center B, 15.0),
# the 64 + 32 + 32 bank sprites of seed (21, 1, 1), and one mitosis sprite per phase (seeds 0, 1, 2).
BEFORE_STYLES_RAW_MD5 = {"slide": "e6fa1a0d30be64a821126cc36a2a6b83", "bank": "be1f2ac780cc6602353929c6ecec47f6",
                         "mitoses": "f19dcc616aef91f290de01ceea81c32e"}


def test_default_style_files_are_byte_identical_to_before_styles(tmp_path: Path) -> None:
    root = tmp_path / "c"
    generate_cohort(root, n_slides=2, seed=21, size_um=(800.0, 640.0), mitosis_images=1, workers=1, style="default")
    got = {k: _md5((root / k).read_bytes()) for k in BEFORE_STYLES_MD5}
    assert got == BEFORE_STYLES_MD5
    meta = _meta(root)
    assert meta["style"] == "default" and meta["centers"] == ["A", "B", "C"]
    assert [s["center"] for s in meta["slides"].values()] == ["A", "B"]
    assert all(s["style"] == "default" and s["n_pyknotic"] == 0 and not s["folds"] and not s["pen_marks"]
               for s in meta["slides"].values())
    assert not list(root.glob("truth/*/pen.png")) and not list(root.glob("truth/*/fold.png"))


def test_default_style_raw_pixels_and_sprites_are_unchanged() -> None:
    from tupac.synth import sprites as P
    from tupac.synth.render import new_cache, render_block

    sc = S.make_scene(S.SceneSpec(21, 1, (3200, 2560), CENTERS[1], 15.0))  # no style given: the default
    assert sc.style is DEFAULT and sc.focus is None
    cache = new_cache()
    pix = np.concatenate([render_block(sc, 0, y, 3200, min(256, 2560 - y), cache) for y in range(0, 2560, 256)])
    bank = P.SpriteBank(np.random.default_rng([21, 1, 1]))
    mit = b"".join(P.mitosis(np.random.default_rng(k), ph).tobytes() for k, ph in enumerate(P.MITOSIS_PHASES))
    assert {"slide": _md5(pix.tobytes()),
            "bank": _md5(b"".join(a.tobytes() for a in bank.tumor + bank.lymph + bank.duct)),
            "mitoses": _md5(mit)} == BEFORE_STYLES_RAW_MD5
    assert bank.pyknotic == []


# --- every style renders, truth exact ------------------------------------------------------------------


def test_every_style_renders_with_its_metadata(styled: dict[str, Path]) -> None:
    for name, style in STYLES.items():
        meta = _meta(styled[name])
        s = meta["slides"][SID]
        assert meta["style"] == s["style"] == name and meta["style_params"]["jpeg_quality"] == style.jpeg_quality
        assert s["center"] == style.centers[0] and s["stain"]["name"] == s["center"]
        assert s["jpeg_quality"] == style.jpeg_quality and s["blur_sigma_px"] == list(style.blur_sigma)
        with tifffile.TiffFile(styled[name] / "training_image_data" / f"{SID}.svs") as tf:
            assert f"JPEG Q={style.jpeg_quality}|" in tf.pages[0].description
            assert (f"|Style = {name}" in tf.pages[0].description) == (name != "default")
            assert tf.pages[0].compression == 7  # JPEG
        img = _l0(styled[name])
        assert img.shape == (2560, 3200, 3) and 100 < img.mean() < 250
    assert _meta(styled["lab4A"])["slides"][SID]["center"] == "A"


def _rebuilt_scene(root: Path, style: Style) -> S.Scene:
    """The scene the generator drew, rebuilt from the seed, plan and style."""
    from tupac.synth.cohort import _plan

    s = _meta(root)["slides"][SID]
    _, density, _ = _plan(1, SEED)[0]
    return S.make_scene(S.SceneSpec(SEED, 1, tuple(s["size_px"]), center_by_name(s["center"]), density, style=style))


def _csv_points(path: Path) -> tuple[np.ndarray, list[str]]:
    lines = path.read_text().splitlines()[1:]
    xy = np.array([[int(v) for v in line.split(",")[:2]] for line in lines], float).reshape(-1, 2)
    return xy, [line.split(",")[2] for line in lines]


@pytest.mark.parametrize("name", ["lab3", "lab4", "lab4A"])
def test_styled_truth_lists_exactly_the_mitoses_drawn_and_no_lookalike(styled: dict[str, Path], name: str) -> None:
    root = styled[name]
    sc = _rebuilt_scene(root, STYLES["lab4" if name == "lab4A" else name])
    s = _meta(root)["slides"][SID]
    mit, _ = _csv_points(root / "truth" / SID / "mitoses.csv")
    assert len(mit) == s["n_mitoses"] == len(sc.mitoses) > 0
    assert np.array_equal(mit, np.round(np.c_[sc.mitoses.x, sc.mitoses.y]))
    look, kinds = _csv_points(root / "truth" / SID / "lookalikes.csv")
    counts = {k: kinds.count(k) for k in ("apoptotic_body", "pyknotic", "lymph_cluster")}
    assert counts == {"apoptotic_body": s["n_apoptotic_bodies"], "pyknotic": s["n_pyknotic"],
                      "lymph_cluster": s["n_lymph_clusters"]}
    assert counts["pyknotic"] == S.pyknotic_points(sc)[0].size
    if name != "lab3":
        assert counts["pyknotic"] > 20 and counts["apoptotic_body"] >= 1
    # Look-alikes keep out of a mitosis's neighbourhood: none of them is (near) a truth point.
    d = np.hypot(*(look[:, None, :] - mit[None, :, :]).transpose(2, 0, 1))
    assert d.min() > 30
    # Each truth point is a dark figure (blur and the dark center included).
    l0 = _l0(root).astype(np.float32).mean(-1)
    tissue, mpp = read_truth_mask(root / "truth" / SID / "tissue.png")
    med = np.median(l0[np.kron(tissue, np.ones((16, 16), bool))[: l0.shape[0], : l0.shape[1]]])
    for x, y in mit.astype(int):
        assert (l0[y - 20 : y + 21, x - 20 : x + 21] < med - 50).sum() >= 40, f"{name}: mitosis at {x},{y} not dark"


def test_lookalikes_never_sit_on_a_mitosis_in_a_crowded_field() -> None:
    """A lab4 tumor field with many mitoses: exactly the asked mitoses, and every pyknotic nucleus keeps
    clear of them (tumor nuclei are not placed within 40 px of a mitosis)."""
    sc = S.make_scene(S.SceneSpec(2, 7, (2000, 2000), center_by_name("D"), 0.0, patch=True, n_mitoses=8,
                                  style=STYLES["lab4"]))
    assert len(sc.mitoses) == 8
    px, py = S.pyknotic_points(sc)
    assert px.size > 50
    d = np.hypot(px[:, None] - sc.mitoses.x[None], py[:, None] - sc.mitoses.y[None])
    assert d.min() > 40
    da = np.hypot(sc.apoptoses.x[:, None] - sc.mitoses.x[None], sc.apoptoses.y[:, None] - sc.mitoses.y[None])
    assert da.size == 0 or da.min() >= 110


def test_folds_and_pen_marks_do_not_change_the_tissue_truth(styled: dict[str, Path]) -> None:
    s = _meta(styled["lab4"])["slides"][SID]
    assert len(s["folds"]) >= 1 and len(s["pen_marks"]) >= 1
    for name in ("tissue.png", "tumor.png"):
        lab4, default = styled["lab4"] / "truth" / SID / name, styled["default"] / "truth" / SID / name
        assert lab4.read_bytes() == default.read_bytes()
    pen, _ = read_truth_mask(styled["lab4"] / "truth" / SID / "pen.png")
    fold, _ = read_truth_mask(styled["lab4"] / "truth" / SID / "fold.png")
    tissue, _ = read_truth_mask(styled["lab4"] / "truth" / SID / "tissue.png")
    assert pen.any() and fold.any() and (fold & tissue).any()
    # Under the ink the slide is darker than the same place in the default style.
    a = _l0(styled["lab4A"]).astype(np.float32).mean(-1)
    b = _l0(styled["default"]).astype(np.float32).mean(-1)
    ink = np.kron(pen & ~tissue, np.ones((16, 16), bool))[: a.shape[0], : a.shape[1]]
    assert ink.any(), "this seed's pen stroke crosses glass: pen on glass is not tissue"
    assert a[ink].mean() < b[ink].mean() - 30


def test_mitosis_images_use_the_style(styled: dict[str, Path]) -> None:
    meta = _meta(styled["lab4"])
    (m,) = meta["mitosis_images"]
    assert m["style"] == "lab4" and m["center"] == "D" and m["n_pyknotic"] > 0
    img = tifffile.imread(styled["lab4"] / "mitoses" / "mitoses_image_data" / "01" / "01.tif")
    rows = (styled["lab4"] / "mitoses" / "mitoses_ground_truth" / "01" / "01.csv").read_text().splitlines()
    assert len(rows) == m["n_mitoses"]
    g = img.astype(np.float32).mean(-1)
    for line in rows:
        r, c = (int(v) for v in line.split(","))
        assert (g[max(r - 20, 0) : r + 21, max(c - 20, 0) : c + 21] < np.median(g) - 50).sum() >= 40


# --- styles look different -----------------------------------------------------------------------------


def test_lookalike_heavy_style_has_many_more_small_dark_nuclei(styled: dict[str, Path]) -> None:
    """lab4 on center A vs default (also center A for slide 1): only the look-alikes differ in darkness."""
    fracs, blobs = {}, {}
    for name in ("default", "lab4A"):
        g = _l0(styled[name]).astype(np.float32).mean(-1)
        tum = _tumor_l0(styled[name], g.shape)
        dark = (g < 80) & tum
        fracs[name] = dark.sum() / tum.sum()
        lab, n = ndimage.label(dark)
        sizes = np.bincount(lab.ravel())[1:]
        blobs[name] = int(((sizes > 150) & (sizes < 900)).sum())  # compact: 3.5-8 um across
    assert fracs["lab4A"] > 5 * fracs["default"] + 0.005, fracs
    n_pyk = _meta(styled["lab4A"])["slides"][SID]["n_pyknotic"]
    assert blobs["lab4A"] >= 0.4 * n_pyk and blobs["lab4A"] > 4 * blobs["default"] + 5, (blobs, n_pyk)


def _h_amount(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin amount by Ruifrok deconvolution with center A's vectors (what a lab would assume)."""
    a = CENTERS[0]
    od = -np.log(np.clip(rgb.reshape(-1, 3).astype(np.float64), 1, 255) / 255.0) - np.array(a.od_glass)
    m = np.array([a.od_h, a.od_e])
    coef, *_ = np.linalg.lstsq(m.T, od.T, rcond=None)
    return coef[0]


def test_dark_center_has_more_hematoxylin_and_pale_center_less() -> None:
    from tupac.synth.render import new_cache, render_block

    h = {}
    for name in ("A", "D", "P"):
        sc = S.make_scene(S.SceneSpec(3, 1, (1024, 1024), center_by_name(name), 0.0, patch=True, n_mitoses=0))
        h[name] = float(np.mean(_h_amount(render_block(sc, 0, 0, 1024, 1024, new_cache()))))
    assert h["D"] > 1.25 * h["A"] and h["P"] < 0.8 * h["A"], h


def _stats(root: Path) -> np.ndarray:
    """Mean R, G, B in tumor, nucleus fraction and sharpness (mean |Laplacian|) in tumor."""
    img = _l0(root).astype(np.float32)
    tum = _tumor_l0(root, img.shape[:2])
    g = img.mean(-1)
    lap = np.abs(ndimage.laplace(g))
    return np.array([*img[tum].mean(0), 100 * (g[tum] < 140).mean(), 10 * lap[tum].mean()])


def test_styles_give_visibly_different_statistics(styled: dict[str, Path]) -> None:
    names = list(STYLES)
    st = {n: _stats(styled[n]) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(st[a] - st[b]).max() > 8, (a, b, st[a], st[b])
    # Blurred styles are less sharp than default.
    for n in ("lab3", "lab4"):
        assert st[n][4] < 0.8 * st["default"][4], (n, st[n], st["default"])


# --- streaming: seamless blocks and parallel rows -----------------------------------------------------------


def test_styled_blocks_are_seamless() -> None:
    """A blurred, folded, pen-marked scene: one block equals the same pixels drawn as four blocks."""
    from tupac.synth.render import new_cache, render_block

    style = replace(STYLES["lab4"], folds_per_slide=6.0, pen_marks_per_slide=3.0, blur_sigma=(0.5, 2.5))
    sc = S.make_scene(S.SceneSpec(9, 2, (1600, 1200), center_by_name("D"), 30.0, style=style))
    assert len(sc.folds) and len(sc.pens) and sc.focus is not None
    x0, y0, w, h = 300, 200, 700, 600
    whole = render_block(sc, x0, y0, w, h, new_cache())
    parts = np.zeros_like(whole)
    for dy, dx in ((0, 0), (0, 333), (257, 0), (257, 333)):
        hh, ww = (257 if dy == 0 else h - 257), (333 if dx == 0 else w - 333)
        parts[dy : dy + hh, dx : dx + ww] = render_block(sc, x0 + dx, y0 + dy, ww, hh, new_cache())
    assert np.array_equal(whole, parts)


def test_styled_slide_rendered_by_parallel_rows_is_the_same_file(styled: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "w2"
    generate_cohort(root, n_slides=1, seed=SEED, size_um=SIZE_UM, mitosis_images=0, workers=2, style="lab4")
    a = (root / "training_image_data" / f"{SID}.svs").read_bytes()
    assert a == (styled["lab4"] / "training_image_data" / f"{SID}.svs").read_bytes()
    looks = (root / "truth" / SID / "lookalikes.csv").read_text()
    assert looks == (styled["lab4"] / "truth" / SID / "lookalikes.csv").read_text()


# --- command line -------------------------------------------------------------------------------------------


def test_synth_cli_style_centers_and_list(tmp_path: Path) -> None:
    from tupac.cli import app

    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["synth", str(out), "--slides", "2", "--seed", "1", "--size-um", "500x400",
                                   "--mitosis-images", "0", "--style", "lab2", "--centers", "D,A"])
    assert res.exit_code == 0, res.output
    assert "lab2" in res.output
    meta = _meta(out)
    assert meta["style"] == "lab2" and [s["center"] for s in meta["slides"].values()] == ["D", "A"]
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--style", "nope"])
    assert res.exit_code != 0 and "unknown style 'nope'" in res.output and "lab4" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x").exists()
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--centers", "A,Z"])
    assert res.exit_code != 0 and "unknown center 'Z'" in res.output
    res = CliRunner().invoke(app, ["synth", "--list-styles"])
    assert res.exit_code == 0 and all(n in res.output for n in STYLES)
    res = CliRunner().invoke(app, ["synth", "--help"])
    assert "--style" in res.output and "lab3" in res.output
    res = CliRunner().invoke(app, ["synth"])
    assert res.exit_code != 0 and "OUT" in res.output


# --- for a person to look at ----------------------------------------------------------------------------


def test_write_style_crops_for_review(styled: dict[str, Path], artifacts_dir: Path) -> None:
    """Per style: the slide at 1 um/px and a 600 px tumor crop at 40x, side by side in one sheet each."""
    from PIL import Image

    out = artifacts_dir / "synth-styles"
    out.mkdir(parents=True, exist_ok=True)
    overviews, crops = [], []
    for name in STYLES:
        l0 = _l0(styled[name])
        tum = _tumor_l0(styled[name], l0.shape[:2])
        ys, xs = np.nonzero(tum[::16, ::16])
        cy, cx = int(np.median(ys)) * 16, int(np.median(xs)) * 16
        y0, x0 = min(max(cy - 300, 0), l0.shape[0] - 600), min(max(cx - 300, 0), l0.shape[1] - 600)
        crops.append(l0[y0 : y0 + 600, x0 : x0 + 600])
        overviews.append(l0[::4, ::4])
    for fname, tiles in (("overview-1um.png", overviews), ("tumor-600px-40x.png", crops)):
        Image.fromarray(np.concatenate(tiles, axis=1)).save(out / fname)
        assert (out / fname).stat().st_size > 1000
    (out / "README.txt").write_text("left to right: " + ", ".join(STYLES) + f" (seed {SEED}, {SIZE_UM[0]:g} x "
                                    f"{SIZE_UM[1]:g} um, slide 1)\n")
