"""``tupac score-mitoses``: TUPAC16 task-3 F1 of a folder of detection CSVs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from tupac.cli.app import app, console, err_console, run_guarded


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def _score_dirs(pred_dir: Path, truth_dir: Path, radius: float):
    # Deferred: the stage's modules load only when the command runs; `tupac --help` stays fast.
    from tupac.mitosis.io import pair_csv_trees, read_detections_csv, read_truth_csv
    from tupac.mitosis.scoring import score_images

    ids, missing = pair_csv_trees(pred_dir, truth_dir)
    missing_set = set(missing)

    def pairs():
        for image_id in ids:
            truth = read_truth_csv(truth_dir / image_id)
            pred = (
                truth.iloc[:0] if image_id in missing_set else read_detections_csv(pred_dir / image_id)
            )
            yield image_id, pred, truth

    pooled, table = score_images(pairs(), radius=radius)
    return pooled, table, missing


@app.command("score-mitoses")
def score_mitoses(
    pred_dir: Path = typer.Argument(..., help="Folder of detection CSVs (row,col,prob; NN/MM.csv)."),
    truth_dir: Path = typer.Argument(..., help="Folder of ground-truth CSVs (row,col; NN/MM.csv)."),
    radius: float = typer.Option(30.0, "--radius", min=0.0, help="Match radius in pixels (30 px = 7.5 µm at 40x)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the per-image table."),
) -> None:
    """Score mitosis detections as TUPAC16 does: one-to-one matches within RADIUS, F1 pooled over images.

    Every ground-truth file is scored; an image without a prediction file counts as no detections
    (and is listed); a prediction file without ground truth is an error.
    """
    pooled, table, missing = run_guarded(_score_dirs, pred_dir, truth_dir, radius)

    if as_json:
        out = {"radius": radius, "n_images": len(table), **pooled.to_dict(), "missing_predictions": missing}
        if verbose:
            records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
            out["images"] = records
        typer.echo(json.dumps(out, indent=2))
        return

    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        err_console.print(f"note: {len(missing)} image(s) without a prediction file, scored as no detections: {shown}")
    if verbose:
        from rich.table import Table

        t = Table("image", "n_pred", "n_truth", "TP", "FP", "FN", "precision", "recall", "F1")
        for r in table.itertuples(index=False):
            t.add_row(
                r.image, str(r.n_pred), str(r.n_truth), str(r.tp), str(r.fp), str(r.fn),
                _fmt(r.precision), _fmt(r.recall), _fmt(r.f1),
            )
        console.print(t)
    typer.echo(f"images: {len(table)}  radius: {radius:g} px")
    typer.echo(f"TP: {pooled.tp}  FP: {pooled.fp}  FN: {pooled.fn}")
    typer.echo(f"precision: {_fmt(pooled.precision)}  recall: {_fmt(pooled.recall)}  F1: {_fmt(pooled.f1)}")
