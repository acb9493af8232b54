"""Binary masks as 0/255 PNGs that carry their resolution in the PNG text metadata (``mpp``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tupac.errors import DatasetLayoutError
from tupac.preprocess.tissue import TissueMask

__all__ = ["write_mask_png", "read_mask_png"]


def write_mask_png(path: str | Path, tissue: TissueMask) -> Path:
    """Write ``tissue.mask`` as an 8-bit 0/255 PNG with text chunk ``mpp`` (um/px)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("mpp", repr(float(tissue.mpp)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(tissue.mask, 255, 0).astype(np.uint8), mode="L").save(path, pnginfo=info)
    return path


def read_mask_png(path: str | Path, mpp: float | None = None) -> TissueMask:
    """Read a mask PNG written by :func:`write_mask_png` (any non-zero pixel is tissue).

    ``mpp`` is taken from the PNG's text metadata, or from the argument when the file has none.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
            arr = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise DatasetLayoutError(path, "mask PNG not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetLayoutError(path, f"not a readable PNG: {e}") from None
    if "mpp" in text:
        try:
            mpp = float(text["mpp"])
        except ValueError:
            raise DatasetLayoutError(path, f"PNG text 'mpp' is not a number: {text['mpp']!r}") from None
    if mpp is None or not (math.isfinite(mpp) and mpp > 0):
        raise DatasetLayoutError(path, f"mask has no valid 'mpp' in its PNG metadata (got {mpp!r}) and none was given")
    return TissueMask(arr > 0, float(mpp))
