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
from rich.table import Table

from tupac.cli.app import app, console, err_console, fail, run_guarded
from tupac.cli.options import CONFIG_FILE_ONLY, ConfigOptions, Flag, config_command

# JobConfig's fields as options: names and command-line bounds here, defaults and help from the class.
INFER_OPTIONS = ConfigOptions("tupac.infer.job:JobConfig", {
    "models": Flag("--models"),
    "out": Flag("--out"),
    "address": Flag("--address"),
    "num_gpus_per_actor": Flag("--num-gpus-per-actor", min=0.0),
    "actors": Flag("--actors", min=1),
    "max_actors": Flag("--max-actors", min=1),
    "actor_timeout_s": Flag("--placement-timeout", min=1.0),
    "batch_size": Flag("--batch-size", min=1),
    "max_attempts": Flag("--max-attempts", min=1),
    "cpus_per_actor": Flag("--cpus-per-actor", min=0.01),
    "threads_per_actor": Flag("--threads-per-actor", min=1),
    "tumor_chunk": Flag("--tumor-chunk", min=4),
    "mitosis_chunk": Flag("--mitosis-chunk", min=4),
    "backend": Flag("--backend"),
    "local_cpus": Flag("--local-cpus", min=1),
    "object_store_mb": Flag("--object-store-mb", min=64),
    "include_dashboard": Flag("--dashboard/--no-dashboard"),
    "local_temp_dir": Flag("--local-temp-dir"),
    "gpu_tf32": Flag("--gpu-tf32/--no-gpu-tf32"),
    "decode_device": Flag("--decode-device"),
    "actor_concurrency": Flag("--actor-concurrency", min=1, max=2),
    "ood_max_z": Flag("--ood-max-z", min=0.01),
    "ood_margin": Flag("--ood-margin", min=0.0),
}, not_exposed={name: CONFIG_FILE_ONLY for name in (
    "tissue_mpp", "tissue_max_hole_um2", "tissue_dilation_um", "tissue_min_object_um2", "inflight_per_actor", "max_active_slides", "batch_retries", "task_retries")})


def infer_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="TUPAC16-layout dataset root (its slides are the cohort)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="CSV with header slide_id,path[,mpp]."),
    **job,
) -> None:
    """Run the tumor and mitosis models over a cohort on Ray: heatmaps, detections, ledger, summary."""
    # Deferred: the job's modules import numpy and the slide readers, which `tupac --help` should not pay for.
    from tupac.data.manifest import load_cohort
    from tupac.infer.job import JobConfig

    if (data is None) == (manifest is None):
        fail(ValueError("give exactly one of --data ROOT or --manifest CSV"))
    entries = run_guarded(load_cohort, manifest=manifest, data=data)
    cfg = run_guarded(JobConfig, **job)
    summary = run_guarded(_run, entries, cfg)
    _print_summary(summary, cfg.out)
    if not summary["ok"]:
        raise typer.Exit(1)


def _run(entries, cfg):
    # Deferred: the job and its progress display import numpy and the slide readers (ray, at run time).
    from tupac.infer.job import run_job
    from tupac.infer.progress import CohortProgress

    return run_job(entries, cfg, progress=lambda total: CohortProgress(total, console=err_console))


def _print_summary(summary: dict, out: Path) -> None:
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
    for flagged in summary.get("ood") or []:
        console.print(f"[yellow]warning:[/] {flagged['slide_id']}: out of distribution for the models "
                      f"({flagged['reasons']}); its grade may be confidently wrong", highlight=False, soft_wrap=True)
    for task, why in (summary.get("skipped_stages") or {}).items():
        console.print(f"[yellow]{task} stage skipped:[/] {why}", highlight=False)
    console.print(f"summary: {out / 'summary.json'}", highlight=False)


config_command(app, "infer", INFER_OPTIONS)(infer_cmd)

__all__ = ["INFER_OPTIONS", "infer_cmd"]
