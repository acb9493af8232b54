"""``tupac fit``, ``tupac predict`` and ``tupac mlflow-ui``: cohort models, scoring, tracking UI."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tupac.cli.app import app, console, err_console, fail, is_tty, run_guarded
from tupac.cli.options import CONFIG_FILE_ONLY, ConfigOptions, Flag, config_command
from tupac.errors import CohortError

FEATURES_NAME = "features.parquet"


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _fit(run: Path, labels: Path, features: Path | None, grade_models: str | None, rna_models: str | None,
         track: bool, experiment: str, run_name: str | None, fit: dict) -> None:
    # Deferred: the predictive stage imports pandas and scikit-learn, which `tupac --help` should not pay for.
    from tupac.predict.cohort import build_cohort, read_feature_table, read_fit_labels
    from tupac.predict.fit import FitConfig, fit_cohort, n_steps, write_outputs

    chosen = {name: _names(text) for name, text in (("grade_models", grade_models), ("rna_models", rna_models)) if text}
    config = FitConfig(**fit, **chosen)
    strict = config.strict
    table_path = features or run / FEATURES_NAME
    table = read_feature_table(table_path)
    lab = read_fit_labels(labels, table, run, source=str(table_path))
    cohort = build_cohort(table, lab, strict=strict, labels_source=str(labels))
    for e in cohort.exclusions:
        err_console.print(f"[yellow]excluded[/] {e.slide_id}: {e.reason}", highlight=False, soft_wrap=True)
    s = cohort.summary()
    console.print(f"cohort: {s['n_slides']} slides, {s['n_features']} features, grades {s['grade_counts']}, "
                  f"{s['n_excluded']} excluded (listed in metrics.json)", highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console, disable=not is_tty()) as bar:
        task = bar.add_task("fitting", total=n_steps(config))
        result = fit_cohort(cohort, config, progress=lambda msg: bar.update(task, advance=1, description=msg))
    out = run / "predict"
    write_outputs(result, out)
    for t, name in result.best.items():
        m = result.metrics["summary"]["best"][t]
        shown = (["accuracy", "kappa_quadratic", "auroc_micro", "f1_macro"] if t == "grade"
                 else ["spearman_rho", "pearson_r", "mse"])
        console.print(f"{t}: best {name}: " + ", ".join(f"{k} {m[k + '_mean']:.3f}" for k in shown), highlight=False)
    console.print(f"wrote {out}/ (metrics.json, predictions.csv, figures, biomarker tables)", highlight=False)
    if track:
        # deferred: the tracking modules import scikit-learn, and MLflow when called (seconds); most commands never track
        from tupac.tracking.fits import log_fit
        from tupac.tracking.store import store_error

        StoreError = store_error()
        try:
            tracked = log_fit(result, out, run, experiment=experiment, run_name=run_name)
        except StoreError as e:
            fail(RuntimeError(f"MLflow logging failed ({e.message}); outputs are in {out}"))
        info = {"tracking_uri": tracked.tracking_uri, "experiment_id": tracked.experiment_id,
                "run_id": tracked.run_id, "versions": tracked.versions, "champion": tracked.champion}
        (out / "mlflow.json").write_text(json.dumps(info, indent=2) + "\n")
        console.print(f"MLflow run {tracked.run_id} in {tracked.tracking_uri}; model versions {tracked.versions}, "
                      f"champion moved: {tracked.champion}", highlight=False)


def _fit_locked(run: Path, *args) -> None:
    """:func:`_fit` while holding the run folder (one job per run folder)."""
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.runlock import run_lock

    with run_lock(run, "tupac fit", create=False):
        _fit(run, *args)


# FitConfig's fields as options: names here, defaults and help from the class.
FIT_OPTIONS = ConfigOptions("tupac.predict.fit:FitConfig", {
    "seed": Flag("--seed"),
    "repeats": Flag("--repeats"),
    "k_features": Flag("--k-features"),
    "strict": Flag("--strict"),
    "ablation": Flag("--ablation/--no-ablation"),
}, not_exposed={
    "grade_models": "--grade-models, a comma-separated list (default: every candidate)",
    "rna_models": "--rna-models, a comma-separated list (default: every candidate)",
    **{name: CONFIG_FILE_ONLY for name in ("n_splits", "inner_splits", "n_boot", "importance_repeats",
                                                   "ablation_n_boot")},
})


def fit_cmd(
    run: Path = typer.Option(..., "--run", help="Run directory holding features.parquet; outputs go to RUN/predict."),
    labels: Path = typer.Option(..., "--labels", help="Labels: a CSV with a header slide_id,grade,rna (other columns "
                                                       "kept as metadata), or TUPAC16's training_ground_truth.csv."),
    features: Path = typer.Option(None, "--features", help="Feature table (default RUN/features.parquet)."),
    grade_models: str = typer.Option(None, "--grade-models", help="Comma-separated subset of the grade classifiers."),
    rna_models: str = typer.Option(None, "--rna-models", help="Comma-separated subset of the RNA regressors."),
    track: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the run and register the models in MLflow."),
    experiment: str = typer.Option("tupac", "--experiment", help="MLflow experiment name."),
    run_name: str = typer.Option(None, "--run-name", help="MLflow run name."),
    **fit,
) -> None:
    """Cross-validate grade classifiers and RNA regressors; write metrics, figures, biomarkers; track in MLflow."""
    run_guarded(_fit_locked, run, labels, features, grade_models, rna_models, track, experiment, run_name, fit)


config_command(app, "fit", FIT_OPTIONS)(fit_cmd)


def _predict(run: Path, model_uri: str, rna_model_uri: str | None, features: Path | None, out: Path) -> None:
    import numpy as np
    import pandas as pd

    # Deferred: loads matplotlib, sklearn only when the command runs; `tupac --help` stays fast.
    from tupac.data import parse_slide_id, write_scores_submission
    from tupac.features.dictionary import NO_TISSUE
    from tupac.predict.cohort import read_feature_table
    from tupac.tracking.loading import load_registered_model

    path = features or run / FEATURES_NAME
    table = read_feature_table(path)
    if NO_TISSUE in table.columns:
        for sid in table.index[table[NO_TISSUE] > 0]:
            err_console.print(f"[yellow]warning:[/] {sid}: no tissue on the slide; its scores come from imputed "
                              "features (every feature is missing)", highlight=False, soft_wrap=True)

    def columns_for(model) -> list[str]:
        names = getattr(model, "feature_names_in_", None)
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise CohortError(f"{path}: lacks {len(missing)} feature(s) the model was fitted on, first {missing[0]!r}")
        return list(names)

    result = pd.DataFrame({"slide_id": table.index.to_numpy(dtype=object)})
    grade = load_registered_model(model_uri, run)
    Xg = table[columns_for(grade.model)]
    result["mitosis_score"] = grade.model.predict(Xg).astype(np.int64)
    if hasattr(grade.model, "predict_proba"):
        for c, p in zip(grade.model.classes_, grade.model.predict_proba(Xg).T):
            result[f"p_{int(c)}"] = p
    rna = None
    if rna_model_uri:
        rna = load_registered_model(rna_model_uri, run)
        result["proliferation_score"] = rna.model.predict(table[columns_for(rna.model)])
    out.mkdir(parents=True, exist_ok=True)
    result.to_csv(out / "predictions.csv", index=False)
    console.print(f"scored {len(result)} slides with {grade.name} v{grade.version}"
                  + (f" and {rna.name} v{rna.version}" if rna else "") + f"; wrote {out / 'predictions.csv'}",
                  highlight=False)
    try:
        prefixes = {parse_slide_id(s)[0] for s in result["slide_id"]}
    except ValueError:
        console.print("slide IDs are not TUPAC16 case IDs: no submission CSV written", highlight=False)
        return
    if len(prefixes) != 1:
        raise CohortError(f"{path}: mixes TUPAC16 training and test IDs; cannot write one submission")
    sub = out / "submission_tasks12.csv"
    try:
        write_scores_submission(
            sub, dict(zip(result["slide_id"], result["mitosis_score"])),
            dict(zip(result["slide_id"], result["proliferation_score"])) if rna else None,
            prefix=prefixes.pop(),
        )
    except ValueError as e:
        raise CohortError(f"{path}: cannot write a TUPAC16 submission: {e}") from e
    console.print(f"wrote {sub}", highlight=False)


@app.command("predict")
def predict_cmd(
    run: Path = typer.Option(..., "--run", help="Run directory (its features.parquet and MLflow store)."),
    model: str = typer.Option("models:/tupac-grade-classifier@champion", "--model", help="Grade model URI."),
    rna_model: str = typer.Option(None, "--rna-model", help="RNA model URI, e.g. models:/tupac-rna-regressor@champion."),
    features: Path = typer.Option(None, "--features", help="Feature table to score (default RUN/features.parquet)."),
    out: Path = typer.Option(..., "--out", help="Folder for predictions.csv and the TUPAC16 submission CSV."),
) -> None:
    """Score slides with registered models (skops, from the run's own store) and write TUPAC16 submission CSVs."""
    run_guarded(_predict, run, model, rna_model, features, out)


@app.command("mlflow-ui")
def mlflow_ui_cmd(
    run: Path = typer.Option(..., "--run", help="Run directory whose mlflow.db to browse."),
    port: int = typer.Option(5000, "--port", help="Port on 127.0.0.1."),
) -> None:
    """Start the MLflow UI on 127.0.0.1 for the run's local store (Ctrl-C stops it)."""
    import subprocess

    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.tracking.store import mlflow_ui_command

    if not (run / "mlflow.db").is_file():
        fail(FileNotFoundError(f"{run / 'mlflow.db'}: no MLflow store (run `tupac fit` first)"))
    console.print(f"MLflow UI for {run} at http://127.0.0.1:{port}", highlight=False)
    import os
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    # The server runs in its own process group (it starts uvicorn workers); Ctrl-C or a SIGTERM
    # to this command stops that whole group, so no worker outlives the command.
    signal.signal(signal.SIGTERM, _interrupt)
    proc = subprocess.Popen(mlflow_ui_command(run, port), start_new_session=True)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    raise typer.Exit(code)
