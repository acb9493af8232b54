"""``tupac tissue``: a slide's tissue mask as a 0/255 PNG (and an overlay for a person)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tupac.cli.app import app, console, run_guarded

OVERLAY_MAX_MPP = 4.0
"""Overlays are drawn at no coarser than this (um/px), so that a person can see the edges."""


def _write_overlay(reader, tissue, path: Path) -> float:
    """Draw the mask (nearest-neighbour upsampled) over the slide at a display resolution."""
    import numpy as np
    from PIL import Image

    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.preprocess.tissue import mask_overlay

    mpp = max(reader.mpp, min(tissue.mpp, OVERLAY_MAX_MPP))
    rgb = reader.thumbnail(mpp)
    h, w = rgb.shape[:2]
    rows = np.minimum((np.arange(h) * mpp / tissue.mpp).astype(np.int64), tissue.shape[0] - 1)
    cols = np.minimum((np.arange(w) * mpp / tissue.mpp).astype(np.int64), tissue.shape[1] - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask_overlay(rgb, tissue.mask[np.ix_(rows, cols)])).save(path)
    return mpp


def _tissue(slide: Path, out: Path, overlay: Optional[Path], mpp: Optional[float], mask_mpp: float, options: dict):
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.preprocess.mask_png import write_mask_png
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide

    with open_slide(slide, mpp=mpp) as reader:
        tissue = slide_tissue_mask(reader, mpp=mask_mpp, **options)
        write_mask_png(out, tissue)
        overlay_mpp = _write_overlay(reader, tissue, overlay) if overlay is not None else None
    return tissue, overlay_mpp


@app.command("tissue")
def tissue(
    slide: Path = typer.Argument(..., help="Slide file (SVS, tiled TIFF, anything OpenSlide reads)."),
    out: Path = typer.Option(..., "--out", "-o", help="Mask PNG to write (0 = glass, 255 = tissue)."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Also write the mask drawn over the slide (PNG)."),
    mpp: Optional[float] = typer.Option(
        None, "--mpp", min=0.0, help="Level-0 um/px, for slides whose metadata has none (overrides the slide's)."
    ),
    mask_mpp: float = typer.Option(8.0, "--mask-mpp", min=0.0, help="Resolution of the mask in um/px."),
    dilate_um: float = typer.Option(0.0, "--dilate-um", min=0.0, help="Grow the mask by this radius (um)."),
    max_hole_um2: float = typer.Option(
        20_000.0, "--max-hole-um2", min=0.0,
        help="Fill glass holes enclosed by tissue up to this area (um²): fat cells in, lumina and tears out; 0 fills none.",
    ),
    min_object_um2: float = typer.Option(
        20_000.0, "--min-object-um2", min=0.0, help="Drop tissue pieces smaller than this area (um²): dust, debris."
    ),
) -> None:
    """Compute the tissue mask of SLIDE (Otsu on HSV, morphology) and write it as a PNG.

    The PNG is at the mask's own scale; its ``mpp`` text metadata gives that scale in um/px.
    """
    options = {"dilation_um": dilate_um, "max_hole_um2": max_hole_um2, "min_object_um2": min_object_um2}
    tissue_mask, overlay_mpp = run_guarded(_tissue, slide, out, overlay, mpp, mask_mpp, options)
    h, w = tissue_mask.shape
    console.print(
        f"{out}: {w}x{h} px at {tissue_mask.mpp:g} um/px, tissue {tissue_mask.fraction:.1%} "
        f"({tissue_mask.area_um2 / 1e6:.2f} mm²)",
        highlight=False,
    )
    if overlay is not None:
        console.print(f"{overlay}: overlay at {overlay_mpp:g} um/px", highlight=False)
