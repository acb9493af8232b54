"""``tupac infer``: cohort inference on Ray (the same command ``jobs/infer_cohort.py`` runs).

Local machine (starts Ray)::

    tupac infer --data ROOT --models MODELS --out RUN

A cluster (``ray start --head`` / ``ray up ray_cluster.yaml``), either with the address or as a
Ray job (the driver then runs on the head)::

    tupac infer --manifest cohort.csv --models MODELS --out RUN --address ray://head:10001
    ray job submit --working-dir . -- python jobs/infer_cohort.py --manifest cohort.csv \\
        --models MODELS --out RUN --num-gpus-per-actor 1

Exit status: 0 when every slide is DONE, 1 when any slide failed, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tupac.cli.app import app, console, err_console, fail, run_guarded


def infer_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="TUPAC16-layout dataset root (its slides are the cohort)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="CSV with header slide_id,path[,mpp]."),
    models: Path = typer.Option(..., "--models", help="Models folder with tumor/ (and mitosis/) from `tupac train`."),
    out: Path = typer.Option(..., "--out", help="Run folder: slides/<id>.zarr, <id>.mitoses.csv, ledger, summary.json."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray address (default: $RAY_ADDRESS, else a local Ray)."),
    num_gpus_per_actor: Optional[float] = typer.Option(
        None, "--num-gpus-per-actor", min=0.0, help="GPUs per model actor, fractional allowed (default: 1 if the cluster has GPUs, else 0)."),
    actors: Optional[int] = typer.Option(None, "--actors", min=1, help="Model actors (default: one per GPU share; on CPU, CPUs/2)."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Windows (~1k x 1k px) per actor call (default: 8 on GPU, 1 on CPU)."),
    max_attempts: int = typer.Option(3, "--max-attempts", min=1, help="Runs after which a failing slide is given up."),
    cpus_per_actor: float = typer.Option(1.0, "--cpus-per-actor", min=0.01, help="CPUs Ray reserves per actor."),
    threads_per_actor: Optional[int] = typer.Option(
        None, "--threads-per-actor", min=1, help="torch threads of a CPU actor (default: cluster CPUs / actors)."),
    tumor_chunk: int = typer.Option(64, "--tumor-chunk", min=4, help="Tumor heatmap cells per window edge."),
    mitosis_chunk: int = typer.Option(64, "--mitosis-chunk", min=4, help="Mitosis heatmap cells per window edge."),
    backend: str = typer.Option("auto", "--backend", help="Slide reader: auto, openslide or cucim."),
    local_cpus: Optional[int] = typer.Option(None, "--local-cpus", min=1, help="CPUs of a local Ray started here."),
    object_store_mb: Optional[int] = typer.Option(None, "--object-store-mb", min=64, help="Object store of a local Ray (MiB)."),
    dashboard: Optional[bool] = typer.Option(None, "--dashboard/--no-dashboard", help="Dashboard of a local Ray."),
    local_temp_dir: Optional[str] = typer.Option(None, "--local-temp-dir", help="Temp folder of a local Ray (short path)."),
    gpu_tf32: bool = typer.Option(
        False, "--gpu-tf32/--no-gpu-tf32",
        help="TF32 convolutions on GPU actors: faster, but heatmaps then differ from a CPU run's by up to ~2e-3."),
) -> None:
    """Run the tumor and mitosis models over a cohort on Ray: heatmaps, detections, ledger, summary."""
    from tupac.infer.job import JobConfig
    from tupac.data.manifest import load_cohort

    if (data is None) == (manifest is None):
        fail(ValueError("give exactly one of --data ROOT or --manifest CSV"))
    entries = run_guarded(load_cohort, manifest=manifest, data=data)
    cfg = run_guarded(
        JobConfig, models=models, out=out, address=address, num_gpus_per_actor=num_gpus_per_actor, actors=actors,
        batch_size=batch_size, max_attempts=max_attempts, cpus_per_actor=cpus_per_actor, threads_per_actor=threads_per_actor, tumor_chunk=tumor_chunk,
        mitosis_chunk=mitosis_chunk, backend=backend, local_cpus=local_cpus, object_store_mb=object_store_mb,
        include_dashboard=dashboard, local_temp_dir=local_temp_dir, gpu_tf32=gpu_tf32,
    )
    summary = run_guarded(_run, entries, cfg)
    _print_summary(summary, out)
    if not summary["ok"]:
        raise typer.Exit(1)


def _run(entries, cfg):
    from tupac.infer.job import run_job
    from tupac.infer.progress import CohortProgress

    return run_job(entries, cfg, progress=lambda total: CohortProgress(total, console=err_console))


def _print_summary(summary: dict, out: Path) -> None:
    from rich.table import Table

    counts = summary["counts"]
    t = Table(title=f"tupac infer: {out}", show_header=True)
    for col in ("done", "skipped (already done)", "failed", "unfinished", "tiles/s", "slides/h"):
        t.add_column(col)
    tp = summary.get("throughput") or {}
    t.add_row(str(counts["DONE"]), str(len(summary["skipped"])), str(counts["FAILED"]), str(len(summary["unfinished"])),
              f"{tp.get('tiles_per_s', 0):.2f}", f"{tp.get('slides_per_h', 0):.1f}")
    console.print(t)
    for f in summary["failed"]:
        gave_up = " (given up)" if f["given_up"] else ""
        console.print(f"[red]FAILED[/] {f['slide_id']} after {f['attempts']} attempt(s){gave_up}: {f['error']}", highlight=False, soft_wrap=True)
    for sid in summary.get("no_tissue") or []:
        console.print(f"[yellow]warning:[/] {sid}: no tissue found; committed with empty heatmaps, and its features "
                      "will be missing (flag no_tissue)", highlight=False, soft_wrap=True)
    for task, why in (summary.get("skipped_stages") or {}).items():
        console.print(f"[yellow]{task} stage skipped:[/] {why}", highlight=False)
    console.print(f"summary: {out / 'summary.json'}", highlight=False)


app.command("infer")(infer_cmd)

__all__ = ["infer_cmd"]
