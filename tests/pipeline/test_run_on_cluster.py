"""`tupac run --address` on a real multi-node Ray cluster: a head and two worker nodes started with
``ray start`` on this machine, the whole pipeline on a tiny phantom cohort.

The head has no CPUs (as a cluster's head should: it schedules, it does not compute), so every
task and actor must land on a worker node; the workers declare one GPU each (fake: torch finds no
CUDA and runs on CPU), so the trainings take the GPU-request path. Checked: the run completes,
``RUN/pipeline/placement.json`` says that the trainings, the model actors, the per-slide features,
the fit and the report ran on the worker nodes, the feature table equals the one the features stage
computes in this process from the same heatmaps and models, and a second ``tupac run --address``
does nothing and starts no Ray. No Ray process of the cluster is left behind.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ray_nodes import NO_AUTH, alive, cluster_processes, started_cluster
from test_run_pipeline import TINY

ROOT = Path(__file__).resolve().parents[2]
N_SLIDES = 12  # the fit's 2 x 2 nested stratified CV needs 4 slides of each grade
WORKER_STAGES = ("train_tumor", "train_mitosis", "infer", "features", "fit", "report")


def _config() -> dict:
    """The pipeline tests' tiny config, smaller still where it only costs time (what is checked here is
    where the work runs, not how good the models are): one training stage of one epoch, fewer
    mitosis patches, no feature-group ablation in the fit. The `infer:` section's local-Ray options
    stay: they are how-to-run, unused on a cluster, and must not matter."""
    cfg = yaml.safe_load(TINY)
    cfg["tumor"].update(two_stage=False)
    cfg["tumor"]["train"]["epochs"] = 1
    cfg["mitosis"].update(two_stage=False, positive_copies=4, negatives_per_image=40, background_per_image=10)
    cfg["mitosis"]["train"]["epochs"] = 1
    cfg["features"]["general_epochs"] = 2
    cfg["fit"]["ablation"] = False
    return cfg


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    from tupac.synth import generate_cohort

    base = tmp_path_factory.mktemp("cluster_run")
    data = base / "data"
    generate_cohort(data, n_slides=N_SLIDES, seed=11, size_um=(1000.0, 800.0), mitosis_images=6)
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(_config(), sort_keys=False))
    return data, config


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs, no GPU) + 2 worker nodes (2 CPUs, 1 fake GPU each) on this machine; yields
    ``{"address": HOST:PORT, "pids": []}``, where a test lists the Ray worker processes it saw. On
    leaving, :func:`stop_cluster` stops the cluster's processes, and every one the test saw must be gone."""
    # 2 CPUs per worker: the trainings ask for as many CPUs as this machine's in-process torch threads.
    seen: dict = {"pids": []}
    with started_cluster(0, [(2, 1), (2, 1)]) as (address, temp):
        seen["address"] = address
        try:
            yield seen
        finally:
            seen["pids"] += cluster_processes(temp)
    deadline = time.monotonic() + 30  # a worker exits on its own once its raylet is gone
    while any(alive(p) for p in seen["pids"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert not [p for p in seen["pids"] if alive(p)], "Ray worker processes left behind"


def _tupac_run(data: Path, run: Path, config: Path, address: str, tracking: str, job: bool = False
               ) -> subprocess.CompletedProcess:
    """``tupac run --address ADDRESS`` with ``MLFLOW_TRACKING_URI=tracking``; with ``job``,
    ``jobs/run_cohort.py`` as ``ray job submit`` runs it (the address in ``RAY_ADDRESS``)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = tracking
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    args = ["--data", str(data), "--out", str(run), "--config", str(config)]
    if job:
        cmd, env["RAY_ADDRESS"] = [str(ROOT / "jobs" / "run_cohort.py"), *args], address
    else:
        cmd = ["-m", "tupac", "run", *args, "--address", address]
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=840,
                          env={**env, **NO_AUTH, "COLUMNS": "200"})


def _reference_features(run: Path, data: Path, config: Path, tmp: Path) -> pd.DataFrame:
    """The features stage in this process (no executor) on a copy of the cluster run's heatmaps and models."""
    from tupac.feature_run import run_features
    from tupac.pipeline import PipelineConfig

    ref = tmp / "ref"
    ref.mkdir()
    shutil.copytree(run / "slides", ref / "slides")
    run_features(ref, labels=data / "training_ground_truth.csv", slides=data, models=run / "models",
                 config=PipelineConfig.from_yaml(config).features_config(), track=False)
    return pd.read_parquet(ref / "features.parquet")


@pytest.mark.slow
def test_tupac_run_on_a_head_and_two_workers(cohort, cluster, tmp_path, artifacts_dir):
    data, config = cohort
    address = cluster["address"]
    run = tmp_path / "run"
    # A tracking server the driver names in its environment, which the worker nodes (started without
    # it) learn from the pipeline's runtime_env: every training and fit must be logged there.
    tracking = f"sqlite:///{tmp_path / 'tracking.db'}"

    first = _tupac_run(data, run, config, address, tracking)
    (artifacts_dir / "tupac_run_on_cluster.txt").write_text(first.stdout + "\n--- stderr ---\n" + first.stderr)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert json.loads((run / "pipeline" / "last.json").read_text())["ran"] == list(WORKER_STAGES)
    assert f"connected to Ray at {address}" in first.stdout

    # Every stage's work ran on the worker nodes: the head has no CPU, and the driver runs none of it.
    placement = json.loads((run / "pipeline" / "placement.json").read_text())
    cluster["pids"] += [pid for stage in placement.values() for n in stage.get("nodes", {}).values() for pid in n["pids"]]
    per_slide_features = "executor" in inspect.signature(__import__("tupac.feature_run").feature_run.run_features).parameters
    for stage in WORKER_STAGES:
        if stage == "features" and not per_slide_features:
            continue  # before run_features takes an executor, the features stage runs in the driver
        nodes = placement[stage]["nodes"]
        assert {n["role"] for n in nodes.values()} == {"worker"}, (stage, placement[stage])
    for task in ("tumor", "mitosis"):
        train = placement[f"train_{task}"]
        assert train["tasks"] == 1 and train["num_gpus"] == 1 and train["num_cpus"] == 2
        assert [len(n["gpu_ids"]) for n in train["nodes"].values()] == [1]  # Ray gave the task one GPU
    assert len(placement["infer"]["nodes"]) == 2  # one model actor per worker node
    if per_slide_features:
        assert placement["features"]["tasks"] >= N_SLIDES
        assert len(placement["features"]["nodes"]) == 2  # the slides spread over both workers

    # The trainings and the fit, run on the worker nodes, logged to the driver's tracking store.
    from mlflow import MlflowClient

    names = {m.name for m in MlflowClient(tracking_uri=tracking, registry_uri=tracking).search_registered_models()}
    assert {"tupac-tumor-locnet", "tupac-mitosis-mitosnet", "tupac-grade-classifier", "tupac-rna-regressor"} <= names
    assert not (run / "models" / "mlflow.db").exists() and not (run / "mlflow.db").exists()

    # The per-slide features computed on the workers are the in-process features, to the bit.
    table = pd.read_parquet(run / "features.parquet")
    reference = _reference_features(run, data, config, tmp_path)
    pd.testing.assert_frame_equal(table, reference, check_exact=True)

    # Nothing changed: the second run does no work and starts no Ray session.
    second = _tupac_run(data, run, config, address, tracking)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert json.loads((run / "pipeline" / "last.json").read_text())["ran"] == []
    assert "[ray]" not in second.stdout and "nothing (everything up to date)" in second.stdout

    # The Ray job entrypoint, joining the cluster through RAY_ADDRESS as in `ray job submit`: with the
    # report deleted, the report alone runs again, on a worker node.
    shutil.rmtree(run / "report")
    third = _tupac_run(data, run, config, address, tracking, job=True)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert json.loads((run / "pipeline" / "last.json").read_text())["ran"] == ["report"]
    assert (run / "report" / "index.html").is_file()
    report = json.loads((run / "pipeline" / "placement.json").read_text())["report"]
    assert {n["role"] for n in report["nodes"].values()} == {"worker"}
    cluster["pids"] += [pid for n in report["nodes"].values() for pid in n["pids"]]


def test_the_command_and_the_config_name_one_ray():
    from tupac.errors import ConfigError
    from tupac.pipeline import PipelineConfig

    cfg = PipelineConfig(infer={"address": "10.0.0.1:6379"})
    assert cfg.ray_address(None) == "10.0.0.1:6379"
    assert cfg.ray_address("10.0.0.1:6379") == "10.0.0.1:6379"
    assert PipelineConfig().ray_address("10.0.0.2:6379") == "10.0.0.2:6379"
    assert PipelineConfig().job_config(Path("M"), Path("R"), "10.0.0.2:6379").address == "10.0.0.2:6379"
    with pytest.raises(ConfigError, match=r"--address 10.0.0.2:6379 and infer.address = 10.0.0.1:6379 differ"):
        cfg.ray_address("10.0.0.2:6379")


def _square(x: int) -> int:
    return x * x


def test_the_placement_recorder_passes_results_through_and_records_where():
    from tupac.infer.cluster import LocalExecutor
    from tupac.infer.placement import PlacementRecorder, describe

    rec = PlacementRecorder(LocalExecutor())
    done = []
    assert rec.map(_square, [(2,), (3,)], num_cpus=2, on_done=lambda i, r: done.append((i, r))) == [4, 9]
    assert done == [(0, 4), (1, 9)]
    assert rec.call(_square, 4, name="sq") == 16
    assert rec.gpus() == 0.0 and rec.where == "local"  # the wrapped executor's own
    summary = rec.summary()
    assert summary["tasks"] == 3 and summary["num_cpus"] == 2
    assert list(summary["nodes"]) == ["local"] and summary["nodes"]["local"]["pids"] == [os.getpid()]
    assert describe(summary) == "3 calls in this process"


def _row_and_heavy(x: int) -> tuple[int, list[int], str]:
    return x, [x] * 3, f"heavy {x}"


def _total(*heavy: list[int]) -> int:
    return sum(map(sum, heavy))


def test_kept_results_stay_behind_handles_and_are_still_recorded():
    """``keep=k``: the small part comes back, the heavy parts are handed on to the next call as handles
    (here the values themselves), and the recorder counts those tasks too (the features stage uses them)."""
    from tupac.infer.cluster import LocalExecutor
    from tupac.infer.placement import PlacementRecorder

    rec = PlacementRecorder(LocalExecutor())
    made = rec.map(_row_and_heavy, [(1,), (2,)], keep=2)
    assert [small for small, _ in made] == [1, 2]
    assert [kept[1] for _, kept in made] == ["heavy 1", "heavy 2"]
    assert rec.call(_total, *[kept[0] for _, kept in made]) == 9
    small, kept = rec.call(_row_and_heavy, 5, keep=2)
    assert small == 5 and kept[1] == "heavy 5"
    assert rec.summary()["tasks"] == 4
    with pytest.raises(TypeError, match="_square must return a tuple"):
        rec.call(_square, 3, keep=1)
