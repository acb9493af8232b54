"""The cohort job on a cluster that starts empty (issue 19): it asks for model actors, waits while the
autoscaler brings nodes up, says what it waits for, and fails the slides with a clear reason when nothing
comes within the placement timeout.

The autoscaling cluster is Ray's own test cluster (the ``fake_multinode`` node provider, which starts
each "cloud node" as a local raylet): a head with ``CPU: 0`` and one worker type declaring ``GPU: 1``
at ``min_workers: 0``. Heatmaps and detections are compared bitwise with a clean local run (CPU).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ray_nodes import NO_AUTH, free_port, ray_cli, short_temp, stop_cluster
from test_job_support import (PY, clean_digests, cluster_args, infer_cli, make_cohort, make_models, output_digests,
                              summary)

HEAD_ID = "f" * 51 + "00000"
"""The fake provider's node ids: fff...f then a 5-digit counter, the head first."""


def test_autoscaler_line_says_what_the_autoscaler_does():
    from tupac.infer.job import _autoscaler_line

    report = {"active_nodes": {"ray.head.default": 1}, "pending_launches": {"gpu_worker": 2},
              "pending_nodes": [["fff1", "gpu_worker", "uninitialized"]], "failed_nodes": [["10.0.0.3", "gpu_worker"]]}
    assert _autoscaler_line(report) == ("launching 2 x gpu_worker; starting 1 x gpu_worker; failed 1 x gpu_worker; "
                                        "up 1 x ray.head.default")
    assert _autoscaler_line({"active_nodes": {}}) == "idle"
    assert _autoscaler_line(None).startswith("none seen")


def test_a_read_only_monitors_report_is_no_autoscaler(monkeypatch):
    """``ray start`` and ``ray.init`` clusters have a read-only monitor whose report looks like an autoscaler's,
    with one anonymous node type per node: sizing a job from the cohort there would starve its tasks."""
    import ray.experimental.internal_kv as kv

    from tupac.infer.job import AUTOSCALING_STATUS_KEY, _autoscaler_status

    def status(nodes: dict) -> bytes:
        return json.dumps({"autoscaler_report": {"active_nodes": nodes, "pending_launches": {}}}).encode()

    store = {AUTOSCALING_STATUS_KEY: status({"node_0ac6330c463a47b1ca50a909abaca3e7c16fae1b4a5d2463d55a0d42": 1})}
    monkeypatch.setattr(kv, "_internal_kv_get", lambda key, **_: store.get(key))
    assert _autoscaler_status(None) is None
    store[AUTOSCALING_STATUS_KEY] = status({"ray.head.default": 1})
    assert _autoscaler_status(None)["active_nodes"] == {"ray.head.default": 1}
    store[AUTOSCALING_STATUS_KEY] = b"not json"
    assert _autoscaler_status(None) is None  # best-effort: never an error
    store.clear()
    assert _autoscaler_status(None) is None


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort") / "root", n=2, seed=19)


@pytest.fixture(scope="module")
def clean(models, cohort, tmp_path_factory) -> dict:
    return clean_digests(models, cohort, tmp_path_factory.mktemp("clean") / "run", timeout=600)


def _fake_autoscaling_config(port: int) -> dict:
    """Ray's fake multi-node provider: a CPU-0 head, GPU workers from zero to two."""
    worker = {"CPU": 2, "GPU": 1, "object_store_memory": 200 * 1024**2}  # bounded: two nodes share /dev/shm
    return {
        "cluster_name": "fake", "max_workers": 2, "idle_timeout_minutes": 0.2, "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": worker, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [], "auth": {},
    }


@pytest.fixture()
def autoscaling_cluster():
    """``(address, temp)`` of a fake autoscaling cluster (not ``AutoscalingCluster.start()``: it runs
    ``ray stop --force``, which would stop every Ray on the machine). Its nodes share the head's temp
    folder, so :func:`stop_cluster` stops them all."""
    port, temp = free_port(), short_temp()
    config = temp / "autoscaling.json"
    config.write_text(json.dumps(_fake_autoscaling_config(port)))
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}  # the monitor looks every second
    try:
        head = ray_cli("start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                       f"--autoscaling-config={config}", "--include-dashboard=false", f"--temp-dir={temp}",
                       "--object-store-memory=100000000", "--disable-usage-stats", env=env)
        assert head.returncode == 0, head.stderr[-2000:]
        yield f"127.0.0.1:{port}", temp
    finally:
        stop_cluster(temp)


def _mid_slide(run: Path) -> bool:
    """Some heatmap chunk is written and some slide is not DONE yet (summary.json comes at the end)."""
    return not (run / "summary.json").exists() and any(
        p.is_file() for p in (run / "slides").glob("*.zarr/tumor/0/c/**/*"))


@pytest.mark.slow
def test_empty_autoscaling_cluster_scales_up_loses_a_node_and_matches_a_local_run(models, cohort, clean,
                                                                                  autoscaling_cluster, tmp_path):
    address, temp = autoscaling_cluster
    run = tmp_path / "run"
    # No actor count and no GPU option: the plan on an empty cluster is under test.
    proc = subprocess.Popen([PY, "-m", "tupac", "infer", *cluster_args(models, run, cohort, address)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **NO_AUTH})
    try:
        t0 = time.monotonic()
        while not _mid_slide(run) and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        # A node leaves mid-slide, as a preempted VM: its raylet and its actor's process go at once (an
        # actor process that outlived its raylet would go on answering, and no batch would need to move).
        victim = json.loads((run / "actors.json").read_text())[0]
        for pid in (victim["raylet_pid"], victim["pid"]):
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(stderr)  # shown when the test fails
    assert proc.returncode == 0, stderr[-4000:]
    err = " ".join(stderr.split())  # rich wraps long lines
    # The plan: nothing up could hold an actor, so GPU actors, one per slide, and the user is told so.
    assert "asking for GPU actors, 1 GPU each (--num-gpus-per-actor 0 for CPU actors)" in err
    assert "2 model actor(s), 1 GPU, 1 CPU and 2 torch thread(s) each" in err
    assert re.search(r"waiting for 2 model actor\(s\) \(1 GPU, 1 CPU each\): 0 ready after \d+ s; "
                     r"cluster up: 0 GPU, 0 CPU; autoscaler: ", err), err[-3000:]
    assert re.search(r"model actor [01] ready on node f{51}0000[1-9] \([12] of 2 ready\)", err), err[-3000:]
    assert "model actor 0 died" in err
    assert summary(run)["counts"]["DONE"] == 2
    # The actors ran on GPU workers that the autoscaler launched (never on the CPU-0 head).
    actors = json.loads((run / "actors.json").read_text())
    assert len(actors) == 2 and all(len(a["gpu_ids"]) == 1 for a in actors if "gpu_ids" in a)
    nodes = {a["node_id"] for a in actors if "node_id" in a} | {victim["node_id"]}
    assert len(nodes) >= 2 and all(n.startswith("fffff") and n != HEAD_ID for n in nodes), nodes
    monitor = (temp / "session_latest" / "logs" / "monitor.log").read_text()
    launched = sum(int(k) for k in re.findall(r"Adding (\d+) node\(s\) of type gpu_worker", monitor))
    assert launched >= 2, monitor[-2000:]
    print(f"autoscaler launched {launched} gpu_worker node(s); actors on {sorted(n[-5:] for n in nodes)}")
    assert output_digests(run) == clean


@pytest.mark.slow
def test_nothing_placed_within_the_placement_timeout_fails_the_slides_with_the_ask(models, cohort, tmp_path):
    """A fixed cluster whose only node has no CPU and no GPU (no autoscaler): ``--actors 4
    --num-gpus-per-actor 1`` is planned, not refused, and after the timeout every slide fails naming it."""
    port, temp = free_port(), short_temp()
    try:
        head = ray_cli("start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
                       f"--temp-dir={temp}", "--object-store-memory=100000000", "--disable-usage-stats")
        assert head.returncode == 0, head.stderr[-2000:]
        run = tmp_path / "run"
        args = [*cluster_args(models, run, cohort, f"127.0.0.1:{port}"), "--num-gpus-per-actor", "1", "--actors", "4",
                "--placement-timeout", "5"]
        proc = infer_cli(args, env=NO_AUTH, timeout=300)
    finally:
        stop_cluster(temp)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert "4 model actor(s), 1 GPU, 1 CPU and 2 torch thread(s) each" in err
    assert ("waiting for 4 model actor(s) (1 GPU, 1 CPU each): 0 ready after 0 s; cluster up: 0 GPU, 0 CPU; "
            "autoscaler: none seen") in err
    s = summary(run)
    assert s["counts"]["FAILED"] == 2 and s["counts"]["DONE"] == 0
    for f in s["failed"]:
        assert f["error"].endswith(
            ": no model actor was ready for 5 s (asked for 4 model actor(s) (1 GPU, 1 CPU each); cluster up: 0 GPU, "
            "0 CPU; autoscaler: none seen (nodes must be started by hand or the cluster's autoscaler)): add nodes "
            "that can hold them, lower --num-gpus-per-actor or --cpus-per-actor, or raise --placement-timeout"), f
