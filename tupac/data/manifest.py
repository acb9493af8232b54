"""The cohort to run: a manifest CSV or the slides of a TUPAC16-layout dataset.

A manifest is a CSV with a header. Columns ``slide_id`` and ``path`` are required, ``mpp`` is
optional (µm/px, for slides whose files carry none); any other column is an error, so that a
typo such as ``mmp`` is not silently ignored::

    slide_id,path,mpp
    TUPAC-TR-001,slides/TUPAC-TR-001.svs,
    case-17,/data/scanner2/case17.tiff,0.2462

Relative paths are resolved against the manifest's folder, so a manifest travels with its
slides. Slide IDs become file names (``RUN/slides/<id>.zarr``), so they must be plain names:
letters, digits, ``.``, ``_`` and ``-``, not starting with a dot (which also excludes ``..``).
A missing slide file is *not* a manifest error: the entry says ``exists=False`` and the job
turns it into one FAILED slide while the rest of the cohort goes on.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tupac.data.layout import GROUND_TRUTH, SLIDE_SUFFIXES, SLIDES_DIR, Tupac16Dataset
from tupac.errors import DatasetLayoutError

__all__ = ["ManifestEntry", "slide_id_problem", "read_manifest", "from_dataset", "load_cohort"]

REQUIRED = ("slide_id", "path")
OPTIONAL = ("mpp",)
_PLAIN = re.compile(r"^[A-Za-z0-9._-]+$")
# Longest ID that still leaves room for ".mitoses.csv" within a 255-byte file name.
MAX_ID_LEN = 200


@dataclass(frozen=True)
class ManifestEntry:
    """One slide of the cohort.

    Attributes
    ----------
    slide_id : str
        A plain name, used for output file names.
    path : Path
        The slide file, absolute.
    mpp : float or None
        µm/px supplied by the user for slides without MPP metadata; None to use the file's.
    line : int or None
        1-based line of the manifest this entry came from (None for ``--data``).
    """

    slide_id: str
    path: Path
    mpp: float | None = None
    line: int | None = None

    @property
    def exists(self) -> bool:
        """Whether the slide file is there now (checked on each access, not cached)."""
        return self.path.is_file()


def slide_id_problem(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot be used as a file name, or None when it can.

    >>> slide_id_problem("TUPAC-TR-001") is None
    True
    >>> slide_id_problem("../etc")
    "slide ID '../etc' is not a plain name (only letters, digits, '.', '_', '-'; no path separators)"
    """
    if not slide_id:
        return "empty slide ID"
    if len(slide_id) > MAX_ID_LEN:
        return f"slide ID is {len(slide_id)} characters long, at most {MAX_ID_LEN} are allowed"
    if not _PLAIN.match(slide_id):
        return f"slide ID {slide_id!r} is not a plain name (only letters, digits, '.', '_', '-'; no path separators)"
    if slide_id.startswith("."):
        return f"slide ID {slide_id!r} starts with a dot (hidden files, '.' and '..' are not slide IDs)"
    return None


def claim_slide_id(path: Path, line: int, sid: str, seen: dict[str, int], twice: str | None = None) -> None:
    """Check that ``sid`` is a usable slide ID not yet seen in the file, and record its ``line``.

    Raises
    ------
    DatasetLayoutError
        Naming the file and line: why the ID is unusable (:func:`slide_id_problem`), or ``twice``
        (default ``duplicate slide ID 'X'``) with the line that had it first.
    """
    problem = slide_id_problem(sid)
    if problem:
        raise DatasetLayoutError(path, problem, line)
    if sid in seen:
        what = twice or f"duplicate slide ID {sid!r}"
        raise DatasetLayoutError(path, f"{what} (first on line {seen[sid]})", line)
    seen[sid] = line


def _parse_mpp(text: str, path: Path, line: int) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetLayoutError(path, f"mpp must be a number of µm/px, got {text!r}", line) from None
    if not math.isfinite(value) or value <= 0:
        raise DatasetLayoutError(path, f"mpp must be a positive µm/px, got {text!r}", line)
    return value


def _check_header(header: list[str] | None, path: Path) -> list[str]:
    if header is None:
        raise DatasetLayoutError(path, "manifest is empty (expected a header 'slide_id,path[,mpp]')", 1)
    cols = [c.strip() for c in header]
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise DatasetLayoutError(path, f"header lacks {', '.join(missing)}: got {','.join(cols)!r}, expected 'slide_id,path[,mpp]'", 1)
    unknown = [c for c in cols if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise DatasetLayoutError(path, f"unknown column(s) {', '.join(map(repr, unknown))}; allowed: slide_id, path, mpp", 1)
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise DatasetLayoutError(path, f"column(s) {', '.join(dup)} appear twice in the header", 1)
    return cols


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read and validate a cohort manifest.

    Parameters
    ----------
    path : path-like
        The CSV (UTF-8, a byte-order mark is accepted).

    Returns
    -------
    list of ManifestEntry
        In file order; blank lines are skipped.

    Raises
    ------
    DatasetLayoutError
        Missing/unreadable file, bad header, a row with the wrong number of fields, an ID that is
        not a plain name, a duplicate ID, an empty path or a bad ``mpp``; the message names the
        file and line.
    """
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DatasetLayoutError(path, f"cannot read manifest: {e.strerror or e}") from None
    base = path.resolve().parent
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    with f:
        reader = csv.reader(f)
        try:
            cols = _check_header(next(reader, None), path)
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(cols):
                    raise DatasetLayoutError(path, f"expected {len(cols)} fields ({','.join(cols)}), got {len(row)}", line)
                rec = dict(zip(cols, row))
                entries.append(_entry(rec, base, path, line, seen))
        except UnicodeDecodeError as e:
            raise DatasetLayoutError(path, f"manifest is not UTF-8 text ({e.reason})") from None
        except csv.Error as e:
            raise DatasetLayoutError(path, f"malformed CSV: {e}", reader.line_num) from None
    return entries


def _entry(rec: dict[str, str], base: Path, path: Path, line: int, seen: dict[str, int]) -> ManifestEntry:
    sid = rec["slide_id"].strip()
    claim_slide_id(path, line, sid, seen)
    raw = rec["path"].strip()
    if not raw:
        raise DatasetLayoutError(path, f"empty path for slide {sid!r}", line)
    slide_path = Path(raw).expanduser()
    if not slide_path.is_absolute():
        slide_path = base / slide_path
    mpp = _parse_mpp(rec.get("mpp", ""), path, line)
    return ManifestEntry(sid, slide_path, mpp, line)


def from_dataset(root: str | Path) -> list[ManifestEntry]:
    """The slides of a TUPAC16-layout dataset root, in ID order.

    With ``training_ground_truth.csv`` present the root is opened with
    :class:`tupac.data.Tupac16Dataset` (which validates labels, ROIs and names at once, and
    accepts a partial download); without it (an unlabelled test set) the slide folder
    ``training_image_data/`` is listed directly, accepting ``.svs``/``.tif``/``.tiff`` files
    whose stems are plain slide IDs.

    Raises
    ------
    DatasetLayoutError
        Root or slide folder missing, no slides, or a broken layout.
    """

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(root, "dataset root is not a folder")
    if (root / GROUND_TRUTH).is_file():
        ds = Tupac16Dataset(root, allow_missing_slides=True)
        entries = [ManifestEntry(s.slide_id, s.path.resolve()) for s in ds.slides]
    else:
        folder = root / SLIDES_DIR
        if not folder.is_dir():
            raise DatasetLayoutError(folder, f"slide folder missing (expected {SLIDES_DIR}/ under the dataset root)")
        entries = []
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES:
                problem = slide_id_problem(p.stem)
                if problem:
                    raise DatasetLayoutError(p, problem)
                entries.append(ManifestEntry(p.stem, p.resolve()))
        dup = sorted(sid for sid, n in Counter(e.slide_id for e in entries).items() if n > 1)
        if dup:
            raise DatasetLayoutError(folder, f"several files for slide ID {dup[0]} (e.g. .svs and .tif)")
    if not entries:
        raise DatasetLayoutError(root / SLIDES_DIR, "no slides (.svs, .tif, .tiff) in the dataset")
    return entries


def load_cohort(*, manifest: str | Path | None = None, data: str | Path | None = None) -> list[ManifestEntry]:
    """The cohort from exactly one of ``manifest`` (a CSV) or ``data`` (a TUPAC16 root)."""
    if (manifest is None) == (data is None):
        raise ValueError("give exactly one of manifest= (a CSV) or data= (a TUPAC16 dataset root)")
    return read_manifest(manifest) if manifest is not None else from_dataset(data)
