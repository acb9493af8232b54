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


def _generate(out: Path, slides: int, seed: int, size_um: tuple[float, float], mitosis_images: int) -> None:
    import time

    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.synth import generate_cohort

    t0 = time.perf_counter()
    summary = run_guarded(
        generate_cohort, out, n_slides=slides, seed=seed, size_um=size_um, mitosis_images=mitosis_images,
        progress=True,
    )
    console.print(summary.to_table())
    console.print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (truth in {out / 'truth'})")


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Dataset root to write (TUPAC16 layout plus truth/)."),
    slides: int = typer.Option(12, "--slides", min=1, max=999, help="Number of slides."),
    seed: int = typer.Option(0, "--seed", help="Seed: the whole cohort is a function of it."),
    size_um: str = typer.Option("3000x2500", "--size-um", help="Slide extent WxH in micrometers (0.25 um/px)."),
    mitosis_images: int = typer.Option(30, "--mitosis-images", min=0, help="Images in the mitosis auxiliary set."),
) -> None:
    """Generate a phantom TUPAC16 cohort with exact ground truth."""
    _generate(out, slides, seed, _parse_size(size_um), mitosis_images)
