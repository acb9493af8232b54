"""The ``tupac`` command line: one Typer app, one module per command group."""

from __future__ import annotations

from tupac.cli.app import app, guarded_main

# Each import registers its commands on ``app``; keep one line per command module.
# (command modules are added here as they land)
import tupac.cli.slide_cmds  # noqa: E402,F401  (info)
import tupac.cli.tissue_cmds  # noqa: E402,F401  (tissue)
import tupac.cli.mitosis_cmds  # noqa: E402,F401  (score-mitoses)
import tupac.cli.synth_cmds  # noqa: E402,F401  (synth)
import tupac.cli.pipeline_cmds  # noqa: E402,F401  (run, demo)
import tupac.cli.stain_cmds  # noqa: E402,F401  (stain fit, stain apply)
import tupac.cli.predict_cmds  # noqa: E402,F401  (fit, predict, mlflow-ui)
import tupac.cli.tumor_cmds  # noqa: E402,F401  (train tumor, tumor-map)
import tupac.cli.models_cmds  # noqa: E402,F401  (models)
import tupac.cli.mitosis_train_cmds  # noqa: E402,F401  (train mitosis, detect-mitoses)
import tupac.cli.infer_cmds  # noqa: E402,F401  (infer)
import tupac.cli.report_cmds  # noqa: E402,F401  (report, export-qupath)
import tupac.cli.features_cmds  # noqa: E402,F401  (features)
import tupac.cli.ood_cmds  # noqa: E402,F401  (ood-reference)


def main() -> None:
    """Entry point of the ``tupac`` console script and of ``python -m tupac``: runs ``app`` on
    ``sys.argv`` with unexpected errors as one line plus a log file (see ``app.guarded_main``)."""
    guarded_main()


__all__ = ["app", "main"]
