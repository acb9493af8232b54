"""Cluster and infrastructure files: valid for the tools that read them, and consistent with the
package (image tag = version, GPU counts = instance types, the job entrypoint and its options exist,
both image variants resolve, every placeholder is declared once in infra/placeholders.env)."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
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


def _dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _placeholders() -> dict[str, str]:
    """NAME=value lines of infra/placeholders.env (comments and blank lines skipped)."""
    out = {}
    for line in (INFRA / "placeholders.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"placeholders.env: bad line {line!r}"
            assert name not in out, f"placeholders.env declares {name} twice"
            out[name] = value
    return out


def _command_options(name: str) -> set[str]:
    """The option flags of ``tupac NAME`` (the Click command Typer builds)."""
    import typer

    from tupac.cli import app

    command = typer.main.get_command(app).commands[name]
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def _job_command(text: str, script: str) -> list[str]:
    """The argv of ``python SCRIPT ...`` in a shell command or a commented example."""
    text = re.sub(r"\\\n\s*#?", " ", text)  # join `\` continuations, also inside comments
    match = re.search(rf"python {re.escape(script)}[^\n&;|]*", text)
    assert match, f"no `python {script}` command"
    return shlex.split(match.group(0))


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
    assert head["resources"]["CPU"] == 0  # the head runs the driver; tasks and actors go to workers
    gpus = {}
    for name, t in types.items():
        if name == cluster["head_node_type"]:
            continue
        itype = t["node_config"]["InstanceType"]
        assert t["resources"].get("GPU", 0) == AWS_GPUS[itype], f"{name}: {itype} has {AWS_GPUS[itype]} GPUs"
        assert t["min_workers"] == 0  # GPU nodes exist only while the job asks for GPUs
        assert 0 < t["max_workers"] <= cluster["max_workers"]
        assert t["resources"]["CPU"] >= t["resources"]["GPU"]  # at least one decode core per GPU actor
        gpus[name] = t["resources"]["GPU"]
    assert sorted(gpus.values()) == [1, 8]


def test_container_image_is_the_package_version(cluster: dict) -> None:
    """GPU variant: ``TUPAC_IMAGE:<version>`` on every Ray node; CPU variant: ``...:<version>-cpu``."""
    image = cluster["docker"]["image"]
    assert image == f"{_placeholders()['TUPAC_IMAGE']}:{_version()}"
    rayjob = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    spec = rayjob["spec"]["rayClusterSpec"]
    images = {c["image"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"]}
    for group in spec["workerGroupSpecs"]:
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert images == {image}
    shell = yaml.safe_load((INFRA / "kuberay" / "shell.yaml").read_text())
    assert {c["image"] for c in shell["spec"]["containers"]} == {f"{image}-cpu"}
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"--build-arg VARIANT=gpu -t {image} ." in dockerfile
    assert f"--build-arg VARIANT=cpu -t {image}-cpu ." in dockerfile


def test_cluster_nodes_share_the_volume_and_mlflow(cluster: dict) -> None:
    p = _placeholders()
    assert f"-e MLFLOW_TRACKING_URI=http://{p['MLFLOW_HOST']}:5000" in cluster["docker"]["run_options"]
    init = " ".join(cluster["initialization_commands"])
    # the EFS mount fails `ray up` instead of leaving each node a private /mnt/tupac
    assert f"TUPAC_EFS={p['TUPAC_EFS']};" in init and '"$TUPAC_EFS:/" /mnt/tupac' in init and "exit 1" in init
    assert any("mountpoint -q /mnt/tupac" in c for c in cluster["setup_commands"])
    assert cluster["provider"]["region"] == p["AWS_REGION"]
    assert cluster["provider"]["availability_zone"] == p["AWS_AVAILABILITY_ZONES"]
    assert all(z.startswith(p["AWS_REGION"]) for z in p["AWS_AVAILABILITY_ZONES"].split(","))


def test_start_commands_start_ray(cluster: dict) -> None:
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker


def test_cluster_files_run_the_whole_pipeline(cluster: dict) -> None:
    """ray_cluster.yaml's job example and the RayJob's entrypoint run jobs/run_cohort.py with
    options of `tupac run` (the job's options are those of the command), DATA and RUN on the
    shared volume that every node mounts."""
    run_options = _command_options("run")
    rayjob = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    commands = {
        "ray_cluster.yaml": _job_command(CLUSTER.read_text(), "jobs/run_cohort.py"),
        "rayjob.yaml": _job_command(rayjob["spec"]["entrypoint"], "jobs/run_cohort.py"),
    }
    for where, argv in commands.items():
        flags = [a for a in argv if a.startswith("--")]
        assert {"--data", "--out"} <= set(flags), f"{where}: {argv}"
        assert set(flags) <= run_options, f"{where}: {set(flags) - run_options} are not options of `tupac run`"
        for flag in ("--data", "--out"):
            assert argv[argv.index(flag) + 1].startswith("/mnt/tupac/"), f"{where}: {flag} is not on the shared volume"
    assert "-v /mnt/tupac:/mnt/tupac" in cluster["docker"]["run_options"]
    assert "infer_cohort.py" not in rayjob["spec"]["entrypoint"]


def test_run_cohort_accepts_the_entrypoint_options() -> None:
    """Once jobs/run_cohort.py is in the tree, its own --help lists every option the files pass."""
    script = ROOT / "jobs" / "run_cohort.py"
    if not script.is_file():
        pytest.skip("jobs/run_cohort.py is not in this checkout yet")
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    rayjob = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    for text in (CLUSTER.read_text(), rayjob["spec"]["entrypoint"]):
        for flag in (a for a in _job_command(text, "jobs/run_cohort.py") if a.startswith("--")):
            assert flag in out.stdout, f"jobs/run_cohort.py has no {flag}"


def test_kuberay_rayjob_has_the_required_fields() -> None:
    job = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("cd /home/ray/tupac &&")  # the image's WORKDIR
    assert "WORKDIR /home/ray/tupac" in (INFRA / "Dockerfile").read_text()
    # MLflow: in every Ray container's environment (the driver and the workers inherit it), not in a
    # job runtime_env whose env_vars could collide with those the driver passes to ray.init
    assert "runtimeEnvYAML" not in job["spec"]
    spec = job["spec"]["rayClusterSpec"]
    import ray

    assert spec["rayVersion"] == ray.__version__  # the image's Ray must match the operator's view
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = {}
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert group["minReplicas"] == group["replicas"] == 0 < group["maxReplicas"]  # the autoscaler adds pods
        if "nvidia.com/gpu" in limits:
            assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
            gpu_groups[group["groupName"]] = limits["nvidia.com/gpu"]
    assert sorted(gpu_groups.values()) == [1, 8]
    # every volume a container mounts is declared by its pod
    shell = yaml.safe_load((INFRA / "kuberay" / "shell.yaml").read_text())
    assert shell["kind"] == "Pod"
    uri = f"http://{_placeholders()['K8S_MLFLOW_HOST']}:5000"
    ray_containers = [c for pod in [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
                      for c in pod["containers"]]
    for c in ray_containers:
        assert {"name": "MLFLOW_TRACKING_URI", "value": uri} in c["env"], c["name"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods + [shell["spec"]]:
        declared = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= declared
            # every container sees the shared volume where the cluster files put DATA and RUN
            shared = [m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/tupac"]
            assert len(shared) == 1
            (volume,) = [v for v in pod["volumes"] if v["name"] == shared[0]["name"]]
            assert volume["persistentVolumeClaim"]["claimName"] == "tupac-shared"
    pvc = yaml.safe_load((INFRA / "kuberay" / "pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert pvc["metadata"]["name"] == "tupac-shared"


def _dockerfile() -> tuple[dict[str, str], list[dict]]:
    """infra/Dockerfile as (global ARG defaults, stages): each stage has ``from`` (unresolved),
    ``name``, ``args`` (its ARG defaults), ``env`` and ``lines``."""
    text = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())  # join continuation lines
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append({"from": m.group(1), "name": m.group(2), "args": {}, "env": {}, "lines": []})
            continue
        if word == "ARG":
            name, _, default = rest.partition("=")
            (stages[-1]["args"] if stages else global_args)[name] = default
            if not stages:
                continue
        assert stages, f"only ARG may come before the first FROM: {line}"
        if word == "ENV":
            stages[-1]["env"].update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        stages[-1]["lines"].append(line)
    return global_args, stages


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], text)


def _resolve_variant(variant: str) -> list[dict]:
    """The stages BuildKit builds for ``--build-arg VARIANT=variant``: the final stage and the
    stages it builds on, base first (what `docker build` would do, without docker)."""
    global_args, stages = _dockerfile()
    values = {**global_args, "VARIANT": variant}
    by_name = {s["name"]: s for s in stages if s["name"]}
    chain = [stages[-1]]
    while (parent := _expand(chain[0]["from"], values)) in by_name:
        chain.insert(0, by_name[parent])
    chain[0] = {**chain[0], "image": _expand(chain[0]["from"], values)}
    return chain


UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12"}  # python3 of each Ubuntu release


def test_dockerfile_variants_resolve_to_their_bases() -> None:
    global_args, _ = _dockerfile()
    assert global_args["VARIANT"] == "gpu"  # the cluster files run the GPU variant
    pythons = {}
    for variant in ("gpu", "cpu"):
        chain = _resolve_variant(variant)
        assert len(chain) == 2 and chain[0]["name"] == f"base-{variant}", [s["name"] for s in chain]
        base, env = chain[0]["image"], chain[0]["env"]
        assert env["TUPAC_IMAGE_VARIANT"] == variant
        if variant == "gpu":
            m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-(?:base|runtime|cudnn-runtime)-ubuntu(\d+\.\d+)", base)
            assert m and m.group(1) == "13", base  # the CUDA major of torch's cu130 wheels and cucim-cu13
            assert env["TORCH_INDEX"] == f"https://download.pytorch.org/whl/cu{m.group(1)}0"
            assert "python3-venv" in " ".join(chain[0]["lines"])
            pythons[variant] = UBUNTU_PYTHON[m.group(2)]
        else:
            m = re.fullmatch(r"python:(3\.\d+)-slim(?:-\w+)?", base)
            assert m, base
            assert env["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
            pythons[variant] = m.group(1)
    # one Python minor for both (Ray wants the same Python on all nodes and the driver), within requires-python
    assert pythons["gpu"] == pythons["cpu"]
    from packaging.specifiers import SpecifierSet

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(pythons["gpu"] + ".0")
    with pytest.raises(KeyError):  # a variant without a base stage does not resolve (not vacuous)
        _resolve_variant("tpu")[0]["env"]["TUPAC_IMAGE_VARIANT"]


def test_dockerfile_installs_what_the_package_pins() -> None:
    _, stages = _dockerfile()
    final = stages[-1]
    args, body = final["args"], "\n".join(final["lines"])
    deps = _dependencies()
    pins = {d.split("==")[0]: d.split("==")[1] for d in deps if "==" in d}
    assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]
    assert "pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION} --index-url ${TORCH_INDEX}" in body
    # the image's Ray is the one KubeRay is told about; its MLflow the tracking server's
    import mlflow
    import ray

    rayjob = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    assert args["RAY_VERSION"] == rayjob["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert f"mlflow=={args['MLFLOW_VERSION']}" in (INFRA / "mlflow" / "Dockerfile").read_text()
    assert args["MLFLOW_VERSION"] == mlflow.__version__
    assert "python infra/requirements.py ${VARIANT} pyproject.toml" in body and "pip install -r" in body
    assert "pip install --no-deps ." in body and "COPY --chown=ray:ray jobs ./jobs" in body
    assert any(d.startswith("openslide-bin") for d in deps) and any(d.startswith("cucim-cu13") for d in deps)
    # every path the Dockerfile copies exists in the repository (jobs/ is created by the job's author)
    # and is not excluded from the build context by Dockerfile.dockerignore
    ignored = [p.strip() for p in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    copied = [item for m in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", body, re.M) for item in m.split()]
    assert "infra/requirements.py" in copied
    for item in copied:
        assert (ROOT / item).exists() or item == "jobs", f"Dockerfile copies {item}, which is not in the repo"
        parts = Path(item).parts
        for pattern in ignored:
            for i in range(1, len(parts) + 1):
                prefix = "/".join(parts[:i])
                assert not fnmatch.fnmatch(prefix, pattern.removeprefix("**/")), f"{item} is excluded by {pattern}"


def _requirements_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("infra_requirements", INFRA / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_requirements_per_variant() -> None:
    """infra/requirements.py, as the Dockerfile runs it: the CPU variant has no cuCIM, neither has
    torch (installed first from the variant's index), the pins replace the ranges they fall in."""
    from packaging.requirements import Requirement

    _, stages = _dockerfile()
    args = stages[-1]["args"]
    pins = [f"ray[default]=={args['RAY_VERSION']}", f"mlflow=={args['MLFLOW_VERSION']}"]
    out = {}
    for variant in ("gpu", "cpu"):
        run = subprocess.run([sys.executable, str(INFRA / "requirements.py"), variant, str(ROOT / "pyproject.toml"),
                              *(x for pin in pins for x in ("--pin", pin))], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        out[variant] = {Requirement(line).name: str(Requirement(line)) for line in run.stdout.splitlines()}
    deps = {Requirement(d).name: Requirement(d) for d in _dependencies()}
    assert "cucim-cu13" in out["gpu"] and not any(n.startswith("cucim") for n in out["cpu"])
    for variant in out:
        assert "torch" not in out[variant] and "torchvision" not in out[variant]
        assert out[variant]["ray"] == pins[0] and out[variant]["mlflow"] == pins[1]
        assert set(out[variant]) | {"torch", "torchvision"} | ({"cucim-cu13"} if variant == "cpu" else set()) == set(deps)
    for pin in pins:  # a pin outside pyproject's range would make `pip install --no-deps .` lie
        req = Requirement(pin)
        (version,) = [s.version for s in req.specifier]
        assert deps[req.name].specifier.contains(version), f"{pin} is outside {deps[req.name]}"
    module = _requirements_module()
    with pytest.raises(ValueError, match="not dependencies"):
        module.requirements("cpu", _dependencies(), ["tensorflow==2.0"])
    with pytest.raises(ValueError, match="variant"):
        module.requirements("tpu", _dependencies())


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


_MARKER = re.compile(r"#\s*PLACEHOLDER:\s+(\w+(?:\s*,\s*\w+)*)")


def placeholder_problems(files: dict[str, str], declared: dict[str, str]) -> list[str]:
    """What is wrong with the `# PLACEHOLDER: NAME[, NAME]` markers of ``files`` (name -> text)
    against ``declared`` (infra/placeholders.env). A marker after code marks its own line, a marker
    alone on a comment line marks the next line. Problems: a marked name that is not declared or
    whose value the marked line does not hold; a line holding a declared value without a marker
    naming it; a declared name that no file marks."""
    problems, used = [], set()
    for where, text in files.items():
        lines = text.splitlines()
        marked: dict[int, set[str]] = {}
        for i, line in enumerate(lines):
            if not (m := _MARKER.search(line)):
                continue
            target = i if line[: m.start()].strip() else i + 1
            for name in (n.strip() for n in m.group(1).split(",")):
                if name not in declared:
                    problems.append(f"{where}:{i + 1}: {name} is not declared in infra/placeholders.env")
                    continue
                used.add(name)
                marked.setdefault(target, set()).add(name)
                if target >= len(lines) or declared[name] not in lines[target]:
                    problems.append(f"{where}:{target + 1}: marked {name} but does not hold {declared[name]!r}")
        for i, line in enumerate(lines):
            for name, value in declared.items():
                if value in line and name not in marked.get(i, ()):
                    problems.append(f"{where}:{i + 1}: holds {name}'s value {value!r} without `# PLACEHOLDER: {name}`")
    problems += [f"{name} is declared but no file marks it" for name in declared if name not in used]
    return problems


def _infra_files() -> dict[str, str]:
    paths = [CLUSTER, ROOT / "Makefile"] + sorted(p for p in INFRA.rglob("*") if p.is_file())
    return {str(p.relative_to(ROOT)): p.read_text() for p in paths
            if p.name != "placeholders.env" and "__pycache__" not in p.parts}


def test_placeholders_are_declared_once_and_marked_everywhere() -> None:
    declared = _placeholders()
    assert declared and all(declared.values()), "every placeholder has an example value"
    assert placeholder_problems(_infra_files(), declared) == []


def test_placeholder_check_is_not_vacuous() -> None:
    declared = {"TUPAC_IMAGE": "ghcr.io/tupac/tupac", "AWS_REGION": "us-east-1"}
    good = {"a.yaml": "image: ghcr.io/tupac/tupac:1  # PLACEHOLDER: TUPAC_IMAGE\n"
                      "# PLACEHOLDER: AWS_REGION\nregion: us-east-1\n"}
    assert placeholder_problems(good, declared) == []
    unmarked = {"a.yaml": good["a.yaml"] + "head_image: ghcr.io/tupac/tupac:1-cpu\n"}
    assert [p for p in placeholder_problems(unmarked, declared) if "without" in p] != []
    undeclared = {"a.yaml": good["a.yaml"] + "bucket: s3://b  # PLACEHOLDER: BUCKET\n"}
    assert any("BUCKET is not declared" in p for p in placeholder_problems(undeclared, declared))
    wrong_line = {"a.yaml": "# PLACEHOLDER: AWS_REGION\n\nregion: us-east-1\n" + good["a.yaml"].splitlines()[0]}
    assert any("does not hold" in p for p in placeholder_problems(wrong_line, declared))
    unused = {"a.yaml": good["a.yaml"].splitlines()[0]}
    assert placeholder_problems(unused, declared) == ["AWS_REGION is declared but no file marks it"]



def _click_command(group, words: list[str]):
    """The (sub)command of a Click ``group`` that ``words`` name, and the words after it (duck-typed:
    Typer's groups are not always ``click.Group`` instances)."""
    command, i = group, 0
    while hasattr(command, "commands") and i < len(words) and not words[i].startswith("-"):
        if words[i] not in command.commands:
            raise LookupError(f"`{group.name} {' '.join(words[:i + 1])}` is not a command")
        command, i = command.commands[words[i]], i + 1
    return command, words[i:]


def _shell_commands(text: str) -> list[list[str]]:
    """The simple commands of the ```bash blocks of a Markdown text, as argv lists (environment
    assignments and `.venv/bin/` dropped; commands quoted inside `ray exec "..."` included)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for token in tokens + [";"]:
                if token in ("&&", "||", ";", "|", "&"):
                    while segment and re.fullmatch(r"[A-Z_]+=\S*", segment[0]):
                        segment.pop(0)
                    if segment:
                        segment[0] = segment[0].removeprefix(".venv/bin/")
                        commands.append(segment)
                        commands += [shlex.split(t) for t in segment[1:] if t.startswith("tupac ")]
                    segment = []
                else:
                    segment.append(token)
    return commands


def command_problems(markdown: str) -> tuple[list[str], set[tuple[str, str]]]:
    """Problems of the `tupac`, `ray` and `python jobs/run_cohort.py` commands of ``markdown``'s
    bash blocks (unknown commands or options of the installed CLIs), and the commands seen."""
    import typer
    from ray.scripts.scripts import cli as ray_cli

    from tupac.cli import app

    clis = {"tupac": typer.main.get_command(app), "ray": ray_cli}
    problems, seen = [], set()
    queue = _shell_commands(markdown)
    while queue:
        argv = queue.pop(0)
        if argv[0] == "docker" and "tupac" in argv:  # `docker run ... IMAGE tupac run ...`
            argv = argv[argv.index("tupac"):]
        if argv[:2] == ["python", "jobs/run_cohort.py"]:
            argv = ["tupac", "run", *argv[2:]]
        if argv[0] not in clis:
            continue
        try:
            command, rest = _click_command(clis[argv[0]], argv[1:])
        except LookupError as exc:
            problems.append(str(exc))
            continue
        if "--" in rest:  # `ray job submit ... -- python jobs/run_cohort.py ...`: check both
            queue.append(rest[rest.index("--") + 1:])
            rest = rest[: rest.index("--")]
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for flag in (a.split("=")[0] for a in rest if a.startswith("--")):
            if flag not in known:
                problems.append(f"`{' '.join(argv)}`: no {flag}")
        seen.add((argv[0], command.name))
    return problems, seen


def test_readme_commands_exist() -> None:
    """Every `tupac`, `ray` and `python jobs/run_cohort.py` command of infra/README.md names a real
    command and only options it has (Ray's CLI and tupac's, as installed)."""
    problems, seen = command_problems((INFRA / "README.md").read_text())
    assert problems == []
    # the walk saw the commands the README is about (the parser is not skipping everything)
    assert {("tupac", "run"), ("tupac", "mlflow-ui"), ("ray", "up"), ("ray", "submit"), ("ray", "exec"),
            ("ray", "down"), ("ray", "dashboard"), ("ray", "rsync-up")} <= seen, seen


def test_readme_command_check_is_not_vacuous() -> None:
    bad = """```bash
RAY_ADDRESS=http://x:8265 .venv/bin/ray job submit --working-dir . --no-wat -- python jobs/run_cohort.py --dta /d --out /r
ray exec c.yaml "tupac mlflow-ui --rn /r" --port-forward 5000   # comment --ignored
tupac rum --data d && ray up c.yaml --yes
```"""
    problems, seen = command_problems(bad)
    assert sorted(problems) == sorted([
        "`ray job submit --working-dir . --no-wat -- python jobs/run_cohort.py --dta /d --out /r`: no --no-wat",
        "`tupac run --dta /d --out /r`: no --dta",
        "`tupac mlflow-ui --rn /r`: no --rn",
        "`tupac rum` is not a command",
    ]), problems
    assert ("ray", "up") in seen and ("ray", "exec") in seen


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_make_image_builds_the_tag_the_cluster_files_name(variant: str, tmp_path: Path, cluster: dict) -> None:
    """`make image VARIANT=...` runs `docker build` (a stand-in here) with the variant and the tag
    that ray_cluster.yaml and the KubeRay files use."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make")
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "image", f"VARIANT={variant}"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    image = cluster["docker"]["image"] + ("-cpu" if variant == "cpu" else "")
    assert (tmp_path / "calls").read_text().split() == [
        "build", "-f", "infra/Dockerfile", "--build-arg", f"VARIANT={variant}", "-t", image, "."]


# Runs in a child process that cannot import cuCIM or CuPy and whose package metadata does not list
# them: the CPU image's situation.
_NO_CUCIM = r"""
import importlib.abc, importlib.metadata as md, sys
BLOCKED = ("cucim", "cupy", "cupyx", "cupy_backends")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
_version = md.version
def version(dist):
    if dist.lower().startswith(("cucim", "cupy")):
        raise md.PackageNotFoundError(dist)
    return _version(dist)
md.version = version
import tupac.cli, tupac.pipeline, tupac.infer.actors  # the run command, the stages, the GPU actors
from tupac.slide import open_slide
with open_slide(sys.argv[1]) as reader:
    region = reader.read_region((0, 0), 0, (64, 48))
    print(reader.backend, region.shape, region.dtype)
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "cuCIM was imported"
"""


def test_cpu_variant_runs_without_cucim() -> None:
    """The CPU image leaves cuCIM out (infra/requirements.py): tupac's pipeline, jobs and actors
    import without it and slides open with OpenSlide."""
    slide = ROOT / "tests" / "fixtures" / "real" / "cmu-1-small-region.svs"
    out = subprocess.run([sys.executable, "-c", _NO_CUCIM, str(slide)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "openslide (48, 64, 3) uint8", out.stdout
