"""``tupac synth``: phantom TUPAC16 cohorts (``tupac demo`` lives in :mod:`tupac.cli.pipeline_cmds`)."""

from __future__ import annotations

from pathlib import Path

import typer

from tupac.cli.app import app, console, fail, run_guarded


def _parse_size(text: str) -> tuple[float, float]:
    try:
        w, h = (float(v) for v in text.lower().split("x"))
    except ValueError:
        fail(typer.BadParameter(f"--size-um must look like 3000x2500 (micrometers), got {text!r}"))
    return w, h


def _parse_centers(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        fail(typer.BadParameter(f"--centers must list center names like A,B,D, got {text!r}"))
    return names


def _style_names() -> str:
    # The registry is a small module with no heavy imports: cheap enough for the help text.
    from tupac.synth.style import STYLES

    return ", ".join(STYLES)


def _print_styles() -> None:
    from rich.table import Table

    from tupac.synth.stain import ALL_CENTERS
    from tupac.synth.style import STYLES

    t = Table(title="phantom styles (tupac synth --style NAME)")
    t.caption = ("blur: focus sigma range (level-0 px); Q: JPEG quality; pyk: pyknotic fraction of tumor nuclei; "
                 "apo: apoptotic bodies per mm² tumor; lymph: lymphocyte clusters per mm² tissue; "
                 "folds, pens: per slide")
    for col in ("style", "centers", "blur", "Q", "pyk", "apo", "lymph", "folds", "pens"):
        t.add_column(col, no_wrap=True)
    for s in STYLES.values():
        t.add_row(s.name, ",".join(s.centers), f"{s.blur_sigma[0]:g}-{s.blur_sigma[1]:g}", str(s.jpeg_quality),
                  f"{s.pyknotic_fraction:.0%}", f"{s.apoptosis_rate[0]:g}-{s.apoptosis_rate[1]:g}",
                  f"{s.lymph_cluster_rate:g}", f"{s.folds_per_slide:g}", f"{s.pen_marks_per_slide:g}")
    console.print(t)
    for s in STYLES.values():
        console.print(f"{s.name}: {s.description}")
    console.print("centers: " + ", ".join(f"{c.name} (H x{c.h_scale:g}, E x{c.e_scale:g})" for c in ALL_CENTERS))


def _generate(out: Path, slides: int, seed: int, size_um: tuple[float, float], mitosis_images: int,
              style: str = "default", centers: list[str] | None = None) -> None:
    import time

    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.synth import generate_cohort

    t0 = time.perf_counter()
    summary = run_guarded(
        generate_cohort, out, n_slides=slides, seed=seed, size_um=size_um, mitosis_images=mitosis_images,
        progress=True, style=style, centers=centers,
    )
    console.print(summary.to_table())
    console.print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (truth in {out / 'truth'})")


@app.command("synth")
def synth(
    out: Path = typer.Argument(None, help="Dataset root to write (TUPAC16 layout plus truth/)."),
    slides: int = typer.Option(12, "--slides", min=1, max=999, help="Number of slides."),
    seed: int = typer.Option(0, "--seed", help="Seed: the whole cohort is a function of it."),
    size_um: str = typer.Option("3000x2500", "--size-um", help="Slide extent WxH in micrometers (0.25 um/px)."),
    mitosis_images: int = typer.Option(30, "--mitosis-images", min=0, help="Images in the mitosis auxiliary set."),
    style: str = typer.Option("default", "--style", help=f"Visual style (lab): one of {_style_names()}."),
    centers: str = typer.Option(None, "--centers",
                                help="Stain centers cycled over the slides, e.g. A,B,D (A-C, D dark, P pale); "
                                     "default: the style's."),
    list_styles: bool = typer.Option(False, "--list-styles", help="Print the styles and centers, and exit."),
) -> None:
    """Generate a phantom TUPAC16 cohort with exact ground truth, in a visual style."""
    if list_styles:
        _print_styles()
        return
    if out is None:
        fail(typer.BadParameter("missing argument OUT (the dataset root to write)"))
    _generate(out, slides, seed, _parse_size(size_um), mitosis_images, style, _parse_centers(centers))
