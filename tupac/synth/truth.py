"""Truth files of a phantom cohort: region masks as PNG (with their MPP), mitosis tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tupac.preprocess.mask_png import read_mask_png, write_mask_png as write_png
from tupac.preprocess.tissue import TissueMask


def write_mask_png(path: Path, mask: np.ndarray, mpp: float) -> None:
    """Save a boolean mask as a 0/255 8-bit PNG with ``mpp`` (um/px) in its text metadata."""
    write_png(path, TissueMask(np.asarray(mask, dtype=bool), float(mpp)))


def read_truth_mask(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a truth mask written by the phantom generator.

    Parameters
    ----------
    path : str or Path
        ``truth/<slide_id>/tissue.png`` or ``tumor.png``.

    Returns
    -------
    mask : ndarray of bool, shape (rows, cols)
    mpp : float
        Micrometers per mask pixel (4.0 for generated cohorts).

    Raises
    ------
    DatasetLayoutError
        The file is missing, not an image, or has no ``mpp`` text entry.
    """
    mask = read_mask_png(path)
    return mask.mask, mask.mpp


def write_mitoses_csv(path: Path, x: np.ndarray, y: np.ndarray, phases: list[str]) -> None:
    """All mitoses of a slide: header ``x,y,phase``, level-0 pixel centers."""
    lines = ["x,y,phase"] + [f"{int(round(a))},{int(round(b))},{p}" for a, b, p in zip(x, y, phases)]
    path.write_text("\n".join(lines) + "\n")


def write_points_rc(path: Path, rows: np.ndarray, cols: np.ndarray) -> None:
    """TUPAC16 mitosis ground truth: ``row,col`` per line, no header; an EMPTY file when there are none."""
    path.write_text("".join(f"{int(round(r))},{int(round(c))}\n" for r, c in zip(rows, cols)))
