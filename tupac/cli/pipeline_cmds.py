"""``tupac run`` (the whole pipeline on a dataset) and ``tupac demo`` (the same on a phantom cohort)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tupac.cli.app import app, console, fail, run_guarded

DEMO_SLIDES, DEMO_SIZE_UM, DEMO_MITOSIS_IMAGES = 12, (1500.0, 1200.0), 12
FULL_SLIDES, FULL_SIZE_UM, FULL_MITOSIS_IMAGES = 12, (3000.0, 2500.0), 30


def _say(msg: str) -> None:
    # escape: the stage prefixes ("[train_tumor] ...") and user paths would read as rich markup and vanish
    console.print(f"[dim]{escape(msg)}[/]", highlight=False)


def _finish(summary: dict, out: Path) -> None:
    run = Path(summary["run"])
    ran = ", ".join(summary["ran"]) or "nothing (everything up to date)"
    console.print(f"\nstages run: {ran}", highlight=False)
    if summary["skipped"]:
        console.print(f"skipped (inputs unchanged): {', '.join(summary['skipped'])}", highlight=False)
    console.print(f"report:     {summary['report']}", highlight=False)
    console.print(f"features:   {run / 'features.parquet'}", highlight=False)
    console.print(f"metrics:    {run / 'predict' / 'metrics.json'}", highlight=False)
    console.print(f"MLflow UI:  tupac mlflow-ui --run {run}", highlight=False)


def _load_config(config: Optional[Path], print_config: bool):
    # Deferred: loads matplotlib, skimage, sklearn, torch only when the command runs; `tupac --help` stays fast.
    from tupac.pipeline import PipelineConfig

    cfg = PipelineConfig.from_yaml(config) if config is not None else PipelineConfig()
    if print_config:
        typer.echo(cfg.to_yaml())
        raise typer.Exit()
    return cfg


@app.command("run")
def run_cmd(
    data: Path = typer.Option(..., "--data", help="TUPAC16-layout dataset root."),
    out: Path = typer.Option(..., "--out", help="Run folder (models, heatmaps, features, predictions, report)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see --print-config for every option)."),
    models: Optional[Path] = typer.Option(None, "--models", help="Use these trained models instead of training."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective config as YAML and exit."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Labels of the features and fit stages: a CSV with a header slide_id,grade,rna, or "
                               "TUPAC16's row-numbered file (default DATA/training_ground_truth.csv)."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster that runs every stage (HOST:PORT, or ray://HOST:10001); default "
                                "$RAY_ADDRESS, else a local Ray started once for the whole pipeline."),
) -> None:
    """Train (unless --models), infer, compute features, fit the predictive models, write the report.

    Every stage is resumable and skipped when its inputs have not changed.

    Every stage runs on one Ray (--address, else a local one); RUN/pipeline/placement.json says where.
    """
    # Deferred: loads matplotlib, skimage, sklearn, torch only when the command runs; `tupac --help` stays fast.
    from tupac.pipeline import run_pipeline

    cfg = run_guarded(_load_config, config, print_config)
    if not data.is_dir():
        fail(FileNotFoundError(f"{data}: no such dataset folder"))
    summary = run_guarded(run_pipeline, data, out, cfg, models, _say, labels, address)
    _finish(summary, out)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo cohort (data/) and run (run/)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantom cohort and of the pipeline."),
    full: bool = typer.Option(False, "--full", help="Full-size defaults: bigger cohort, full networks and training."),
) -> None:
    """Generate a phantom TUPAC16 cohort and run the whole pipeline on it (local Ray, local MLflow)."""
    import dataclasses

    # Deferred: loads matplotlib, skimage, sklearn, torch only when the command runs; `tupac --help` stays fast.
    from tupac.pipeline import DEMO_CONFIG, PipelineConfig, run_pipeline
    from tupac.synth import generate_cohort

    n, size, m = (FULL_SLIDES, FULL_SIZE_UM, FULL_MITOSIS_IMAGES) if full else (DEMO_SLIDES, DEMO_SIZE_UM, DEMO_MITOSIS_IMAGES)
    cfg = dataclasses.replace(PipelineConfig() if full else DEMO_CONFIG, seed=seed)
    if not full:
        console.print(
            f"demo: a small phantom cohort ({n} slides of {size[0]/1000:g} x {size[1]/1000:g} mm, {m} mitosis images) "
            "and shorter training than `tupac run`'s defaults (narrow LocNet, few epochs, light CV); "
            "`tupac demo --full` runs the full-size defaults.",
            highlight=False,
        )
    data = out / "data"
    stamp = data / "demo.json"
    want = {"slides": n, "size_um": list(size), "mitosis_images": m, "seed": seed}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want):
        _say(f"generating the phantom cohort in {data}")
        summary = run_guarded(generate_cohort, data, n_slides=n, seed=seed, size_um=size, mitosis_images=m, progress=True)
        console.print(summary.to_table())
        stamp.write_text(json.dumps(want))
    else:
        _say(f"phantom cohort in {data} is up to date")
    result = run_guarded(run_pipeline, data, out / "run", cfg, None, _say)
    _finish(result, out)
