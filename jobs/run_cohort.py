"""Ray job entrypoint: the whole pipeline (the same options as ``tupac run``).

Submit to a running cluster from the repository root::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/run_cohort.py --data DATA --out RUN --config pipeline.yaml

Inside a Ray job ``RAY_ADDRESS`` is set, so the pipeline's one Ray session joins the cluster: each
training is a Ray task that asks for a GPU when the cluster has one, inference runs the job's model
actors, the features are one task per slide, the fit and the report one task each; this driver
holds no pixels. ``RUN/pipeline/placement.json`` says which node ran what. Paths (DATA, RUN, the
config) must be visible to every node (shared storage), and ``python`` on the head must be the
environment with tupac installed (the cluster image's; on a laptop, start ``ray start --head`` from
the activated virtualenv). A job resubmitted on the same RUN skips every stage that is up to date.
"""

from __future__ import annotations

import sys
from pathlib import Path

# With `--working-dir .` the job runs from the uploaded copy of the repository; prefer its package.
_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "tupac" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def main() -> None:
    import typer

    from tupac.cli.pipeline_cmds import run_cmd

    job = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    job.command("run")(run_cmd)  # one command: its options are `tupac run`'s (no subcommand name needed)
    job()


if __name__ == "__main__":
    main()
