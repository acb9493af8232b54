"""Real Ray clusters on this machine for tests: ``ray start`` heads and worker nodes, each cluster in its
own short temp folder, stopped by killing only its own processes.

Loopback-only test clusters run without token authentication (Ray >= 2.5x enables it on
``ray start --head``, and a worker node or driver started from another shell would need the token
propagated): pass :data:`NO_AUTH` in the environment of every process that talks to one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

PY = sys.executable
RAY = str(Path(PY).with_name("ray"))
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
# A job's entrypoint (`python jobs/...`) and a fake autoscaler's nodes run with the head's PATH: put this
# environment's python and ray first, as a cluster image does.
VENV_PATH = {"PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_temp() -> Path:
    """A new temp folder under /tmp: Ray's socket paths (temp/session_*/sockets/...) must stay short."""
    return Path(tempfile.mkdtemp(prefix="tr", dir="/tmp"))


def ray_cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``ray ARGS`` with this environment's ray, without authentication."""
    return subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **NO_AUTH, **VENV_PATH, **(env or {})})


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] != "Z"
    except OSError:
        return False


def cluster_processes(temp: Path) -> list[int]:
    """The processes of the cluster in ``temp``: those whose command line names the folder (GCS,
    raylets, log monitors) and those holding a file open under it: the per-node agents
    (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) and workers rename themselves and would
    otherwise outlive their raylet."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(temp) in cmd or any(str(temp) in os.readlink(f) for f in (d / "fd").iterdir()):
                pids.append(int(d.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def stop_cluster(temp: Path) -> None:
    """Stop the Ray processes of *this* cluster only (:func:`cluster_processes`); ``ray stop`` would
    also stop other people's Ray on a shared machine."""
    import shutil

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_processes(temp):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(2)
    shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def started_cluster(head_cpus: int, workers: list[tuple[int, int]], object_store_bytes: int = 200_000_000
                    ) -> Iterator[tuple[str, Path]]:
    """A head with ``head_cpus`` CPUs and no GPU, and one worker node per ``(cpus, gpus)`` in ``workers``
    (GPUs declared, not real), started with ``ray start`` in a new short temp folder; yields
    ``(address, temp)`` and stops every process of the cluster on leaving (:func:`stop_cluster`).

    Each node's object store is bounded (``object_store_bytes``): the nodes share this machine's /dev/shm.
    """
    port, temp = free_port(), short_temp()
    env = {"RAY_object_store_memory": str(object_store_bytes)}
    address = f"127.0.0.1:{port}"
    try:
        head = ray_cli("start", "--head", f"--port={port}", f"--num-cpus={head_cpus}", "--num-gpus=0",
                       "--include-dashboard=false", f"--temp-dir={temp}", f"--object-store-memory={object_store_bytes}",
                       "--disable-usage-stats", env=env)
        assert head.returncode == 0, head.stderr[-2000:]
        for cpus, gpus in workers:
            w = ray_cli("start", f"--address={address}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                        f"--object-store-memory={object_store_bytes}", "--disable-usage-stats", env=env)
            assert w.returncode == 0, w.stderr[-2000:]
        yield address, temp
    finally:
        stop_cluster(temp)
