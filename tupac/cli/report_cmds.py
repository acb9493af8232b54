"""``tupac report`` (static HTML report of a run) and ``tupac export-qupath`` (GeoJSON for QuPath)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress

from tupac.cli.app import app, console, err_console, fail, run_guarded
from tupac.cli.options import CONFIG_FILE_ONLY, ConfigOptions, Flag, config_command
from tupac.errors import ConfigError


@app.command("export-qupath")
def export_qupath_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder (RUN/slides/<id>.zarr ...)."),
    slide: str = typer.Option(None, "--slide", help="Only this slide ID (default: every done slide)."),
    threshold: float = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                    help="Tumor probability threshold (default: the run's, else 0.5)."),
    tolerance_um: float = typer.Option(None, "--tolerance-um", min=0.0,
                                       help="Polygon simplification tolerance in µm (default: half a heatmap cell)."),
    min_area_um2: float = typer.Option(0.0, "--min-area-um2", min=0.0, help="Drop tumor regions smaller than this."),
    slide_mpp: float = typer.Option(None, "--slide-mpp", min=1e-6,
                                    help="Level-0 µm/px when the slide file is missing or lacks it."),
    mitosis_object: str = typer.Option("detection", "--mitosis-object",
                                       help="QuPath object type of mitosis points: detection or annotation."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: RUN/qupath)."),
) -> None:
    """Write RUN/qupath/<id>.tumor.geojson (tumor polygons) and <id>.mitoses.geojson (points with prob)
    in level-0 pixels; import them in QuPath with File > Import objects from file."""
    # Deferred: the export reads Zarr stores and polygons (zarr, numpy, scikit-image), not for `tupac --help`.
    from tupac.report.qupath import export_run

    if mitosis_object not in ("detection", "annotation"):
        fail(ConfigError(f"--mitosis-object {mitosis_object!r}: expected 'detection' or 'annotation'"))
    with Progress(transient=True, console=err_console) as progress:
        bar = progress.add_task("QuPath export", total=None)
        exports, skipped = run_guarded(
            export_run, run, slide, out, on_slide=lambda s: progress.update(bar, description=f"exporting {s}"),
            threshold=threshold, tolerance_um=tolerance_um, min_area_um2=min_area_um2, slide_mpp=slide_mpp,
            mitosis_object=mitosis_object,
        )
    for x in exports:
        mit = "no detections table" if x.n_mitoses is None else f"{x.n_mitoses} mitoses"
        console.print(f"{x.slide_id}: {x.n_regions} tumor region(s), {x.tumor_area_um2 / 1e6:.3f} mm² "
                      f"(threshold {x.threshold:g}), {mit}", highlight=False)
    for sid, why in skipped:
        console.print(f"[yellow]skipped[/] {sid}: {why}", highlight=False)
    if not exports:
        fail(ConfigError(f"{run}: no done slide to export"))
    console.print(f"wrote {2 * len(exports)} GeoJSON file(s) to {exports[0].tumor_path.parent}", highlight=False)


# ReportOptions' fields as options: names and bounds here, defaults and help from the class.
REPORT_OPTIONS = ConfigOptions("tupac.report.config:ReportOptions", {"max_side": Flag("--thumb-px", min=64)},
                               not_exposed={"n_boot": CONFIG_FILE_ONLY})


def report_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    out: Path = typer.Option(None, "--out", help="Report folder (default: RUN/report)."),
    slide_mpp: float = typer.Option(None, "--slide-mpp", min=1e-6, help="Level-0 µm/px for slides lacking it."),
    profile_networks: bool = typer.Option(
        True, "--profile-networks/--no-profile-networks",
        help="Measure the network table now when RUN/models.json is absent (tens of seconds on CPU).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap confidence intervals."),
    **report,
) -> None:
    """Write the static HTML report (index.html + PNGs) of a run; open it from disk."""
    # Deferred: the report imports pandas and matplotlib, which `tupac --help` should not pay for.
    from tupac.report.html import build_report

    with Progress(transient=True, console=err_console) as progress:
        bar = progress.add_task("report", total=None)
        res = run_guarded(build_report, run, out, slide_mpp=slide_mpp, seed=seed, profile_networks=profile_networks,
                          progress=lambda m: progress.update(bar, description=m), **report)
    for section, why in res.missing.items():
        console.print(f"[yellow]{section}:[/] not computed ({why})", highlight=False)
    console.print(f"report: {res.index}  ({len(res.images)} images)", highlight=False)
    console.print(f"open it: file://{res.index}", highlight=False)


config_command(app, "report", REPORT_OPTIONS)(report_cmd)
