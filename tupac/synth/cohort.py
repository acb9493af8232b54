"""A phantom TUPAC16 cohort: slides, labels, ROIs, the mitosis auxiliary set and exact truth.

Layout written under ``out`` (TUPAC16 as distributed, plus ``truth/``)::

    training_image_data/TUPAC-TR-001.svs ...
    training_ground_truth.csv                 no header: mitosis score (1-3), proliferation score
    ROI/TUPAC-TR-XXX-ROI.csv                  no header: x,y,width,height (level-0 px), inside tumor
    mitoses/mitoses_image_data/NN/MM.tif      2000x2000 RGB at 0.25 um/px
    mitoses/mitoses_ground_truth/NN/MM.csv    no header: row,col; empty when no mitosis
    truth/TUPAC-TR-XXX/{tissue,tumor}.png     0/255 masks at 4 um/px, PNG text 'mpp'
    truth/TUPAC-TR-XXX/mitoses.csv            header x,y,phase (level-0 px), every mitosis
    truth/TUPAC-TR-XXX/lookalikes.csv         header x,y,kind (level-0 px): apoptotic_body, pyknotic,
                                              lymph_cluster (its center); NOT mitoses
    truth/TUPAC-TR-XXX/{fold,pen}.png         0/255 at 4 um/px, only on slides that have folds / pen marks
    truth/cohort.json                         style; per slide: style, center, grade, score, counts, areas,
                                              stains, look-alike counts, artifacts

Styles (:mod:`tupac.synth.style`) change the look, never the meaning of the truth: ``mitoses.csv`` lists
exactly the mitoses drawn (look-alikes are in ``lookalikes.csv`` only); ``tissue.png`` and ``tumor.png``
are the section's regions. A pen stroke on glass is not tissue, and where ink or a fold covers tissue
the masks still say tissue (and tumor): the section is there, under the ink or folded on itself. The
strokes and folds themselves are in ``pen.png`` / ``fold.png`` and in ``cohort.json``.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from tupac.errors import ConfigError
from tupac.synth import truth as T
from tupac.synth.aperio import write_aperio_svs
from tupac.synth.render import new_cache, render_block
from tupac.synth.scene import (
    INKS, MASK_STEP, MPP, Points, Scene, SceneSpec, band_weights, make_scene, mask_shape, pyknotic_points, region_masks,
)
from tupac.synth.sprites import MITOSIS_PHASES
from tupac.synth.stain import Center, center_by_name
from tupac.synth.style import DEFAULT, Style, style_by_name

GRADE_BANDS: dict[int, tuple[float, float]] = {1: (2.0, 8.0), 2: (11.0, 19.0), 3: (25.0, 45.0)}
"""Mitoses per mm^2 of tumor drawn for each grade (bands leave gaps so rounding cannot cross a threshold)."""
GRADE_THRESHOLDS = (9.5, 21.5)
"""Grade 1 below the first, grade 3 above the second (mitoses per mm^2 of tumor)."""
MITOSIS_PATCH_PX = 2000
MASK_MPP = MASK_STEP * MPP


def grade_from_density(density: float) -> int:
    """Mitotic score (1-3) from the true mitotic density (mitoses per mm^2 of tumor)."""
    return 1 + int(density >= GRADE_THRESHOLDS[0]) + int(density >= GRADE_THRESHOLDS[1])


def slide_id(i: int) -> str:
    """TUPAC16 training slide ID of the 1-based index ``i``."""
    return f"TUPAC-TR-{i:03d}"


@dataclass(frozen=True)
class SlideSummary:
    """What one phantom slide contains (areas in mm^2, density in mitoses per mm^2 of tumor)."""

    slide_id: str
    path: Path
    center: str
    size_px: tuple[int, int]
    grade: int
    score: float
    n_mitoses: int
    n_mitoses_in_tumor: int
    tumor_area_mm2: float
    tissue_area_mm2: float
    mitotic_density: float
    levels: tuple[tuple[int, int], ...]
    n_roi: int
    style: str = "default"


@dataclass(frozen=True)
class CohortSummary:
    """The generated cohort: its root, one ``SlideSummary`` per slide, the mitosis-set size."""

    root: Path
    seed: int
    slides: tuple[SlideSummary, ...]
    n_mitosis_images: int
    n_mitosis_set_mitoses: int
    style: str = "default"

    def to_table(self):
        """A ``rich.table.Table`` with one row per slide."""
        from rich.table import Table

        t = Table(title=f"phantom cohort, seed {self.seed}, style {self.style}")
        for col in ("slide", "ctr", "size px", "grade", "score", "mit.", "in tum.", "tum. mm²", "mit./mm²", "ROIs"):
            t.add_column(col, justify="right" if col not in ("slide", "ctr") else "left", no_wrap=True,
                         min_width=12 if col == "slide" else None)
        for s in self.slides:
            t.add_row(
                s.slide_id, s.center, f"{s.size_px[0]}x{s.size_px[1]}", str(s.grade), f"{s.score:+.3f}",
                str(s.n_mitoses), str(s.n_mitoses_in_tumor), f"{s.tumor_area_mm2:.2f}", f"{s.mitotic_density:.1f}",
                str(s.n_roi),
            )
        t.caption = f"mitosis auxiliary set: {self.n_mitosis_images} images, {self.n_mitosis_set_mitoses} mitoses"
        return t


def _plan(n_slides: int, seed: int) -> list[tuple[int, float, float]]:
    """(grade, drawn density, score noise) per slide; each grade present when n_slides >= 3."""
    rng = np.random.default_rng([seed, 0x51DE])
    grades = rng.permutation([1 + i % 3 for i in range(n_slides)])
    return [(int(g), float(rng.uniform(*GRADE_BANDS[int(g)])), float(rng.normal(0.0, 0.12))) for g in grades]


def proliferation_score(density: float, noise: float) -> float:
    """Phantom stand-in for the RNA proliferation score: log-linear in mitotic density, plus noise."""
    return round(0.35 * float(np.log((density + 1.0) / 13.0)) + noise, 4)


def _write_masks(scene: Scene, out_dir: Path) -> None:
    rows, cols = mask_shape(scene.size_px)
    tissue = np.zeros((rows, cols), bool)
    tumor = np.zeros((rows, cols), bool)
    for r0 in range(0, rows, 512):
        t, u = region_masks(scene, 0, r0, cols, min(512, rows - r0))
        tissue[r0 : r0 + t.shape[0]] = t
        tumor[r0 : r0 + u.shape[0]] = u
    T.write_mask_png(out_dir / "tissue.png", tissue, MASK_MPP)
    T.write_mask_png(out_dir / "tumor.png", tumor, MASK_MPP)


def _write_band_mask(scene: Scene, bands: Points, path: Path) -> None:
    """Where folds or pen strokes cover at least half of a 4-um mask pixel (written only if any)."""
    rows, cols = mask_shape(scene.size_px)
    mask = np.zeros((rows, cols), bool)
    for r0 in range(0, rows, 512):
        n = min(512, rows - r0)
        mask[r0 : r0 + n] = band_weights(bands, 0, r0 * MASK_STEP, cols, n, MASK_STEP) >= 0.5
    T.write_mask_png(path, mask, MASK_MPP)


def _bands_json(bands: Points, ink: bool = False) -> list[dict]:
    """Geometry of folds / pen strokes (level-0 px, radians), as :func:`band_weights` reads it."""
    out = []
    for i in range(len(bands)):
        c = bands.cols
        d = {"x": round(float(bands.x[i]), 1), "y": round(float(bands.y[i]), 1),
             "angle": round(float(c["angle"][i]), 4), "half_len": round(float(c["half_len"][i]), 1),
             "half_width": round(float(c["half_width"][i]), 1), "bend": round(float(c["bend"][i]), 4)}
        if ink:
            d["ink"] = list(INKS)[int(c["ink"][i])]
            d["strength"] = round(float(c["strength"][i]), 3)
        out.append(d)
    return out


def _write_lookalikes(scene: Scene, path: Path) -> dict[str, int]:
    """Every look-alike the scene placed (header ``x,y,kind``, level-0 px); returns the count per kind."""
    px, py = pyknotic_points(scene)
    groups = (("apoptotic_body", scene.apoptoses.x, scene.apoptoses.y), ("pyknotic", px, py),
              ("lymph_cluster", scene.lymph_clusters.x, scene.lymph_clusters.y))
    rows = [f"{int(round(a))},{int(round(b))},{kind}" for kind, xs, ys in groups for a, b in zip(xs, ys)]
    lines = ["x,y,kind"] + rows
    path.write_text("\n".join(lines) + "\n")
    return {kind: int(len(xs)) for kind, xs, _ in groups}


def _roi_boxes(scene: Scene, rng: np.random.Generator, n_max: int = 4) -> list[tuple[int, int, int, int]]:
    """Square boxes (x, y, w, h in level-0 px) lying wholly inside tumor, covering only part of it.

    Up to four boxes of at most 1.2 mm: TUPAC16's ROIs are about ten high-power fields each, larger
    than a whole tumor region of a small phantom slide, so here the largest inscribed squares of the
    biggest regions stand in for them (still leaving each region's rim and the small regions out).
    """
    rows, cols = mask_shape(scene.size_px)
    f = 4  # work at 16 um/px: enough to place boxes, light for whole-slide scenes
    _, tumor = region_masks(scene, 0, 0, cols, rows)
    small = tumor[::f, ::f]
    if not small.any():
        return []
    dist = ndimage.distance_transform_edt(small) - 1.5  # in 16-um pixels, conservative
    boxes = []
    for _ in range(n_max):
        i = int(np.argmax(dist))
        r = float(dist.flat[i])
        if r < 4:
            break
        cy, cx = divmod(i, dist.shape[1])
        half_um = min(0.68 * r * f * MASK_MPP, 600.0) * rng.uniform(0.75, 1.0)
        half = int(half_um / MPP)
        x0, y0 = int((cx + 0.5) * f * MASK_STEP) - half, int((cy + 0.5) * f * MASK_STEP) - half
        # Verify against the full-resolution mask; shrink until wholly inside tumor.
        while half > 64:
            sub = tumor[max(y0 // MASK_STEP, 0) : (y0 + 2 * half) // MASK_STEP + 1, max(x0 // MASK_STEP, 0) : (x0 + 2 * half) // MASK_STEP + 1]
            if x0 >= 0 and y0 >= 0 and sub.size and sub.all():
                break
            x0, y0, half = x0 + half // 8, y0 + half // 8, half - half // 8
        if half <= 64:
            break
        boxes.append((x0, y0, 2 * half, 2 * half))
        # Keep the next box away from this one.
        yy, xx = np.ogrid[: dist.shape[0], : dist.shape[1]]
        dist[(yy - cy) ** 2 + (xx - cx) ** 2 < (3 * r) ** 2] = 0
    return boxes


def _make_slide(root: Path, seed: int, i: int, size_px: tuple[int, int], plan: tuple[int, float, float],
                row_workers: int = 1, style: Style = DEFAULT, centers: tuple[Center, ...] | None = None) -> dict:
    sid = slide_id(i)
    _, density, noise = plan
    centers = centers or tuple(center_by_name(c) for c in style.centers)
    center = centers[(i - 1) % len(centers)]
    scene = make_scene(SceneSpec(seed, i, size_px, center, density, style=style))
    path = root / "training_image_data" / f"{sid}.svs"
    cache = new_cache()
    extra = {"Title": f"tupac phantom {sid}", "Center": center.name, "ScanScope ID": "TUPAC-SYNTH"}
    if style != DEFAULT:  # named only off the default, whose slides keep their bytes
        extra["Style"] = style.name
    levels = write_aperio_svs(
        path, size_px, lambda x0, y0, w, h: render_block(scene, x0, y0, w, h, cache),
        extra=extra, workers=row_workers, quality=style.jpeg_quality,
    )
    tdir = root / "truth" / sid
    tdir.mkdir(parents=True, exist_ok=True)
    _write_masks(scene, tdir)
    looks = _write_lookalikes(scene, tdir / "lookalikes.csv")
    for name, bands in (("fold", scene.folds), ("pen", scene.pens)):
        if len(bands):
            _write_band_mask(scene, bands, tdir / f"{name}.png")
    m = scene.mitoses
    T.write_mitoses_csv(tdir / "mitoses.csv", m.x, m.y, [MITOSIS_PHASES[p] for p in m.cols["phase"]])
    n_in = int(m.cols["in_tumor"].sum())
    true_density = n_in / scene.tumor_area_mm2 if scene.tumor_area_mm2 > 0 else 0.0
    # ROIs for two slides in three, like TUPAC16 where only some slides come with ROIs.
    boxes = _roi_boxes(scene, scene.rng(7)) if i % 3 != 0 else []
    if boxes:
        (root / "ROI").mkdir(exist_ok=True)
        (root / "ROI" / f"{sid}-ROI.csv").write_text("".join(f"{x},{y},{w},{h}\n" for x, y, w, h in boxes))
    return {
        "slide_id": sid,
        "path": str(path),
        "center": center.name,
        "size_px": list(size_px),
        "grade": grade_from_density(true_density),
        "score": proliferation_score(true_density, noise),
        "n_mitoses": len(m),
        "n_mitoses_in_tumor": n_in,
        "tumor_area_mm2": round(scene.tumor_area_mm2, 6),
        "tissue_area_mm2": round(scene.tissue_area_mm2, 6),
        "mitotic_density": round(true_density, 4),
        "drawn_density": round(density, 4),
        "levels": [list(d) for d in levels],
        "n_roi": len(boxes),
        "roi": [list(b) for b in boxes],
        "n_apoptotic_bodies": len(scene.apoptoses),
        "n_ducts": len(scene.ducts),
        "stain": center.to_dict(),
        "style": style.name,
        "n_pyknotic": looks["pyknotic"],
        "n_lymph_clusters": looks["lymph_cluster"],
        "jpeg_quality": style.jpeg_quality,
        "blur_sigma_px": list(style.blur_sigma),
        "folds": _bands_json(scene.folds),
        "pen_marks": _bands_json(scene.pens, ink=True),
    }


def _make_mitosis_image(root: Path, seed: int, k: int, style: Style = DEFAULT,
                        centers: tuple[Center, ...] | None = None) -> dict:
    """The k-th (0-based) auxiliary image: a tumor field with a known number of mitoses (some with none).

    Drawn in the cohort's style (nuclei, mitoses, look-alikes, center, blur); no folds or pen marks.
    """
    case, img = k // 3 + 1, k % 3 + 1
    rng = np.random.default_rng([seed, 0xA0C5, k])
    n = 0 if k % 4 == 1 else int(rng.integers(1, 6))
    centers = centers or tuple(center_by_name(c) for c in style.centers)
    center = centers[k % len(centers)]
    scene = make_scene(SceneSpec(seed, 100_000 + k, (MITOSIS_PATCH_PX,) * 2, center, 0.0, patch=True, n_mitoses=n,
                                 style=style))
    cache = new_cache()
    pix = np.concatenate(
        [render_block(scene, 0, y0, MITOSIS_PATCH_PX, min(256, MITOSIS_PATCH_PX - y0), cache) for y0 in range(0, MITOSIS_PATCH_PX, 256)]
    )
    idir = root / "mitoses" / "mitoses_image_data" / f"{case:02d}"
    gdir = root / "mitoses" / "mitoses_ground_truth" / f"{case:02d}"
    idir.mkdir(parents=True, exist_ok=True)
    gdir.mkdir(parents=True, exist_ok=True)
    px_per_cm = 1e4 / MPP
    tifffile.imwrite(idir / f"{img:02d}.tif", pix, photometric="rgb", resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER", metadata=None)
    m = scene.mitoses
    T.write_points_rc(gdir / f"{img:02d}.csv", m.y, m.x)
    return {"case": f"{case:02d}", "image": f"{img:02d}", "center": center.name, "n_mitoses": len(m),
            "phases": [MITOSIS_PHASES[p] for p in m.cols["phase"]], "style": style.name,
            "n_apoptotic_bodies": len(scene.apoptoses), "n_pyknotic": int(pyknotic_points(scene)[0].size)}


def generate_cohort(
    out: Path,
    n_slides: int,
    seed: int,
    size_um: tuple[float, float] = (3000.0, 2500.0),
    mitosis_images: int = 30,
    progress: bool = False,
    workers: int | None = None,
    style: str | Style = "default",
    centers: list[str] | tuple[str, ...] | None = None,
) -> CohortSummary:
    """Generate a phantom TUPAC16-layout cohort with exact ground truth.

    Parameters
    ----------
    out : Path
        Dataset root (created; existing files of the same names are overwritten).
    n_slides : int
        Number of slides (``TUPAC-TR-001`` ...); every grade occurs when ``n_slides >= 3``.
    seed : int
        Everything (pixels, labels, truth) is a function of ``seed``.
    size_um : (width, height)
        Slide extent in micrometers (level 0 at 0.25 um/px).
    mitosis_images : int
        Images in the mitosis auxiliary set (2000x2000 px, 3 per case folder).
    progress : bool
        Show a rich progress bar.
    workers : int, optional
        Processes to use (default: the CPU count). With more processes than jobs (one real-size
        slide), the jobs run one after another and each slide's tile rows are rendered by all of
        them; the files are the same either way.
    style : str or Style
        Visual style (a name in :data:`tupac.synth.style.STYLES`, or a Style). "default" is the
        look of every cohort generated before styles existed, byte for byte.
    centers : list of str, optional
        Stain centers cycled over the slides (and the mitosis images), e.g. ``["A", "B", "D"]``;
        default: the style's.

    Returns
    -------
    CohortSummary
    """
    if n_slides < 1 or n_slides > 999:
        raise ConfigError(f"n_slides must be in 1..999, got {n_slides}")
    if mitosis_images < 0:
        raise ConfigError(f"mitosis_images must be >= 0, got {mitosis_images}")
    w_um, h_um = size_um
    if w_um < 256 or h_um < 256:
        raise ConfigError(f"size_um must be at least 256 x 256 um, got {w_um} x {h_um}")
    size_px = (int(round(w_um / MPP)), int(round(h_um / MPP)))
    style_obj, center_objs = _resolve_style(style, centers)
    out = Path(out)
    (out / "training_image_data").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    plan = _plan(n_slides, seed)
    jobs = [("slide", i) for i in range(1, n_slides + 1)] + [("mitosis", k) for k in range(mitosis_images)]
    job = partial(_job, out=out, seed=seed, size_px=size_px, plan=plan, style=style_obj, centers=center_objs)
    results = _run_jobs(jobs, job, workers, progress)
    slides = [results[("slide", i)] for i in range(1, n_slides + 1)]
    mit = [results[("mitosis", k)] for k in range(mitosis_images)]
    _write_labels(out, slides)
    meta = {"seed": seed, "style": style_obj.name, "style_params": style_obj.to_dict(),
            "centers": [c.name for c in center_objs], "mpp": MPP, "mask_mpp": MASK_MPP,
            "grade_thresholds_per_mm2": list(GRADE_THRESHOLDS), "slides": {s["slide_id"]: s for s in slides},
            "mitosis_images": mit}
    (out / "truth" / "cohort.json").write_text(json.dumps(meta, indent=1))
    return CohortSummary(
        out, seed,
        tuple(SlideSummary(
            s["slide_id"], Path(s["path"]), s["center"], tuple(s["size_px"]), s["grade"], s["score"], s["n_mitoses"],
            s["n_mitoses_in_tumor"], s["tumor_area_mm2"], s["tissue_area_mm2"], s["mitotic_density"],
            tuple(tuple(d) for d in s["levels"]), s["n_roi"], s["style"],
        ) for s in slides),
        mitosis_images, int(sum(m["n_mitoses"] for m in mit)), style_obj.name,
    )


def _job(kind: str, i: int, row_workers: int, *, out: Path, seed: int, size_px: tuple[int, int], plan: list,
         style: Style, centers: tuple[Center, ...]) -> dict:
    """One slide (1-based ``i``) or mitosis image (0-based ``i``); module level so a pool can pickle it."""
    if kind == "slide":
        return _make_slide(out, seed, i, size_px, plan[i - 1], row_workers, style, centers)
    return _make_mitosis_image(out, seed, i, style, centers)


def _run_jobs(jobs: list[tuple[str, int]], job, workers: int | None, progress: bool) -> dict[tuple[str, int], dict]:
    """Run every ``job(kind, i, row_workers)``: in a process pool, or one after another with each slide's
    tile rows rendered by all the workers when there are fewer jobs than workers."""
    available = max(1, workers or os.cpu_count() or 1)
    workers = min(available, len(jobs))
    row_workers = available if workers == 1 else 1  # never a pool inside a pool
    results: dict[tuple[str, int], dict] = {}
    with _progress(progress, len(jobs)) as bar:
        task = bar.add_task("phantom cohort", total=len(jobs)) if bar else None
        if workers == 1:
            for kind, i in jobs:
                results[(kind, i)] = job(kind, i, row_workers)
                if bar:
                    bar.advance(task)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
                futs = {ex.submit(job, kind, i, 1): (kind, i) for kind, i in jobs}
                for fu in as_completed(futs):
                    results[futs[fu]] = fu.result()
                    if bar:
                        bar.advance(task)
    return results


def _resolve_style(style: str | Style, centers) -> tuple[Style, tuple[Center, ...]]:
    """The Style and the centers cycled over slides; unknown names are a ConfigError naming the choices."""
    try:
        st = style if isinstance(style, Style) else style_by_name(style)
        names = tuple(centers) if centers else st.centers
        if not names:
            raise ValueError("centers must name at least one center")
        return st, tuple(center_by_name(n) for n in names)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _write_labels(out: Path, slides: list[dict]) -> None:
    (out / "training_ground_truth.csv").write_text("".join(f"{s['grade']},{s['score']}\n" for s in slides))


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _progress(enabled: bool, total: int):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


__all__ = ["CohortSummary", "SlideSummary", "generate_cohort", "grade_from_density", "slide_id"]
