"""``tupac info SLIDE``: what a slide is, as tupac will read it."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from tupac.cli.app import app, console, run_guarded


class Backend(str, Enum):
    auto = "auto"
    openslide = "openslide"
    cucim = "cucim"


def check_pixels(reader) -> int:
    """Decode a 256 px window at the center of level 0 and of the coarsest level, so that a
    slide whose tiles cannot be decoded fails here rather than deep in a pipeline. Returns the
    number of windows read; raises ``SlideDecodeError``."""
    levels = sorted({0, reader.level_count - 1})
    for level in levels:
        w, h = reader.level_dimensions[level]
        ds = reader.level_downsamples[level]
        size = (min(256, w), min(256, h))
        xy_l0 = (int((w - size[0]) // 2 * ds), int((h - size[1]) // 2 * ds))
        reader.read_region(xy_l0, level, size)
    return len(levels)


def slide_summary(path: Path, backend: str, mpp: float | None) -> dict:
    """Open ``path``, decode a little of it, and describe it as a JSON-ready dict."""
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.slide import open_slide

    with open_slide(path, backend=backend, mpp=mpp) as s:
        checked = check_pixels(s)
        return {
            "path": str(path),
            "backend": s.backend,
            "backend_reason": getattr(s, "backend_reason", ""),
            "vendor": s.vendor,
            "dimensions": list(s.dimensions),
            "mpp": s.mpp,
            "mpp_source": s.info.mpp_source,
            "objective_power": s.objective_power,
            "pixels_checked": checked,
            "levels": [
                {"level": i, "width": w, "height": h, "downsample": d, "mpp": s.mpp * d}
                for i, ((w, h), d) in enumerate(zip(s.level_dimensions, s.level_downsamples))
            ],
        }


def _print(info: dict) -> None:
    w, h = info["dimensions"]
    obj = f"{info['objective_power']:g}x" if info["objective_power"] else "unknown"
    console.print(f"[bold]{info['path']}[/]", highlight=False, soft_wrap=True)
    console.print(f"  vendor     {info['vendor'] or 'unknown'}", highlight=False, soft_wrap=True)
    console.print(f"  size       {w} x {h} px (level 0)", highlight=False, soft_wrap=True)
    console.print(f"  mpp        {info['mpp']:g} um/px ({info['mpp_source']})", highlight=False, soft_wrap=True)
    console.print(f"  objective  {obj}", highlight=False, soft_wrap=True)
    console.print(f"  backend    {info['backend']} ({info['backend_reason']})", highlight=False, soft_wrap=True)
    console.print(f"  pixels     decoded {info['pixels_checked']} test window(s)", highlight=False, soft_wrap=True)
    console.print(f"  levels     {len(info['levels'])}", highlight=False, soft_wrap=True)
    for lv in info["levels"]:
        console.print(
            f"    {lv['level']}: {lv['width']} x {lv['height']}  downsample {lv['downsample']:.4f}"
            f"  {lv['mpp']:.4g} um/px",
            highlight=False, soft_wrap=True,
        )


@app.command("info")
def info(
    slide: Path = typer.Argument(..., help="Slide file (Aperio SVS, tiled TIFF, any OpenSlide format)."),
    mpp: float = typer.Option(None, "--mpp", help="Level-0 um/px, for slides whose metadata has none."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    backend: Backend = typer.Option(Backend.auto, "--backend", help="Pixel reader."),
) -> None:
    """Print a slide's vendor, size, pyramid levels, MPP, objective and the backend chosen."""
    summary = run_guarded(slide_summary, slide, backend.value, mpp)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print(summary)
