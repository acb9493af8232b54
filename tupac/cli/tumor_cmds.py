"""``tupac train tumor`` and ``tupac tumor-map``: train the tumor localizer, map a slide with it.

``tupac train`` is a command group shared with the mitosis stage (``tupac train mitosis``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
import yaml

from tupac.cli.app import app, console, run_guarded
from tupac.cli.options import ConfigOptions, Flag, config_command, nest

IN_CONFIG_FILE = "set in --config FILE"

train_app = typer.Typer(help="Train the tumor or mitosis networks on a TUPAC16-layout dataset.", no_args_is_help=True)
app.add_typer(train_app, name="train")


# TumorTrainConfig's fields as options: names and bounds here, defaults and help from the class.
TRAIN_TUMOR_OPTIONS = ConfigOptions("tupac.tumor.training:TumorTrainConfig", {
    "arch": Flag("--arch"),
    "train.epochs": Flag("--epochs", min=1, note="(per stage)"),
    "positives_per_slide": Flag("--patches-per-slide", min=1, note="(and as many negatives)"),
    "stain_method": Flag("--stain"),
    "seed": Flag("--seed"),
    "two_stage": Flag("--two-stage/--one-stage"),
}, not_exposed={name: IN_CONFIG_FILE for name in (
    "model_kwargs", "tissue_mpp", "negatives_per_slide", "val_fraction", "confident", "negative_margin_um",
    "edge_patches", "stage_tolerance")})


def _tumor_config(values: dict, config: Optional[Path]):
    # Deferred: the training module imports torch, which `tupac --help` should not pay for.
    from tupac.tumor.training import TumorTrainConfig

    base = {}
    if config is not None:
        doc = yaml.safe_load(config.read_text()) or {}
        base = doc.get("tumor", doc)
    given = nest(values)
    given["negatives_per_slide"] = given["positives_per_slide"]
    # A value in the config file wins over the command's (its defaults included).
    train = {**TumorTrainConfig().train, **given.pop("train"), **base.pop("train", {})}
    return TumorTrainConfig(**{**given, **base, "train": train})


def _train_tumor(data: Path, out: Path, cfg, tracking_uri: Optional[str]):
    from tupac.tracking.training import tracked_training  # deferred: imports the training code, hence torch (~1 s)

    return tracked_training("tumor", data, out / "tumor", cfg, tracking_uri=tracking_uri,
                            say=lambda m: console.print(f"[dim]{m}[/]"))


def train_tumor_cmd(
    data: Path = typer.Option(..., "--data", help="TUPAC16-layout dataset root."),
    out: Path = typer.Option(..., "--out", help="Models folder; the model goes to OUT/tumor/."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with TumorTrainConfig fields (under `tumor:`)."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under OUT)."
    ),
    **tumor,
) -> None:
    """Train the tumor localizer (two-stage active learning) and register it in MLflow."""
    cfg = run_guarded(_tumor_config, tumor, config)
    result = run_guarded(_train_tumor, data, out, cfg, tracking_uri)
    console.print_json(json.dumps({
        "model_dir": str(result.model_dir), "chosen_stage": result.chosen_stage, "threshold": result.threshold,
        "stages": result.stages,
    }, default=float))


config_command(train_app, "tumor", TRAIN_TUMOR_OPTIONS)(train_tumor_cmd)


def _tumor_map(slide: Path, models: Path, out: Path, mpp: Optional[float], overwrite: bool, chunk: int):
    from rich.progress import Progress

    # Deferred: loads torch only when the command runs; `tupac --help` stays fast.
    from tupac.models.trained import load_trained
    from tupac.infer.tumor_map import tumor_map

    model_dir = models / "tumor" if (models / "tumor" / "card.json").is_file() else models
    trained = load_trained(model_dir)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"tumor map {slide.name}", total=None)
        store = tumor_map(
            slide, trained, out, mpp=mpp, overwrite=overwrite, chunk=chunk,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    return store, trained


@app.command("tumor-map")
def tumor_map_cmd(
    slide: Path = typer.Argument(..., help="Slide file."),
    models: Path = typer.Option(..., "--models", help="Models folder (with tumor/) or a tumor model folder."),
    out: Path = typer.Option(..., "--out", help="Zarr store to write (array `tumor`, probabilities in [0, 1])."),
    mpp: Optional[float] = typer.Option(None, "--mpp", min=0.0, help="Level-0 um/px for slides without MPP."),
    chunk: int = typer.Option(64, "--chunk", min=8, help="Heatmap cells per window / Zarr chunk edge."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing committed store."),
) -> None:
    """Compute SLIDE's tumor probability map with the trained model and write it to Zarr (OME-NGFF)."""
    store, trained = run_guarded(_tumor_map, slide, models, out, mpp, overwrite, chunk)
    tumor = store.read("tumor")
    frac = float((tumor > trained.threshold).mean())
    console.print(
        f"{out}: tumor {tumor.shape[1]}x{tumor.shape[0]} at {store.mpp('tumor'):g} um/px, "
        f"{frac:.1%} of cells above the model threshold {trained.threshold:.3f}",
        highlight=False,
    )
