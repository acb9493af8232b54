"""Dask-on-Ray: the scheduler that runs the features stage's Dask graphs as Ray tasks."""

from __future__ import annotations

from typing import Any, Callable


def ray_dask_scheduler() -> Callable[..., Any]:
    """Connect to Ray (the local one, or ``RAY_ADDRESS``) and return Ray's Dask ``get``.

    Hand the result to :func:`tupac.feature_run.run_features` as ``scheduler``; the features stage
    itself never imports Ray.
    """
    # Deferred: Ray takes seconds to import and is needed only when this scheduler is asked for.
    import ray
    from ray.util.dask import ray_dask_get

    ray.init(ignore_reinit_error=True, log_to_driver=False)
    return ray_dask_get
