"""Reliability of the cohort job with real processes: a multi-node Ray (head + 2 workers started
with ``ray start``, each worker declaring one GPU), device pinning, a model actor killed mid-slide,
a worker node killed mid-cohort, the driver killed mid-cohort and resumed, and ``ray job submit``.

Every run's heatmaps and detections are compared bitwise with a clean local run (CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ray_nodes import NO_AUTH, RAY, free_port, ray_cli, short_temp, started_cluster, stop_cluster
from test_job_support import (PY, ROOT, clean_digests, cluster_args, infer_cli, local_args, make_cohort, make_models,
                              output_digests)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort") / "root", n=3, seed=11)


@pytest.fixture(scope="module")
def clean(models, cohort, tmp_path_factory) -> dict:
    return clean_digests(models, cohort, tmp_path_factory.mktemp("clean") / "run")


def _connect(run: Path) -> contextlib.closing:
    """A connection closed on leaving the block (sqlite3's own context manager only commits).

    Read-write, as the job opens the ledger: after a writer is killed, the first connection rebuilds
    the WAL index from the log, which a read-only one may not be allowed to do; and no connection of
    this process may stay open past its read (it would keep the next reader on the old index)."""
    return contextlib.closing(sqlite3.connect(run / "ledger.sqlite", timeout=5))


def _states(run: Path) -> dict[str, tuple[str, int]]:
    if not (run / "ledger.sqlite").is_file():
        return {}  # never create it before the job does
    try:
        with _connect(run) as c:
            return {r[0]: (r[1], r[2]) for r in c.execute("SELECT slide_id, state, attempts FROM slides")}
    except sqlite3.Error:
        return {}


def _rows(run: Path) -> list[tuple]:
    """Every ledger row (for a failure message): what happened to each slide, when and where."""
    with _connect(run) as c:
        return c.execute("SELECT slide_id, state, attempts, started, finished, pid, error FROM slides").fetchall()


def _wait(pred, timeout: float, what: str, proc=None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"job ended before {what}: rc={proc.returncode}\n{err[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _mid_slide(run: Path):
    """A slide that is RUNNING with some heatmap chunks written (mid-slide), else None."""
    for sid, (state, _) in _states(run).items():
        chunks = list((run / "slides" / f"{sid}.zarr" / "tumor" / "0" / "c").rglob("*"))
        if state == "RUNNING" and any(p.is_file() for p in chunks):
            return sid
    return None


def _spawn(args, env=None) -> subprocess.Popen:
    e = {**os.environ, **(env or {})}
    return subprocess.Popen([PY, "-m", "tupac", "infer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=e, start_new_session=True)


def _done(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return s


def test_model_actor_killed_mid_slide(models, cohort, clean, tmp_path):
    run = tmp_path / "run"
    proc = _spawn(local_args(models, run, data=cohort))
    try:
        _wait(lambda: _mid_slide(run), 600, "a slide mid-way", proc)
        actors = json.loads((run / "actors.json").read_text())
        os.kill(actors[0]["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "died" in err  # the driver noticed and re-queued
    s = _done(run)
    assert s["counts"]["DONE"] == 3 and s["ok"]
    assert output_digests(run) == clean


def test_driver_killed_mid_cohort_then_resumed(models, cohort, clean, tmp_path):
    run = tmp_path / "run"
    temp = short_temp()  # the killed driver's local Ray is stopped by this folder afterwards
    proc = _spawn(local_args(models, run, data=cohort) + ["--local-temp-dir", str(temp)])
    try:
        _wait(lambda: sum(st == "DONE" for st, _ in _states(run).values()) >= 1, 600, "a first slide DONE", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_cluster(temp)
    before = _states(run)
    before_rows = _rows(run)
    done_before = {sid for sid, (st, _) in before.items() if st == "DONE"}
    assert 1 <= len(done_before) < 3, before
    mtimes = {p: p.stat().st_mtime_ns for sid in done_before
              for p in (run / "slides").glob(f"{sid}*") for p in ([p] if p.is_file() else p.rglob("*")) if p.is_file()}
    time.sleep(0.05)
    again = infer_cli(local_args(models, run, data=cohort), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    after = _states(run)
    why = f"before the kill {before_rows}\nafter the resume {_rows(run)}\nresumed run:\n{again.stderr[-4000:]}"
    for sid, (st, attempts) in after.items():
        assert st == "DONE", why
        if sid in done_before:
            assert attempts == 1, why  # not recomputed
        else:
            assert attempts == before.get(sid, ("PENDING", 0))[1] + 1, why
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert sorted(_done(run)["skipped"]) == sorted(done_before)
    assert output_digests(run) == clean


# -- multi-node ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, no GPU) + 2 worker nodes (1 CPU, 1 GPU each) on this machine."""
    with started_cluster(1, [(1, 1), (1, 1)]) as (address, _temp):
        yield address


def _cluster_args(models, run, cohort, address):
    return [*cluster_args(models, run, cohort, address), "--num-gpus-per-actor", "1"]


def test_multi_node_gpu_pinning_and_a_worker_node_killed(models, cohort, clean, cluster, tmp_path):
    # Clean multi-node run: two actors, one per worker node, each pinned to exactly one GPU id.
    run = tmp_path / "run"
    proc = infer_cli(_cluster_args(models, run, cohort, cluster), env=NO_AUTH, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    actors = json.loads((run / "actors.json").read_text())
    assert len(actors) == 2
    assert all(len(a["gpu_ids"]) == 1 and a["cuda_visible_devices"] == a["gpu_ids"][0] for a in actors)
    assert len({(a["node_id"], a["gpu_ids"][0]) for a in actors}) == 2
    assert len({a["node_id"] for a in actors}) == 2
    assert output_digests(run) == clean

    # Kill one worker node (its raylet) mid-cohort: the job finishes on the other node.
    run2 = tmp_path / "run2"
    proc = subprocess.Popen([PY, "-m", "tupac", "infer", *_cluster_args(models, run2, cohort, cluster)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **NO_AUTH})
    try:
        _wait(lambda: _mid_slide(run2), 600, "a slide mid-way", proc)
        victim = json.loads((run2 / "actors.json").read_text())[0]
        os.kill(victim["raylet_pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert _done(run2)["counts"]["DONE"] == 3
    assert output_digests(run2) == clean


def test_ray_job_submit_against_a_local_head(models, cohort, clean, tmp_path):
    port, dash = free_port(), free_port()
    temp = short_temp()
    head = ray_cli("start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
                f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}",
                "--object-store-memory=200000000",
                "--disable-usage-stats")
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        run = tmp_path / "run"
        args = _cluster_args(models, run, cohort, "auto")
        i = args.index("--address")
        del args[i : i + 2]
        args[args.index("--num-gpus-per-actor") + 1] = "0"
        for _ in range(12):  # the head's dashboard agent takes a while to accept jobs
            sub = subprocess.run(
                [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                 "--", "python", "jobs/infer_cohort.py", *args, "--actors", "1"],
                capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, **NO_AUTH},
            )
            if "No available agent" not in sub.stderr + sub.stdout:
                break
            time.sleep(10)
        assert sub.returncode == 0, (sub.stdout[-6000:], sub.stderr[-2000:])
        assert "succeeded" in sub.stdout.lower()
        assert _done(run)["counts"]["DONE"] == 3
        assert output_digests(run) == clean
    finally:
        stop_cluster(temp)


@pytest.mark.parametrize("delay_s", [0.0, 2.0, 5.0])
def test_two_jobs_on_one_run_folder_one_runs_and_the_other_is_refused(models, cohort, clean, tmp_path, delay_s):
    """Before the run-folder lock, the second job treated the first one's RUNNING slides as
    interrupted and cleared their stores, and the first then committed what was left."""
    run = tmp_path / "run"
    procs = [_spawn(local_args(models, run, data=cohort))]
    try:
        time.sleep(delay_s)
        procs.append(_spawn(local_args(models, run, data=cohort)))
        _wait(lambda: any(p.poll() is not None for p in procs), 300, "one job to end")
        ended = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not ended)
        assert winner.poll() is None, "the refused job must end at once, while the other one still runs"
        _, refused_err = ended.communicate()
        _, err = winner.communicate(timeout=900)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert ended.returncode == 2 and winner.returncode == 0, err[-3000:]
    lines = [ln for ln in refused_err.splitlines() if ln.strip()]
    assert len(lines) == 1, refused_err
    assert f"{run.resolve()}: run folder is in use by another tupac job (tupac infer, pid {winner.pid} on host " \
           f"{socket.gethostname()}, started " in lines[0]
    assert _done(run)["counts"]["DONE"] == 3
    assert all(attempts == 1 for _, attempts in _states(run).values())  # nobody interrupted anybody
    assert not (run / "superseded").exists()
    assert output_digests(run) == clean
