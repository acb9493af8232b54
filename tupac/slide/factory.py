"""``open_slide``: one entry point that picks a backend and keeps the caller's process safe.

``backend="auto"`` uses cuCIM only where it decodes correctly and fast: files OpenSlide
recognizes as Aperio SVS or generic tiled TIFF whose pyramid tiles are JPEG or Aperio JPEG 2000
(checked in-process with OpenSlide's format detection and tifffile, both safe on any input), and
which pass the child-process probe (``probe.probe_cucim``). Everything else goes to OpenSlide.
"""

from __future__ import annotations

from pathlib import Path

from tupac.errors import ConfigError, SlideOpenError
from tupac.slide.base import BaseSlideReader
from tupac.slide.cucim_backend import CuCIMReader
from tupac.slide.openslide_backend import OpenSlideReader
from tupac.slide.probe import PROBE_TIMEOUT_S, cucim_version
from tupac.slide.tiles import CUCIM_COMPRESSIONS

BACKENDS = ("auto", "openslide", "cucim")
_AUTO_VENDORS = ("aperio", "generic-tiff")


def cucim_format_problem(path: Path) -> str | None:
    """Why cuCIM should not read ``path`` (judged from the TIFF structure), or None.

    cuCIM is trusted with tiled 8-bit RGB TIFF pyramids compressed with JPEG or Aperio
    JPEG 2000; other compressions (deflate, LZW, vendor codecs) are left to OpenSlide.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            tiled = [p for p in tf.pages if getattr(p, "is_tiled", False)]
            if not tiled or tiled[0] is not tf.pages[0]:
                return "level 0 is not a tiled TIFF image"
            for p in tiled:
                compression = int(p.compression)
                if compression not in CUCIM_COMPRESSIONS:
                    name = getattr(p.compression, "name", None)
                    label = f"{name} ({compression})" if name else str(compression)
                    return f"TIFF compression {label} is not one cuCIM decodes (JPEG, Aperio JPEG 2000)"
                if p.bitspersample != 8 or p.samplesperpixel not in (3, 4):
                    return f"{p.samplesperpixel} samples of {p.bitspersample} bits is not 8-bit RGB"
    except Exception as e:  # tifffile raises many types on non-TIFF input
        return f"not a TIFF file cuCIM can read ({type(e).__name__}: {e})"
    return None


def _openslide_vendor(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


def choose_backend(path: str | Path) -> tuple[str, str]:
    """The backend ``auto`` would use for ``path``, and why (no probe is run here)."""
    path = Path(path)
    if cucim_version() is None:
        return "openslide", "cuCIM is not installed"
    vendor = _openslide_vendor(path)
    if vendor not in _AUTO_VENDORS:
        return "openslide", f"format {vendor or 'unknown'} is read by OpenSlide"
    problem = cucim_format_problem(path)
    if problem is not None:
        return "openslide", problem
    return "cucim", f"{vendor} tiled TIFF with JPEG / JPEG 2000 tiles"


def open_slide(
    path: str | Path, backend: str = "auto", mpp: float | None = None, probe_timeout: float = PROBE_TIMEOUT_S
) -> BaseSlideReader:
    """Open a whole-slide image.

    Parameters
    ----------
    path : str or Path
        Slide file (Aperio SVS, tiled TIFF, or any format OpenSlide reads).
    backend : {"auto", "openslide", "cucim"}
        ``auto`` prefers cuCIM where it is safe and correct, else OpenSlide.
    mpp : float, optional
        Level-0 micrometers per pixel, for slides whose metadata has none (or to override it).
    probe_timeout : float
        Seconds for the one-time cuCIM crash-safety probe of this file.

    Returns
    -------
    SlideReader
        A reader (context manager); ``reader.backend`` names the backend chosen and
        ``reader.backend_reason`` why.

    Raises
    ------
    SlideOpenError
        Missing file, not a slide, or (``backend="cucim"``) a file cuCIM cannot read safely.
    MissingMPPError
        The metadata has no MPP and ``mpp`` is None.
    ConfigError
        Unknown ``backend``.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    path = Path(path)
    if not path.exists():
        raise SlideOpenError(path, "no such file")
    if not path.is_file():
        raise SlideOpenError(path, "not a regular file")

    if backend == "openslide":
        return _tag(OpenSlideReader(path, mpp), "requested")
    if backend == "cucim":
        problem = cucim_format_problem(path)
        if problem is not None:
            raise SlideOpenError(path, f"cuCIM cannot read it: {problem}")
        return _tag(CuCIMReader(path, mpp, probe_timeout=probe_timeout), "requested")
    choice, reason = choose_backend(path)
    if choice == "cucim":
        try:
            return _tag(CuCIMReader(path, mpp, probe_timeout=probe_timeout), reason)
        except SlideOpenError as e:
            reason = f"cuCIM refused: {e.problem}"
    return _tag(OpenSlideReader(path, mpp), reason)


def _tag(reader: BaseSlideReader, reason: str) -> BaseSlideReader:
    reader.backend_reason = reason
    return reader
