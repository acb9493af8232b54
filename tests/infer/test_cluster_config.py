"""Cluster and infrastructure files: valid for the tools that read them, and consistent with the
package (image tag = version, GPU counts = instance types, the job entrypoint exists where said)."""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "ray_cluster.yaml"
INFRA = ROOT / "infra"

# GPUs per AWS instance type (vendor documentation); the config must declare what the host has,
# or Ray would schedule actors onto GPUs that do not exist (or leave some idle).
AWS_GPUS = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.12xlarge": 4, "g5.48xlarge": 8, "g6.xlarge": 1,
            "p4d.24xlarge": 8, "p5.48xlarge": 8, "m6i.2xlarge": 0, "m6i.4xlarge": 0}


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_config_matches_rays_autoscaler_schema(cluster: dict) -> None:
    import jsonschema

    jsonschema.validate(cluster, _ray_schema())
    # and the autoscaler's own path: fill in the AWS defaults, then validate_config
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(cluster))
    validate_config(full)
    assert full["head_node_type"] == "head_cpu"


def test_schema_check_is_not_vacuous(cluster: dict) -> None:
    import jsonschema

    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_1x"]["min_workerz"] = 1  # a typo Ray would reject
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _ray_schema())
    broken = copy.deepcopy(cluster)
    broken["docker"]["image"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _ray_schema())


def test_node_types_gpu_counts_and_limits(cluster: dict) -> None:
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and AWS_GPUS[head["node_config"]["InstanceType"]] == 0
    gpus = {}
    for name, t in types.items():
        if name == cluster["head_node_type"]:
            continue
        itype = t["node_config"]["InstanceType"]
        assert t["resources"].get("GPU", 0) == AWS_GPUS[itype], f"{name}: {itype} has {AWS_GPUS[itype]} GPUs"
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cluster["max_workers"]
        assert t["resources"]["CPU"] >= t["resources"]["GPU"]  # at least one decode core per GPU actor
        gpus[name] = t["resources"]["GPU"]
    assert sorted(gpus.values()) == [1, 8]


def test_container_image_is_the_package_version(cluster: dict) -> None:
    image = cluster["docker"]["image"]
    assert image == f"ghcr.io/tupac/tupac:{_version()}"
    rayjob = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    spec = rayjob["spec"]["rayClusterSpec"]
    images = {c["image"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"]}
    for group in spec["workerGroupSpecs"]:
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert images == {image}


def test_start_commands_start_ray(cluster: dict) -> None:
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker


def test_kuberay_rayjob_has_the_required_fields() -> None:
    job = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"]
    assert "python jobs/infer_cohort.py" in entry
    for flag in ("--data", "--models", "--out"):
        assert flag in entry
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")
    spec = job["spec"]["rayClusterSpec"]
    import ray

    assert spec["rayVersion"] == ray.__version__  # the image's Ray must match the operator's view
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    gpu_groups = {}
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        if "nvidia.com/gpu" in limits:
            assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
            gpu_groups[group["groupName"]] = limits["nvidia.com/gpu"]
    assert sorted(gpu_groups.values()) == [1, 8]
    # every volume a container mounts is declared by its pod
    for pod in [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]:
        declared = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= declared
    pvc = yaml.safe_load((INFRA / "kuberay" / "pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert pvc["metadata"]["name"] == "tupac-shared"


def test_dockerfile_installs_what_the_package_pins() -> None:
    text = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", base)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch=="))
    vision_pin = next(d for d in deps if d.startswith("torchvision=="))
    assert f"pip install {torch_pin} {vision_pin}" in text
    assert "pip install ." in text and "COPY --chown=ray:ray jobs ./jobs" in text
    assert any(d.startswith("openslide-bin") for d in deps) and any(d.startswith("cucim-cu13") for d in deps)
    # every path the Dockerfile copies exists in the repository (jobs/ is created by the job's author)
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", text, re.M):
        for item in src.split():
            assert (ROOT / item).exists() or item == "jobs", f"Dockerfile copies {item}, which is not in the repo"


def test_mlflow_compose_and_unit() -> None:
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())
    svc = compose["services"]
    cmd = svc["mlflow"]["command"]
    assert cmd[0] == "server"
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql://")
    assert "--serve-artifacts" in cmd and "--artifacts-destination" in cmd
    assert svc["mlflow"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert svc["db"]["image"].startswith("postgres:")
    from importlib.metadata import version

    assert f"mlflow=={version('mlflow')}" in (INFRA / "mlflow" / "Dockerfile").read_text()
    unit = (INFRA / "mlflow" / "tupac-mlflow.service").read_text()
    assert "--backend-store-uri sqlite:////" in unit and "[Install]" in unit
    assert (INFRA / "mlflow" / "README.md").is_file() and (INFRA / "README.md").is_file()


def test_mlflow_server_accepts_the_documented_options() -> None:
    """The flags in the compose file exist in the installed MLflow's ``server`` command."""
    from click.testing import CliRunner
    from mlflow.cli import cli

    out = CliRunner().invoke(cli, ["server", "--help"], env={**os.environ, "COLUMNS": "200"})
    assert out.exit_code == 0
    cmd = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())["services"]["mlflow"]["command"]
    for flag in (c for c in cmd if c.startswith("--")):
        assert flag in out.output, f"mlflow server has no {flag}"
