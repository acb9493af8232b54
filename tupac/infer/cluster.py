"""Where a stage's work runs: in this process, or as Ray tasks on a local Ray or a cluster.

Every stage of ``tupac run`` hands its per-slide and cross-slide work to an *executor* with two
methods, so that the stage's own code never imports Ray (``../shared/ARCHITECTURE.md``: Ray only in
``tupac/infer/``):

- ``call(fn, *args, num_cpus=, num_gpus=, name=)``: one function, its result (training, a fit);
- ``map(fn, items, num_cpus=, num_gpus=, on_done=)``: one call per argument tuple, the results in
  the items' order (per-slide features).

Both take ``keep=k``: then ``fn`` returns a tuple ``(small, heavy_1, ..., heavy_k)``, the small part
is fetched and the heavy parts stay behind *handles* (a slide's deep mitosis descriptors, up to
``max_deep_per_slide x 4096`` float32 = 32 MB, which only the cross-slide fits need): the result is
``(small, (handle_1, ..., handle_k))``. The next ``call``/``map`` receives handles as top-level
arguments and reads them on its own node (on Ray a handle is the return value's ``ObjectRef``, which
Ray resolves for a task; here it is the value itself, so the stage's code is the same everywhere).
A handle must not be nested in a container (Ray resolves only top-level ``ObjectRef`` arguments).

:class:`LocalExecutor` runs them here, one after another (tests, notebooks, ``tupac features``
without ``--address``). :class:`RayExecutor` runs each as a Ray task that asks for the resources it
names, so an autoscaling cluster brings up the nodes the work needs; the functions must be
importable on the workers (top-level functions of the ``tupac`` package), and their arguments and
results cross the object store, so they carry paths, configs and small arrays, never pixels.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from tupac.errors import TupacError
from tupac.slide.quiet import route_cufile_log

__all__ = ["LocalExecutor", "RayExecutor", "connect_ray", "dashboard_url", "split_kept"]


def split_kept(out: Any, keep: int, fn: Callable[..., Any]) -> Any:
    """``out`` unchanged (``keep=0``), else ``(out[0], out[1:])`` after checking ``out`` holds ``1 + keep`` values."""
    if not keep:
        return out
    if not isinstance(out, tuple) or len(out) != 1 + keep:
        raise TypeError(f"{getattr(fn, '__name__', fn)} must return a tuple (small, {keep} kept value(s)), "
                        f"got {type(out).__name__}")
    return out[0], tuple(out[1:])


def _small(result: Any, keep: int) -> Any:
    """What ``on_done`` is given: the result, or its small part."""
    return result[0] if keep else result


class LocalExecutor:
    """Runs every call in this process, in order (the executor of a plain function call)."""

    where = "local"

    def call(self, fn: Callable[..., Any], *args: Any, num_cpus: float = 1, num_gpus: float = 0,
             name: str | None = None, keep: int = 0, **kwargs: Any) -> Any:
        return split_kept(fn(*args, **kwargs), keep, fn)

    def map(self, fn: Callable[..., Any], items: Sequence[tuple], *, num_cpus: float = 1, num_gpus: float = 0,
            name: str | None = None, keep: int = 0, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        out = []
        for i, args in enumerate(items):
            out.append(split_kept(fn(*args), keep, fn))
            if on_done is not None:
                on_done(i, _small(out[-1], keep))
        return out

    def gpus(self) -> float:
        return 0.0


def connect_ray(address: str | None = None, *, log_dir: str | Path | None = None, local_cpus: int | None = None,
                object_store_mb: int | None = None, include_dashboard: bool | None = None,
                temp_dir: str | None = None, env_vars: dict[str, str] | None = None) -> tuple[bool, str | None]:
    """Connect to the Ray at ``address`` (else ``$RAY_ADDRESS``, else start a local one).

    Returns ``(started_here, dashboard_url)``; whoever started Ray shuts it down. The workers'
    cuCIM writes cuFile's log to ``log_dir/cufile.log``, never to their current folder: a local Ray
    inherits this process's environment, a cluster's workers get the variable (and ``env_vars``,
    e.g. ``MLFLOW_TRACKING_URI``) through ``runtime_env`` (left out when the user set the cuFile
    variable: it might be the job's own runtime_env, which Ray refuses to see redefined).
    """
    # Deferred: Ray takes seconds to import and only the cluster paths need it.
    import ray

    if ray.is_initialized():
        return False, dashboard_url()
    cufile_env = route_cufile_log(log_dir) if log_dir is not None else {}
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if address or os.environ.get("RAY_ADDRESS"):
        env = {**cufile_env, **(env_vars or {})}
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
        ctx = ray.init(address=address, **kwargs)
    else:
        if local_cpus is not None:
            kwargs["num_cpus"] = local_cpus
        if object_store_mb is not None:
            kwargs["object_store_memory"] = int(object_store_mb) * 1024**2
        if include_dashboard is not None:
            kwargs["include_dashboard"] = include_dashboard
        if temp_dir:
            kwargs["_temp_dir"] = str(temp_dir)
        ctx = ray.init(**kwargs)
    return True, getattr(ctx, "dashboard_url", None) or dashboard_url()


def dashboard_url() -> str | None:
    """The connected Ray's dashboard address, or None (no dashboard, or not connected)."""
    try:
        from ray._private.worker import get_dashboard_url

        return get_dashboard_url() or None
    except Exception:
        return None


@contextlib.contextmanager
def _project_errors():
    """Raise a task's own :class:`~tupac.errors.TupacError` as itself (its one-line message names the
    file and the problem); Ray's wrapper, with the remote traceback, stays the error's ``__cause__``."""
    from ray.exceptions import RayTaskError

    try:
        yield
    except RayTaskError as err:
        if isinstance(err.cause, TupacError):
            raise err.cause from err
        raise


class RayExecutor:
    """Runs calls as Ray tasks on the Ray this process is connected to (see :func:`connect_ray`).

    Use as a context manager, which connects (starting a local Ray when no address is given) and
    shuts Ray down on leaving if it started it::

        with RayExecutor(address) as ex:
            rows = ex.map(slide_features, [(slide, cfg) for slide in slides], num_cpus=1)

    A task whose worker dies is retried by Ray ``retries`` times; an exception raised by the
    function is raised here (Ray's error is an instance of the original exception's class, with
    the remote traceback in its message), after the other tasks of the map are cancelled.
    """

    where = "ray"

    def __init__(self, address: str | None = None, *, retries: int = 2, **connect_kwargs: Any) -> None:
        self.address, self.retries, self._connect_kwargs = address, retries, connect_kwargs
        self.started = False
        self.dashboard: str | None = None

    def __enter__(self) -> RayExecutor:
        self.started, self.dashboard = connect_ray(self.address, **self._connect_kwargs)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def gpus(self) -> float:
        """GPUs of the nodes up now (an autoscaling cluster may have none yet)."""
        import ray

        return float(ray.cluster_resources().get("GPU", 0))

    def _remote(self, fn: Callable[..., Any], num_cpus: float, num_gpus: float, name: str | None, keep: int):
        import ray

        if keep < 0:
            raise ValueError(f"keep={keep!r}: expected >= 0")
        return ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.retries,
                                      num_returns=1 + keep, name=name or getattr(fn, "__name__", "task"))

    def call(self, fn: Callable[..., Any], *args: Any, num_cpus: float = 1, num_gpus: float = 0,
             name: str | None = None, keep: int = 0, **kwargs: Any) -> Any:
        import ray

        refs = self._remote(fn, num_cpus, num_gpus, name, keep).remote(*args, **kwargs)
        with _project_errors():
            return (ray.get(refs[0]), tuple(refs[1:])) if keep else ray.get(refs)

    def map(self, fn: Callable[..., Any], items: Sequence[tuple], *, num_cpus: float = 1, num_gpus: float = 0,
            name: str | None = None, keep: int = 0, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        import ray

        task = self._remote(fn, num_cpus, num_gpus, name, keep)
        refs = [task.remote(*args) for args in items]
        firsts = [r[0] for r in refs] if keep else refs  # the small parts: what the driver waits for
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
        return [(s, tuple(r[1:])) for s, r in zip(small, refs)] if keep else small
