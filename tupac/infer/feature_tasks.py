"""Executor calls whose heavy results stay where they were made, for the features stage (issue 19).

:class:`tupac.infer.cluster.RayExecutor`'s ``call`` and ``map`` fetch every result into the driver.
A slide's features task makes two kinds of result: a small one the driver needs (its feature row,
fringe origins, a few counts) and heavy arrays that only the cross-slide fits need (its deep mitosis
descriptors, up to ``max_deep_per_slide x 4096`` float32 = 32 MB, and its general-feature volumes).
Fetching the heavy ones would put every slide's arrays in the driver and copy each twice. Here a task
returns ``(small, heavy_1, ..., heavy_k)``: the small part is fetched, the heavy parts stay behind
*handles*, which the next task receives as top-level arguments of ``executor.call`` / ``executor.map``
and reads from the object store on its own node:

- on Ray a handle is the ``ObjectRef`` of that return value (``num_returns = 1 + k``); Ray resolves
  an ``ObjectRef`` passed as a top-level argument of a task to its value on the worker;
- on any other executor (:class:`~tupac.infer.cluster.LocalExecutor`) a handle is the value itself,
  so the stage's code is the same in a test, a notebook and on a cluster.

A handle must not be nested in a container (a list of refs is not resolved by Ray); pass them spread
as ``*handles``. These two functions are what ``RayExecutor`` would need as methods (``map(...,
keep=k)`` and ``call(..., keep=k)``); they live here so that ``cluster.py`` stays as it is.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tupac.infer.cluster import _project_errors

__all__ = ["map_keep", "call_keep"]


def _is_ray(executor: Any) -> bool:
    return getattr(executor, "where", "local") == "ray"


def _check_keep(keep: int) -> None:
    if int(keep) < 1:
        raise ValueError(f"keep={keep!r}: expected >= 1 (use executor.call / executor.map to fetch everything)")


def _split(out: Any, keep: int, fn: Callable[..., Any]) -> tuple[Any, tuple]:
    # keep >= 1 is checked by the callers: with num_returns=1 Ray returns one ref, not a list.
    if not isinstance(out, tuple) or len(out) != 1 + keep:
        raise TypeError(f"{getattr(fn, '__name__', fn)} must return a tuple (small, {keep} kept value(s)), "
                        f"got {type(out).__name__}")
    return out[0], tuple(out[1:])


def _remote(executor: Any, fn: Callable[..., Any], keep: int, num_cpus: float, num_gpus: float, name: str | None):
    # Deferred: Ray takes seconds to import and only the cluster path needs it.
    import ray

    return ray.remote(fn).options(num_returns=1 + keep, num_cpus=num_cpus, num_gpus=num_gpus,
                                  max_retries=getattr(executor, "retries", 0),
                                  name=name or getattr(fn, "__name__", "task"))


def map_keep(executor: Any, fn: Callable[..., Any], items: Sequence[tuple], *, keep: int, num_cpus: float = 1,
             num_gpus: float = 0, name: str | None = None,
             on_done: Callable[[int, Any], None] | None = None) -> list[tuple[Any, tuple]]:
    """One call of ``fn`` per argument tuple; each call's small result fetched, the rest kept.

    Parameters
    ----------
    executor : LocalExecutor or RayExecutor
        Where the calls run (a ``RayExecutor`` must be connected: entered, or Ray already initialised).
    fn : callable
        A top-level function returning a tuple ``(small, kept_1, ..., kept_keep)``.
    items : sequence of tuple
        The argument tuples; they may hold handles from an earlier call (top-level only).
    keep : int
        How many trailing return values stay behind handles.
    num_cpus, num_gpus : float
        Resources of each task (Ray only).
    name : str, optional
        Task name (Ray's dashboard and timeline).
    on_done : callable(i, small), optional
        Called as each item's small result arrives (completion order on Ray, item order here).

    Returns
    -------
    list of (small, tuple of handles)
        In the items' order.

    Raises
    ------
    TupacError
        A task's own error, as itself (the remaining tasks are cancelled).
    """
    _check_keep(keep)
    if not _is_ray(executor):
        out = []
        for i, args in enumerate(items):
            out.append(_split(fn(*args), keep, fn))
            if on_done is not None:
                on_done(i, out[-1][0])
        return out
    import ray

    task = _remote(executor, fn, keep, num_cpus, num_gpus, name)
    refs = [task.remote(*args) for args in items]
    firsts = [r[0] for r in refs]
    index = {ref: i for i, ref in enumerate(firsts)}
    small: list[Any] = [None] * len(refs)
    pending = list(firsts)
    try:
        with _project_errors():
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index[ref]
                    small[i] = ray.get(ref)
                    if on_done is not None:
                        on_done(i, small[i])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=False)
        raise
    return [(s, tuple(r[1:])) for s, r in zip(small, refs)]


def call_keep(executor: Any, fn: Callable[..., Any], *args: Any, keep: int, num_cpus: float = 1,
              num_gpus: float = 0, name: str | None = None) -> tuple[Any, tuple]:
    """One call of ``fn(*args)`` (a tuple ``(small, kept_1, ..., kept_keep)``): the small result and the handles.

    See :func:`map_keep` for the parameters; a task's :class:`~tupac.errors.TupacError` is raised as itself.
    """
    _check_keep(keep)
    if not _is_ray(executor):
        return _split(fn(*args), keep, fn)
    import ray

    refs = _remote(executor, fn, keep, num_cpus, num_gpus, name).remote(*args)
    with _project_errors():
        return ray.get(refs[0]), tuple(refs[1:])
