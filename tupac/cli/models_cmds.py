"""``tupac models``: the registered networks with the paper's Fig. 2 numbers."""

from __future__ import annotations

import json

import typer

from tupac.cli.app import app, console, fail, run_guarded
from tupac.errors import ConfigError


@app.command("models")
def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
    task: str = typer.Option(None, "--task", help="Only models for this task (tumor or mitosis)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Forward passes averaged per model."),
) -> None:
    """List registered networks: parameters, receptive field, conv/pool layers, forward time."""
    from rich.progress import Progress
    from rich.table import Table

    # Deferred: loads torch only when the command runs; `tupac --help` stays fast.
    from tupac.models import list_models
    from tupac.models.profile import profile_models

    if task is not None and task not in ("tumor", "mitosis"):
        fail(ConfigError(f"--task {task!r}: expected 'tumor' or 'mitosis'"))
    names = list_models(task=task)
    with Progress(transient=True, console=console, disable=as_json) as progress:
        bar = progress.add_task("timing forward passes", total=len(names))

        def step(name: str) -> None:
            progress.update(bar, advance=1, description=f"timing {name}")

        rows = run_guarded(profile_models, names, repeats, step, task)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        title="Networks (Fig. 2): forward time of one native-size input on this machine",
        caption="input: patch px at um/px; RF: receptive field px; FCN: one pass gives the heatmap",
    )
    for col in ("name", "task", "input", "FCN", "params", "RF", "stride", "conv", "pool", "fc", "ms"):
        table.add_column(col, justify="left" if col in ("name", "task", "FCN") else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["name"],
            r["task"],
            f"{r['patch_size']}@{r['mpp']:g}",
            "yes" if r["fully_convolutional"] else "no",
            f"{r['params']:,}",
            str(r["receptive_field"]),
            str(r["output_stride"]),
            str(r["conv_layers"]),
            str(r["pool_layers"]),
            str(r["fc_layers"]),
            f"{r['forward_ms']:.1f}",
        )
    from rich.console import Console

    # Piped output defaults to 80 columns, which would truncate the numbers.
    out = console if console.is_terminal and console.width >= 110 else Console(width=110)
    out.print(table)
