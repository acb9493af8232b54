"""The TUPAC16 dataset layout, exactly as distributed, validated when it is opened.

::

    ROOT/
      training_image_data/TUPAC-TR-001.svs ...     slides (IDs from the file names)
      training_ground_truth.csv                    row i: mitosis score (1-3), proliferation score
      .../TUPAC-TR-XXX-ROI.csv                     anywhere under ROOT: x,y,width,height per line
      mitoses/mitoses_image_data/NN/MM.tif         auxiliary mitosis images
      mitoses/mitoses_ground_truth/NN/MM.csv       row,col per mitosis (empty file: none)

Opening a root reads every label, ROI and mitosis file (all small) so that a broken dataset
fails at once, with the file and line, rather than hours into a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tupac.data.ids import TRAIN_PREFIX, parse_slide_id
from tupac.data.readers import read_ground_truth, read_mitosis_csv, read_roi_csv
from tupac.errors import DatasetLayoutError

__all__ = ["SlideEntry", "MitosisImage", "Tupac16Dataset", "SLIDE_SUFFIXES"]

SLIDES_DIR = "training_image_data"
GROUND_TRUTH = "training_ground_truth.csv"
MITOSIS_IMAGES = Path("mitoses") / "mitoses_image_data"
MITOSIS_TRUTH = Path("mitoses") / "mitoses_ground_truth"
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff")
_ROI_NAME = re.compile(r"^(TUPAC-T[RE]-\d{3})-ROI\.csv$")


@dataclass(frozen=True)
class SlideEntry:
    """One slide of the dataset with its labels.

    Attributes
    ----------
    slide_id : str
        ``TUPAC-TR-XXX``.
    path : Path
        The slide file.
    mitosis_score : int
        Pathologist's mitosis-counting score, 1-3.
    proliferation_score : float
        Molecular (RNA) proliferation score.
    rois : ndarray of int64, shape (n, 4)
        Regions of interest ``(x, y, width, height)`` in level-0 pixels; n = 0 when the slide has none.
    roi_path : Path or None
        The ROI file the regions came from.
    """

    slide_id: str
    path: Path
    mitosis_score: int
    proliferation_score: float
    rois: np.ndarray = field(repr=False)
    roi_path: Path | None = None


@dataclass(frozen=True)
class MitosisImage:
    """One image of the auxiliary mitosis set.

    Attributes
    ----------
    case, image : int
        ``NN`` and ``MM`` of ``NN/MM.tif``.
    path, truth_path : Path
        The image and its ground-truth CSV.
    points_rc : ndarray of float64, shape (n, 2)
        ``(row, col)`` of each annotated mitosis, image pixels.
    """

    case: int
    image: int
    path: Path
    truth_path: Path
    points_rc: np.ndarray = field(repr=False)

    @property
    def key(self) -> str:
        """``"NN/MM"``, the relative name used for submission files."""
        return f"{self.path.parent.name}/{self.path.stem}"


def _list_slides(folder: Path) -> dict[str, Path]:
    slides: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES:
            continue
        try:
            prefix, _ = parse_slide_id(p.stem)
        except ValueError as e:
            raise DatasetLayoutError(p, f"slide file name is {e}") from None
        if prefix != TRAIN_PREFIX:
            raise DatasetLayoutError(p, f"{SLIDES_DIR} holds training slides ({TRAIN_PREFIX}-XXX), not {p.stem}")
        if p.stem in slides:
            raise DatasetLayoutError(p, f"duplicate slide ID {p.stem} (also {slides[p.stem].name})")
        slides[p.stem] = p
    return slides


def _find_rois(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*-ROI.csv")):
        m = _ROI_NAME.match(p.name)
        if not m:
            raise DatasetLayoutError(p, "ROI file name must be TUPAC-TR-XXX-ROI.csv")
        sid = m.group(1)
        if sid in found:
            raise DatasetLayoutError(p, f"duplicate ROI file for {sid} (also {found[sid]})")
        found[sid] = p
    return found


def _numbered(folder: Path, suffixes: tuple[str, ...]) -> dict[tuple[int, int], Path]:
    """``NN/MM.ext`` files under ``folder`` keyed by ``(NN, MM)``."""
    out: dict[tuple[int, int], Path] = {}
    for p in sorted(folder.glob("*/*")):
        if not p.is_file() or p.suffix.lower() not in suffixes:
            continue
        if not (p.parent.name.isdigit() and p.stem.isdigit()):
            raise DatasetLayoutError(p, "expected NN/MM names with numbers (e.g. 01/05)")
        key = (int(p.parent.name), int(p.stem))
        if key in out:
            raise DatasetLayoutError(p, f"duplicate image {p.parent.name}/{p.stem} (also {out[key].name})")
        out[key] = p
    return out


def _mitosis_images(root: Path) -> tuple[MitosisImage, ...]:
    img_dir, truth_dir = root / MITOSIS_IMAGES, root / MITOSIS_TRUTH
    if not img_dir.is_dir() and not truth_dir.is_dir():
        return ()
    if not img_dir.is_dir():
        raise DatasetLayoutError(img_dir, f"folder missing (its ground truth {truth_dir} exists)")
    if not truth_dir.is_dir():
        raise DatasetLayoutError(truth_dir, f"folder missing (the images {img_dir} exist)")
    images = _numbered(img_dir, (".tif", ".tiff"))
    truths = _numbered(truth_dir, (".csv",))
    for key, t in truths.items():
        if key not in images:
            raise DatasetLayoutError(t, f"ground truth for an image that does not exist ({img_dir}/{t.parent.name}/{t.stem}.tif)")
    out = []
    for key, p in images.items():
        t = truths.get(key, truth_dir / p.parent.name / f"{p.stem}.csv")
        if key not in truths:
            raise DatasetLayoutError(t, f"mitosis ground truth missing for image {p} (an empty file means no mitosis)")
        out.append(MitosisImage(key[0], key[1], p, t, read_mitosis_csv(t)))
    return tuple(out)


@dataclass(frozen=True)
class Tupac16Dataset:
    """A TUPAC16 dataset root, read and validated at construction.

    Parameters
    ----------
    root : path-like
        The folder that holds ``training_image_data/`` and ``training_ground_truth.csv``
        (and optionally ``mitoses/`` and ROI files).
    allow_missing_slides : bool
        Accept labels for slides whose files are absent (a partial download). By default that is
        an error, as is a slide without labels.

    Attributes
    ----------
    slides : tuple of SlideEntry
        Slides with labels and ROIs, in ID order.
    mitosis_images : tuple of MitosisImage
        The auxiliary mitosis set, in ``(NN, MM)`` order; empty when ``mitoses/`` is absent.
    """

    root: Path
    allow_missing_slides: bool = False
    slides: tuple[SlideEntry, ...] = field(init=False, repr=False)
    mitosis_images: tuple[MitosisImage, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        root = Path(self.root)
        object.__setattr__(self, "root", root)
        if not root.is_dir():
            raise DatasetLayoutError(root, "dataset root is not a folder")
        mitoses = _mitosis_images(root)
        slide_dir, gt_path = root / SLIDES_DIR, root / GROUND_TRUTH
        if not slide_dir.is_dir() and not gt_path.exists():
            if not mitoses:
                raise DatasetLayoutError(root, f"no {SLIDES_DIR}/, {GROUND_TRUTH} or {MITOSIS_IMAGES}/ here")
            slides: tuple[SlideEntry, ...] = ()
        else:
            if not slide_dir.is_dir():
                raise DatasetLayoutError(slide_dir, f"slide folder missing (labels are in {gt_path.name})")
            slides = self._slides(root, _list_slides(slide_dir), gt_path)
        object.__setattr__(self, "slides", slides)
        object.__setattr__(self, "mitosis_images", mitoses)

    def _slides(self, root: Path, files: dict[str, Path], gt_path: Path) -> tuple[SlideEntry, ...]:
        labels = read_ground_truth(gt_path)
        labelled = dict(zip(labels["slide_id"], range(len(labels))))
        unlabelled = sorted(set(files) - set(labelled))
        if unlabelled:
            raise DatasetLayoutError(
                files[unlabelled[0]], f"slide has no labels: {gt_path} has {len(labels)} rows ({len(unlabelled)} slides unlabelled)"
            )
        missing = sorted(set(labelled) - set(files))
        if missing and not self.allow_missing_slides:
            raise DatasetLayoutError(
                gt_path,
                f"labels for {len(missing)} slides that are not in {root / SLIDES_DIR}, first {missing[0]} "
                "(pass allow_missing_slides=True for a partial download)",
                labelled[missing[0]] + 1,
            )
        rois = _find_rois(root)
        orphans = sorted(set(rois) - set(files))
        if orphans and not self.allow_missing_slides:
            raise DatasetLayoutError(rois[orphans[0]], f"ROI file for a slide that does not exist ({orphans[0]})")
        entries = []
        for sid in sorted(files):
            row = labels.iloc[labelled[sid]]
            roi_path = rois.get(sid)
            entries.append(
                SlideEntry(
                    sid,
                    files[sid],
                    int(row["mitosis_score"]),
                    float(row["proliferation_score"]),
                    read_roi_csv(roi_path) if roi_path else np.zeros((0, 4), np.int64),
                    roi_path,
                )
            )
        return tuple(entries)

    def __len__(self) -> int:
        return len(self.slides)

    def slide(self, slide_id: str) -> SlideEntry:
        """The entry of ``slide_id``; KeyError naming the dataset when absent."""
        for s in self.slides:
            if s.slide_id == slide_id:
                return s
        raise KeyError(f"{slide_id} is not a slide of {self.root}")

    def labels(self) -> pd.DataFrame:
        """One row per slide: ``slide_id``, ``path``, ``mitosis_score``, ``proliferation_score``, ``n_rois``."""
        return pd.DataFrame(
            {
                "slide_id": [s.slide_id for s in self.slides],
                "path": [str(s.path) for s in self.slides],
                "mitosis_score": np.asarray([s.mitosis_score for s in self.slides], np.int64),
                "proliferation_score": np.asarray([s.proliferation_score for s in self.slides], np.float64),
                "n_rois": np.asarray([len(s.rois) for s in self.slides], np.int64),
            }
        )

    def mitosis_counts(self) -> dict[str, int]:
        """Annotated mitoses per auxiliary image, keyed ``"NN/MM"``."""
        return {m.key: len(m.points_rc) for m in self.mitosis_images}
