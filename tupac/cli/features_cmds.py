"""``tupac features``: the cohort feature table of a run (RUN/features.parquet + dictionary)."""

from __future__ import annotations

from pathlib import Path

import typer

from tupac.cli.app import app, console, err_console, fail, run_guarded


@app.command("features")
def features_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder (RUN/slides/<id>.zarr + <id>.mitoses.csv)."),
    labels: Path = typer.Option(None, "--labels", help="training_ground_truth.csv: its slides are the training slides."),
    slides: Path = typer.Option(None, "--slides",
                                help="Slide files: dataset root, slide folder or manifest CSV (default: commit records)."),
    models: Path = typer.Option(None, "--models",
                                help="MODELS folder (mitosis[, tumor]): stain template, deep and general features."),
    scheduler: str = typer.Option("local", "--scheduler", help="Dask scheduler of the heatmap graphs: local or ray."),
    general: bool = typer.Option(None, "--general/--no-general",
                                 help="General features (grade network); default on with --labels and --models."),
    general_model: str = typer.Option("mitosis", "--general-model", help="Frozen network of the general features."),
    pixels: bool = typer.Option(True, "--pixels/--no-pixels",
                                help="Read the slides (biological, deep, general features)."),
    n_patches: int = typer.Option(50, "--patches", min=1, help="Fringe patches per slide."),
    n_clusters: int = typer.Option(200, "--clusters", min=2, help="Deep-histogram bins (k-means clusters)."),
    min_prob: float = typer.Option(0.0, "--min-prob", min=0.0, max=1.0, help="Ignore detections below this probability."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Tumor probability threshold."),
    min_region_mm2: float = typer.Option(0.01, "--min-region-mm2", min=0.0,
                                         help="Tumor regions smaller than this (mm²) are dropped as speckle."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-fitting folds (as the predictive CV)."),
    epochs: int = typer.Option(60, "--general-epochs", min=1, help="Training epochs of the grade network."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice and fit."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow",
                                help="Track the grade network's fits in MLflow (the RUN's store, or $MLFLOW_TRACKING_URI)."),
) -> None:
    """Compute every committed slide's features into RUN/features.parquet and RUN/features/dictionary.csv."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tupac.errors import ConfigError
    from tupac.feature_run import discover_slides, run_features
    from tupac.features.config import FeatureRunConfig

    if scheduler not in ("local", "ray"):
        fail(ConfigError(f"--scheduler {scheduler!r}: expected 'local' or 'ray'"))
    cfg = run_guarded(FeatureRunConfig, seed=seed, n_patches=n_patches, threshold=threshold, min_prob=min_prob,
                      min_region_mm2=min_region_mm2,
                      n_clusters=n_clusters, pixels=pixels, general=general, general_model=general_model,
                      n_splits=folds, general_epochs=epochs)
    found, _ = run_guarded(discover_slides, run, slides)
    get = None
    if scheduler == "ray":
        import ray
        from ray.util.dask import ray_dask_get

        ray.init(ignore_reinit_error=True, log_to_driver=False)
        get = ray_dask_get
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        bar = progress.add_task("features", total=len(found))

        def tick(slide_id: str, stage: str) -> None:
            if slide_id:
                progress.update(bar, description=f"features (done {slide_id})", advance=1)
            else:
                progress.update(bar, description=stage)

        res = run_guarded(run_features, run, labels=labels, slides=slides, models=models, config=cfg,
                          scheduler=get, progress=tick, track=mlflow)
    for sid, why in res.skipped:
        console.print(f"[yellow]skipped[/] {sid}: {why}", highlight=False)
    for note in res.notes:
        console.print(note, highlight=False)
    tasks = sorted(res.n_tasks.values())
    console.print(
        f"{len(res.table)} slide(s) ({len(res.training)} training, {len(res.new)} new), "
        f"{res.table.shape[1] - 1} features -> {res.paths['table']}; dictionary {res.paths['dictionary']}; "
        f"Dask tasks per slide {tasks[0]}-{tasks[-1]}", highlight=False)
