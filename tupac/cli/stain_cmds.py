"""``tupac stain``: fit a stain reference (template) and standardize images or whole slides.

- ``tupac stain fit SOURCE --method wsics|macenko|reinhard --out ref.json``
- ``tupac stain apply INPUT --ref ref.json --out OUT.png [--mpp MPP] [--before-after PNG]``

SOURCE and INPUT are a slide (SVS, pyramidal TIFF, any OpenSlide format) or an image file (PNG,
JPEG, plain TIFF). An image is standardized at full resolution with its own statistics; a slide
at ``--mpp`` with statistics gathered from tissue tiles across the whole slide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tupac.cli.app import app, console, fail, run_guarded
from tupac.errors import ConfigError, MissingMPPError, StainError

stain_app = typer.Typer(help="Stain standardization (WSICS, Macenko, Reinhard).", no_args_is_help=True)
app.add_typer(stain_app, name="stain")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
TIFF_SUFFIXES = {".tif", ".tiff"}
STRIP_PX = 512
BEFORE_AFTER_MAX_W = 2400


def _is_slide(path: Path) -> bool:
    """PNG/JPEG are images; a TIFF is a slide when tiled or pyramidal; anything else is a slide."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return False
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return bool(tif.pages[0].is_tiled or len(tif.series[0].levels) > 1)
        except Exception:  # not readable by tifffile: let the slide reader report it
            return True
    return True


def _read_image(path: Path):
    """An image file as ``(h, w, 3)`` uint8 RGB (alpha composited onto white)."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB"))
    except Exception as e:  # PIL and tifffile raise many kinds; the user needs one line
        raise StainError(f"{path}: cannot read image ({e})") from None
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise StainError(f"{path}: expected an 8-bit image, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise StainError(f"{path}: expected an RGB image, got shape {arr.shape}")
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.preprocess.stain.base import as_rgb_uint8

    return as_rgb_uint8(arr, str(path))


def _open_slide(path: Path, slide_mpp: Optional[float]):
    """``open_slide``, with the MPP hint naming this command's flag."""
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.slide import open_slide

    try:
        return open_slide(path, mpp=slide_mpp)
    except MissingMPPError:
        raise MissingMPPError(path, "no microns-per-pixel in the slide metadata; pass --slide-mpp") from None


def _slide_stats(reader, method: str, seed: int):
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.preprocess.stain import fit_slide
    from tupac.preprocess.tissue import slide_tissue_mask

    with console.status(f"fitting {method} statistics over the slide's tissue"):
        tissue = slide_tissue_mask(reader)
        return fit_slide(reader, tissue, method=method, seed=seed)


def _fit(source: Path, method: str, out: Path, slide_mpp: Optional[float], seed: int) -> None:
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.preprocess.stain import StainReference, fit_image, get_method

    get_method(method)  # unknown method: fail before reading anything
    if _is_slide(source):
        with _open_slide(source, slide_mpp) as reader:
            stats = _slide_stats(reader, method, seed)
    else:
        stats = fit_image(_read_image(source), method=method, seed=seed, source=str(source))
    ref = StainReference(stats)
    out.parent.mkdir(parents=True, exist_ok=True)
    ref.save(out)
    console.print(f"{method} reference from {source} ({stats.n_pixels} pixels, {stats.n_tiles} tiles) -> {out}")


def _standardize_slide(reader, ref, mpp: float, seed: int):
    """The whole slide at ``mpp``, standardized strip by strip with whole-slide statistics."""
    import numpy as np
    from rich.progress import Progress

    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.geometry import size_at_mpp
    from tupac.preprocess import stain

    stats = _slide_stats(reader, ref.method, seed)
    mpp = max(mpp, reader.mpp)
    w, h = size_at_mpp(reader.dimensions, reader.mpp, mpp)
    if w * h >= stain.base.LUT_MIN_PIXELS:
        with console.status("tabulating the slide's transform"):
            stain.lookup_table(stats, ref)
    before = np.empty((h, w, 3), np.uint8)
    after = np.empty((h, w, 3), np.uint8)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("standardizing", total=h)
        for y in range(0, h, STRIP_PX):
            rows = min(STRIP_PX, h - y)
            y_l0 = int(round(y * mpp / reader.mpp))
            strip = reader.read_region_mpp((0, y_l0), (w, rows), mpp)
            before[y : y + rows] = strip
            after[y : y + rows] = stain.transform(strip, stats, ref)
            progress.advance(task, rows)
    return before, after


def _write_before_after(before, after, path: Path) -> None:
    import numpy as np
    from PIL import Image

    pair = Image.fromarray(np.concatenate([before, after], axis=1))
    if pair.width > BEFORE_AFTER_MAX_W:
        pair = pair.resize((BEFORE_AFTER_MAX_W, max(1, round(pair.height * BEFORE_AFTER_MAX_W / pair.width))))
    path.parent.mkdir(parents=True, exist_ok=True)
    pair.save(path)


def _apply(inp: Path, ref_path: Path, out: Path, mpp: float, before_after: Optional[Path], slide_mpp: Optional[float], seed: int) -> None:
    from PIL import Image

    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.preprocess.stain import StainReference, fit_image, transform

    ref = StainReference.load(ref_path)
    if _is_slide(inp):
        with _open_slide(inp, slide_mpp) as reader:
            before, after = _standardize_slide(reader, ref, mpp, seed)
        where = f"at {mpp:g} um/px"
    else:
        before = _read_image(inp)
        after = transform(before, fit_image(before, method=ref.method, seed=seed, source=str(inp)), ref)
        where = "at full resolution"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(after).save(out)
    if before_after is not None:
        _write_before_after(before, after, before_after)
    console.print(f"{ref.method}-standardized {inp} {where} ({after.shape[1]}x{after.shape[0]}) -> {out}")


@stain_app.command("fit")
def fit_cmd(
    source: Path = typer.Argument(..., help="Template: a slide or an image file (PNG, JPEG, TIFF)."),
    method: str = typer.Option("wsics", "--method", help="wsics, macenko or reinhard."),
    out: Path = typer.Option(..., "--out", help="Reference JSON to write."),
    slide_mpp: Optional[float] = typer.Option(None, "--slide-mpp", help="Level-0 um/px of a slide without MPP metadata."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tissue-tile sampling."),
) -> None:
    """Fit a stain reference (the template's statistics) and save it as JSON."""
    run_guarded(_fit, source, method, out, slide_mpp, seed)


@stain_app.command("apply")
def apply_cmd(
    inp: Path = typer.Argument(..., metavar="INPUT", help="A slide or an image file (PNG, JPEG, TIFF)."),
    ref: Path = typer.Option(..., "--ref", help="Reference JSON from `tupac stain fit`."),
    out: Path = typer.Option(..., "--out", help="Standardized PNG to write."),
    mpp: float = typer.Option(4.0, "--mpp", help="Output resolution for a slide (um/px); images stay at full resolution."),
    before_after: Optional[Path] = typer.Option(None, "--before-after", help="Also write a side-by-side PNG."),
    slide_mpp: Optional[float] = typer.Option(None, "--slide-mpp", help="Level-0 um/px of a slide without MPP metadata."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tissue-tile sampling."),
) -> None:
    """Standardize an image (full resolution) or a whole slide (at --mpp) towards a reference."""
    if not mpp > 0:
        fail(ConfigError(f"--mpp must be a positive number of um/px, got {mpp}"))
    run_guarded(_apply, inp, ref, out, mpp, before_after, slide_mpp, seed)
