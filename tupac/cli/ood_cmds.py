"""``tupac ood-reference``: record a model's training distribution in its card, for the out-of-distribution check."""

from __future__ import annotations

from pathlib import Path

import typer

from tupac.cli.app import app, console, run_guarded


@app.command("ood-reference")
def ood_reference_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder (card.json + model.safetensors), e.g. MODELS/mitosis."),
    inputs: list[Path] = typer.Argument(..., help="The model's training inputs: slide files, or with --images "
                                                  "images taken as read at the model's µm/px; or folders of them."),
    images: bool = typer.Option(False, "--images/--slides", help="Inputs are images (e.g. the mitosis training "
                                                                 "fields), not whole-slide images."),
    tissue_mpp: float = typer.Option(8.0, "--tissue-mpp", help="Tissue mask resolution of slides (µm/px)."),
) -> None:
    """Measure the stain and texture statistics of the training inputs and keep their reference
    ranges in the model card (extra.ood_reference), where `tupac infer` compares every slide with
    them. For models trained before cards kept them, and for mitosis models (their training does
    not record them yet). The weights, and so earlier outputs, are untouched."""
    # Deferred: slide readers load only when the command runs; `tupac --help` stays fast.
    from tupac.data.layout import SLIDE_SUFFIXES
    from tupac.features.ood import record_reference, reference_from_inputs
    from tupac.models.io import load_card

    card = run_guarded(load_card, model)
    suffixes = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp") if images else tuple(SLIDE_SUFFIXES)
    files = []
    for p in inputs:
        files += sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes) if p.is_dir() else [p]
    ref = run_guarded(reference_from_inputs, files, card.mpp, images, tissue_mpp)
    path = run_guarded(record_reference, model, ref)
    console.print(f"{ref['n']} of {len(files)} input(s) with tissue; {len(ref['stats'])} statistics -> {path}",
                  highlight=False)
