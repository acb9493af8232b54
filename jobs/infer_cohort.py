"""Ray job entrypoint: cohort inference (the same options as ``tupac infer``).

Submit to a running cluster from the repository root::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/infer_cohort.py --manifest cohort.csv --models MODELS --out RUN --num-gpus-per-actor 1

Inside a Ray job ``RAY_ADDRESS`` is set, so ``ray.init()`` joins the cluster; resources (GPUs and
CPUs per model actor, number of actors) are chosen by the options here, where the work is
scheduled, never inside the model code. Paths (MODELS, RUN, slides) must be visible to every node
(shared storage), and ``python`` on the head must be the environment with tupac installed (the
cluster image's; on a laptop, start ``ray start --head`` from the activated virtualenv).
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

    from tupac.cli.infer_cmds import INFER_OPTIONS, infer_cmd
    from tupac.cli.options import config_command

    job = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    config_command(job, "infer", INFER_OPTIONS)(infer_cmd)  # the options of `tupac infer`, from JobConfig
    job()


if __name__ == "__main__":
    main()
