"""``tupac train mitosis`` and ``tupac detect-mitoses``: train the mitosis detector, run it on 40x fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
import yaml

from tupac.cli.app import app, console, err_console, fail, run_guarded
from tupac.cli.options import ConfigOptions, Flag, config_command, nest
from tupac.cli.tumor_cmds import IN_CONFIG_FILE, train_app
from tupac.errors import ConfigError, DatasetLayoutError, TupacError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


# MitosisTrainConfig's fields as options: names and bounds here, defaults and help from the class.
TRAIN_MITOSIS_OPTIONS = ConfigOptions("tupac.mitosis.training:MitosisTrainConfig", {
    "arch": Flag("--arch"),
    "train.epochs": Flag("--epochs", min=1, optional=True, note="(per stage)"),
    "seed": Flag("--seed"),
    "two_stage": Flag("--two-stage/--one-stage"),
}, not_exposed={name: IN_CONFIG_FILE for name in (
    "model_kwargs", "stain_method", "val_fraction", "max_images", "negatives_per_image", "background_per_image",
    "positive_copies", "positive_jitter_px", "match_radius_px", "hard_min_prob", "hard_max_per_image", "sigma_px",
    "nms_radius_px", "epoch_selection", "threshold_rule")})


def _mitosis_config(values: dict, config: Optional[Path]):
    # Deferred: the training module imports torch, which `tupac --help` should not pay for.
    from tupac.mitosis.training import MitosisTrainConfig

    base: dict = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"{config}: config file does not exist")
        try:
            doc = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{config}: not valid YAML ({e})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{config}: expected a mapping of MitosisTrainConfig fields")
        base = dict(doc.get("mitosis", doc))
    given = nest(values)
    epochs = given.pop("train")["epochs"]
    train = {**MitosisTrainConfig().train, **base.pop("train", {})}
    if epochs is not None:  # --epochs given: it wins over the config file's
        train["epochs"] = epochs
    fields = {**given, **base, "train": train}
    try:
        return MitosisTrainConfig(**fields)
    except TypeError as e:
        raise ConfigError(f"{config}: {e}") from None


def _train_mitosis(data: Path, out: Path, cfg, tracking_uri: Optional[str]):
    from tupac.data import Tupac16Dataset
    from tupac.tracking.training import tracked_training  # deferred: imports the training code, hence torch (~1 s)

    # Check the data before an MLflow run is opened for it.
    if not Tupac16Dataset(data).mitosis_images:
        raise DatasetLayoutError(data / "mitoses", "no auxiliary mitosis images (mitoses/mitoses_image_data/NN/MM.tif)")

    return tracked_training("mitosis", data, out / "mitosis", cfg, tracking_uri=tracking_uri,
                            say=lambda m: console.print(f"[dim]{m}[/]", highlight=False))


def train_mitosis_cmd(
    data: Path = typer.Option(..., "--data", help="TUPAC16-layout root with mitoses/mitoses_image_data and _ground_truth."),
    out: Path = typer.Option(..., "--out", help="Models folder; the model goes to OUT/mitosis/."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with MitosisTrainConfig fields (under `mitosis:`)."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under OUT)."
    ),
    **mitosis,
) -> None:
    """Train the mitosis detector (two-stage hard-negative mining) and register it in MLflow."""
    cfg = run_guarded(_mitosis_config, mitosis, config)
    result = run_guarded(_train_mitosis, data, out, cfg, tracking_uri)
    console.print_json(json.dumps({
        "model_dir": str(result.model_dir), "chosen_stage": result.chosen_stage, "threshold": result.threshold,
        "seconds": round(result.seconds, 1), "stages": result.stages,
    }, default=float))


config_command(train_app, "mitosis", TRAIN_MITOSIS_OPTIONS)(train_mitosis_cmd)


def _list_images(images_dir: Path) -> list[Path]:
    if not images_dir.is_dir():
        raise DatasetLayoutError(images_dir, "image folder does not exist")
    found = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DatasetLayoutError(images_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder tree")
    return found


def _load_detector(models: Path, threshold: Optional[float]):
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.mitosis.inference import MitosisDetector

    model_dir = models / "mitosis" if (models / "mitosis" / "card.json").is_file() else models
    return MitosisDetector(model_dir, threshold=threshold)


@app.command("detect-mitoses")
def detect_mitoses_cmd(
    images_dir: Path = typer.Argument(..., help="Folder of 40x images (NN/MM.tif, as the auxiliary set)."),
    models: Path = typer.Option(..., "--models", help="Models folder (with mitosis/) or a mitosis model folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the detection CSVs (NN/MM.csv: row,col,prob)."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Override the card's detection threshold."
    ),
) -> None:
    """Detect mitoses in every image under IMAGES_DIR; write one TUPAC16 task-3 CSV per image.

    A file that cannot be read is reported on one line and skipped; the exit status is non-zero
    when any image failed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.mitosis.inference import read_image
    from tupac.mitosis.io import write_detections_csv

    paths = run_guarded(_list_images, images_dir)
    detector = run_guarded(_load_detector, models, threshold)
    failed, n_det = [], 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("detecting mitoses", total=len(paths))
        for path in paths:
            rel = path.relative_to(images_dir)
            try:
                det = detector(read_image(path))
                write_detections_csv(det, out / rel.with_suffix(".csv"))
                n_det += len(det)
            except (TupacError, OSError, ValueError) as e:
                failed.append(rel)
                msg = str(e) if str(path) in str(e) else f"{path}: {e}"
                err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            bar.advance(task)
    console.print(
        f"{len(paths) - len(failed)} of {len(paths)} images, {n_det} detections "
        f"(threshold {detector.threshold:.3f}) -> {out}",
        highlight=False,
    )
    if failed:
        fail(RuntimeError(f"{len(failed)} image(s) failed, first {images_dir / failed[0]}"), code=1)
