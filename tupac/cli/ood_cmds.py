"""``tupac ood-reference``: record a model's training distribution in its card, for the out-of-distribution check."""

from __future__ import annotations

from pathlib import Path

import typer

from tupac.cli.app import app, console, fail, run_guarded


@app.command("ood-reference")
def ood_reference_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder (card.json + model.safetensors), e.g. MODELS/mitosis."),
    inputs: list[Path] = typer.Argument(None, help="The model's training inputs: slide files, or with --images "
                                                  "images taken as read at the model's µm/px; or folders of them."),
    images: bool = typer.Option(False, "--images/--slides", help="Inputs are images (e.g. the mitosis training "
                                                                 "fields), not whole-slide images."),
    tissue_mpp: float = typer.Option(8.0, "--tissue-mpp", help="Tissue mask resolution of slides (µm/px)."),
    run: Path = typer.Option(None, "--run", help="Instead of inputs: a `tupac infer` run over the training cohort; its "
                                                 "commit records' statistics, tumor fraction and mitotic density included."),
    slide_ids: list[str] = typer.Option(None, "--slide", help="With --run: only these slides (repeat; default all)."),
) -> None:
    """Measure the stain and texture statistics of the training inputs and keep their reference
    ranges in the model card (extra.ood_reference), where `tupac infer` compares every slide with
    them. For models trained before cards kept them, and for mitosis models (their training does
    not record them yet). With --run, from the commit records of a run over the training cohort:
    the only source of the tumor fraction and mitotic density as the models see them. The weights,
    and so earlier outputs, are untouched."""
    # Deferred: slide readers load only when the command runs; `tupac --help` stays fast.
    from tupac.data.layout import SLIDE_SUFFIXES
    from tupac.errors import ConfigError
    from tupac.features.ood import record_reference, reference_from_inputs, reference_from_run
    from tupac.models.io import load_card

    card = run_guarded(load_card, model)
    if (run is None) == (not inputs):
        fail(ConfigError("give either training inputs or --run, not both or neither"))
    if run is not None:
        ref = run_guarded(reference_from_run, run, card.task, slide_ids or None)
        path = run_guarded(record_reference, model, ref)
        console.print(f"{ref['n']} committed slide(s) of {run} with statistics; {len(ref['stats'])} statistics -> {path}",
                      highlight=False)
        return
    suffixes = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp") if images else tuple(SLIDE_SUFFIXES)
    files = []
    for p in inputs:
        files += sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes) if p.is_dir() else [p]
    ref = run_guarded(reference_from_inputs, files, card.mpp, images, tissue_mpp)
    path = run_guarded(record_reference, model, ref)
    console.print(f"{ref['n']} of {len(files)} input(s) with tissue; {len(ref['stats'])} statistics -> {path}",
                  highlight=False)
