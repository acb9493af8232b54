"""Where a stage's tasks ran: which Ray node, how many CPUs and GPUs, recorded as the tasks finish.

``tupac run`` hands each stage's work to an executor (:mod:`tupac.infer.cluster`); wrapping that
executor in a :class:`PlacementRecorder` makes every task report the node it ran on, so the
pipeline can print it ("[train_tumor] ran on node 4f2a19c0 (worker, 127.0.0.1), 2 CPUs, 1 GPU")
and keep it in the stage's record. On a cluster that is how one finds which node's log holds a
training's output, and checks that the driver did no work itself.

A node is named by the first 8 hex digits of its Ray node id (unique, and what ``ray status`` and
the dashboard show), with its IP address and whether it is the head.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter
from typing import Any, Callable, Sequence

from tupac.infer.cluster import split_kept

__all__ = ["PlacementRecorder", "cluster_summary", "describe", "here", "largest_node_cpus", "placed", "summarize"]

SHORT_ID = 8


def here() -> dict[str, Any]:
    """Where this process runs: Ray node id and IP, host, PID, the CPUs and GPU ids Ray assigned.

    Outside Ray (a :class:`~tupac.infer.cluster.LocalExecutor` without a Ray session) the node is
    ``"local"``.
    """
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "node_id": "local",
                           "node_ip": None, "cpus": None, "gpu_ids": []}
    # Only when this process already uses Ray: a plain local run must not import it (seconds).
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return out
    ctx = ray.get_runtime_context()
    out["node_id"] = ctx.get_node_id()
    try:
        out["node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # an old or partial Ray: the IP is a convenience, the node id is what counts
        pass
    try:
        assigned = ctx.get_assigned_resources()
        out["cpus"] = assigned.get("CPU")
        out["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # the driver itself (no task running): nothing assigned
        pass
    return out


def placed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``fn(*args, **kwargs)`` and :func:`here` (a top-level function, so Ray can ship it to workers)."""
    return fn(*args, **kwargs), here()


def placed_keeping(fn: Callable[..., Any], keep: int, *args: Any, **kwargs: Any) -> tuple:
    """:func:`placed` for a call whose ``keep`` trailing results stay behind handles
    (:mod:`tupac.infer.cluster`): ``((small, here()), kept_1, ..., kept_keep)``."""
    small, kept = split_kept(fn(*args, **kwargs), keep, fn)
    return ((small, here()), *kept)


def _nodes() -> dict[str, dict[str, Any]]:
    """The cluster's live nodes by node id: IP, whether head, CPUs and GPUs (empty without Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    out = {}
    for n in ray.nodes():
        if not n.get("Alive", n.get("alive", False)):
            continue
        res = n.get("Resources", {})
        out[n["NodeID"]] = {"ip": n.get("NodeManagerAddress"), "head": "node:__internal_head__" in res,
                            "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0)}
    return out


def largest_node_cpus(with_gpu: bool = False) -> float:
    """CPUs of the live node with the most (of those with a GPU, if ``with_gpu``); 0 without Ray, or
    before an autoscaler brought up any."""
    return max((n["cpus"] for n in _nodes().values() if n["gpus"] >= 1 or not with_gpu), default=0.0)


def cluster_summary() -> str:
    """One line on the connected Ray: its nodes, CPUs and GPUs (``"3 nodes (1 head), 4 CPUs, 2 GPUs"``)."""
    nodes = _nodes()
    cpus = sum(n["cpus"] for n in nodes.values())
    gpus = sum(n["gpus"] for n in nodes.values())
    return (f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPU{'s' * (cpus != 1)}, "
            f"{gpus:g} GPU{'s' * (gpus != 1)}")


def summarize(places: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a stage's record keeps of its tasks' placements: per node, its IP, role and task count.

    Parameters
    ----------
    places : sequence of dict
        :func:`here` of each task, with the ``num_cpus`` and ``num_gpus`` it asked for.

    Returns
    -------
    dict
        ``{"tasks": n, "num_cpus": c, "num_gpus": g, "nodes": {node_id: {"ip", "role", "tasks",
        "gpu_ids", "pids"}}}`` (``pids``: the worker processes, whose logs hold the tasks' output) (``c``, ``g``: the most a task asked for); ``role`` is ``head``, ``worker`` or
        ``local``.
    """
    known = _nodes()
    counts = Counter(p["node_id"] for p in places)
    nodes: dict[str, dict[str, Any]] = {}
    for p in places:
        nid = p["node_id"]
        if nid not in nodes:
            info = known.get(nid)
            role = "local" if nid == "local" else ("unknown" if info is None else ("head" if info["head"] else "worker"))
            nodes[nid] = {"ip": p.get("node_ip") or (info or {}).get("ip"), "role": role, "tasks": counts[nid], "gpu_ids": [], "pids": []}
        nodes[nid]["gpu_ids"] = sorted(set(nodes[nid]["gpu_ids"]) | set(p.get("gpu_ids") or []))
        if p.get("pid") is not None and p["pid"] not in nodes[nid]["pids"]:
            nodes[nid]["pids"].append(p["pid"])
    return {"tasks": len(places), "num_cpus": max((p.get("num_cpus", 0) for p in places), default=0),
            "num_gpus": max((p.get("num_gpus", 0) for p in places), default=0), "nodes": nodes}


def describe(summary: dict[str, Any]) -> str:
    """One line for the console: ``"1 Ray task on node 4f2a19c0 (worker, 127.0.0.1), 2 CPUs, 1 GPU"``."""
    n = summary["tasks"]
    nodes = summary["nodes"]
    where = ", ".join(
        f"{nid[:SHORT_ID]} ({info['role']}{', ' + info['ip'] if info.get('ip') else ''}"
        f"{'' if len(nodes) == 1 else ': ' + str(info['tasks'])})" for nid, info in nodes.items())
    if list(nodes) == ["local"]:
        return f"{n} call{'s' * (n != 1)} in this process"
    ask = f"{summary['num_cpus']:g} CPU{'s' * (summary['num_cpus'] != 1)}"
    if summary["num_gpus"]:
        ask += f", {summary['num_gpus']:g} GPU{'s' * (summary['num_gpus'] != 1)}"
    return (f"{n} Ray task{'s' * (n != 1)} on node{'s' * (len(nodes) != 1)} {where}, "
            f"{ask}{' each' if n != 1 else ''}")


class PlacementRecorder:
    """An executor that runs through another one and records where each task ran.

    Every ``call`` and ``map`` goes to the wrapped executor as :func:`placed` ``(fn, ...)``, with the
    same resources and task name, and its result is unwrapped; :attr:`places` collects the
    :func:`here` of every task. Any other attribute (``gpus()``, ``where``) is the wrapped executor's.
    """

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.places: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.executor, name)

    def call(self, fn: Callable[..., Any], *args: Any, num_cpus: float = 1, num_gpus: float = 0,
             name: str | None = None, keep: int = 0, **kwargs: Any) -> Any:
        opts = dict(num_cpus=num_cpus, num_gpus=num_gpus, name=name or fn.__name__)
        if keep:
            (small, where), kept = self.executor.call(placed_keeping, fn, keep, *args, keep=keep, **opts, **kwargs)
            result = (small, kept)
        else:
            result, where = self.executor.call(placed, fn, *args, **opts, **kwargs)
        self.places.append({**where, "num_cpus": num_cpus, "num_gpus": num_gpus})
        return result

    def map(self, fn: Callable[..., Any], items: Sequence[tuple], *, num_cpus: float = 1, num_gpus: float = 0,
            name: str | None = None, keep: int = 0, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        def done(i: int, pair: tuple[Any, dict[str, Any]]) -> None:
            if on_done is not None:
                on_done(i, pair[0])

        opts = dict(num_cpus=num_cpus, num_gpus=num_gpus, name=name or fn.__name__, on_done=done)
        if keep:
            made = self.executor.map(placed_keeping, [(fn, keep, *args) for args in items], keep=keep, **opts)
            self.places.extend({**where, "num_cpus": num_cpus, "num_gpus": num_gpus} for (_, where), _ in made)
            return [(small, kept) for (small, _), kept in made]
        pairs = self.executor.map(placed, [(fn, *args) for args in items], **opts)
        self.places.extend({**where, "num_cpus": num_cpus, "num_gpus": num_gpus} for _, where in pairs)
        return [result for result, _ in pairs]

    def summary(self) -> dict[str, Any] | None:
        """:func:`summarize` of the tasks so far; None when none ran."""
        return summarize(self.places) if self.places else None
