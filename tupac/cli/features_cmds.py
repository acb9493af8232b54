"""``tupac features``: the cohort feature table of a run (RUN/features.parquet + dictionary)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tupac.cli.app import app, console, err_console, fail, run_guarded
from tupac.cli.options import CONFIG_FILE_ONLY, ConfigOptions, Flag, config_command
from tupac.errors import ConfigError

# FeatureRunConfig's fields as options: names and command-line bounds here, defaults and help from the class.
FEATURES_OPTIONS = ConfigOptions("tupac.features.config:FeatureRunConfig", {
    "general": Flag("--general/--no-general"),
    "general_model": Flag("--general-model"),
    "pixels": Flag("--pixels/--no-pixels"),
    "n_patches": Flag("--patches", min=1),
    "n_clusters": Flag("--clusters", min=2),
    "min_prob": Flag("--min-prob", min=0.0, max=1.0),
    "threshold": Flag("--threshold", min=0.0, max=1.0),
    "min_region_mm2": Flag("--min-region-mm2", min=0.0),
    "n_splits": Flag("--folds", min=2),
    "general_epochs": Flag("--general-epochs", min=1),
    "seed": Flag("--seed"),
}, not_exposed={name: CONFIG_FILE_ONLY for name in ("max_deep_per_slide", "general_patches", "general_px")})


def features_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder (RUN/slides/<id>.zarr + <id>.mitoses.csv)."),
    labels: Path = typer.Option(None, "--labels",
                                help="Labels: a CSV with a header slide_id,grade[,rna], or TUPAC16's "
                                     "training_ground_truth.csv; its slides with a grade are the training slides."),
    slides: Path = typer.Option(None, "--slides",
                                help="Slide files: dataset root, slide folder or manifest CSV (default: commit records)."),
    models: Path = typer.Option(None, "--models",
                                help="MODELS folder (mitosis[, tumor]): stain template, deep and general features."),
    scheduler: str = typer.Option("local", "--scheduler", help="Dask scheduler of the heatmap graphs: local or ray."),
    ray: bool = typer.Option(False, "--ray/--no-ray",
                             help="Run each slide's features, and the fits, as Ray tasks (a local Ray unless --address)."),
    address: str = typer.Option(None, "--address",
                                help="Ray cluster to run the tasks on (host:port or ray://...; implies --ray; "
                                     "default $RAY_ADDRESS, else a local Ray)."),
    local_cpus: int = typer.Option(None, "--local-cpus", min=1,
                                   help="CPUs of a local Ray started for --ray (default: all)."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow",
                                help="Track the grade network's fits in MLflow (the RUN's store, or $MLFLOW_TRACKING_URI)."),
    **features,
) -> None:
    """Compute every committed slide's features into RUN/features.parquet and RUN/features/dictionary.csv."""
    # Deferred: the features stage imports pandas, Dask and torch, which `tupac --help` should not pay for.
    from tupac.feature_run import discover_slides
    from tupac.features.config import FeatureRunConfig

    if scheduler not in ("local", "ray"):
        fail(ConfigError(f"--scheduler {scheduler!r}: expected 'local' or 'ray'"))
    cfg = run_guarded(FeatureRunConfig, **features)
    found, _ = run_guarded(discover_slides, run, slides)
    with contextlib.ExitStack() as stack:
        executor = None
        if ray or address:
            # Deferred: Ray loads only when asked for. Entered first, so that Dask-on-Ray below joins this Ray.
            from tupac.infer.cluster import RayExecutor

            try:
                executor = stack.enter_context(RayExecutor(address, log_dir=run / "logs", local_cpus=local_cpus,
                                                           include_dashboard=False))
            except ConnectionError as e:
                fail(ConfigError(f"--address {address}: cannot connect to Ray ({e})"))
        get = None
        if scheduler == "ray":
            # Deferred: the Ray scheduler loads only when asked for.
            from tupac.infer.dask_on_ray import ray_dask_scheduler

            get = ray_dask_scheduler()
        res = _run(run, labels, slides, models, cfg, get, mlflow, executor, len(found))
    _print(res)


def _run(run, labels, slides, models, cfg, get, mlflow: bool, executor, n_slides: int):
    """The stage with a progress bar (slides done, then the cohort fits)."""
    from tupac.feature_run import run_features

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        bar = progress.add_task("features", total=n_slides)

        def tick(slide_id: str, stage: str) -> None:
            if slide_id:
                progress.update(bar, description=f"features (done {slide_id})", advance=1)
            else:
                progress.update(bar, description=stage)

        return run_guarded(run_features, run, labels=labels, slides=slides, models=models, config=cfg,
                           scheduler=get, progress=tick, track=mlflow, executor=executor)


def _print(res) -> None:
    for sid, why in res.skipped:
        console.print(f"[yellow]skipped[/] {sid}: {why}", highlight=False)
    for note in res.notes:
        console.print(note, highlight=False)
    qc = res.paths["folder"] / "qc.csv"  # the out-of-distribution check (tupac.features.ood)
    if qc.is_file():
        import pandas as pd

        for sid, flag, why in pd.read_csv(qc, keep_default_na=False).itertuples(index=False):
            if str(flag) in ("1", "1.0"):
                console.print(f"[yellow]warning:[/] {sid}: out of distribution for the models ({why}); "
                              "its grade may be confidently wrong", highlight=False, soft_wrap=True)
    tasks = sorted(res.n_tasks.values())
    console.print(
        f"{len(res.table)} slide(s) ({len(res.training)} training, {len(res.new)} new), "
        f"{sum(not c.startswith('qc_') for c in res.table.columns) - 1} features -> {res.paths['table']}; dictionary {res.paths['dictionary']}; "
        f"Dask tasks per slide {tasks[0]}-{tasks[-1]}", highlight=False)


config_command(app, "features", FEATURES_OPTIONS)(features_cmd)
