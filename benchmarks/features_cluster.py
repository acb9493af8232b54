"""The features stage (``run_features``) in this process vs as Ray tasks on one and on two local nodes (issue 19).

What it measures, per setting, on a copy of a finished run (``--src``: ``RUN/slides`` + the run's
``config.yaml``; the models are read from ``--models``, never written):

- ``wall_s``: the stage's wall time (Ray's start-up excluded, measured apart as ``ray_start_s``);
- ``driver_cpu_s``: this process's own CPU seconds over the stage (``time.process_time``: every thread of
  the driver, Ray's client threads included), and ``driver_cpu_share`` = driver CPU / total CPU of the stage
  (the issue's target: under 5 % on Ray);
- ``tasks_cpu_s``: the CPU seconds the tasks measured themselves (per slide, and the two fits;
  ``RunFeatures.cpu_s``); ``ray_cpu_s``: every Ray process of this cluster (raylets, GCS, workers) over the
  stage from ``/proc`` (so ``ray_cpu_s - tasks_cpu_s`` is Ray's own overhead plus the small row tasks);
  ``total_cpu_s`` = driver + Ray processes (in process: the driver's alone);
- ``phases_s``: where the wall time goes (slides; deep-histogram fit; deep-histogram rows; grade network
  fit + general rows + tables; MLflow), from the stage's progress calls;
- ``same_table``: whether the feature table equals the in-process one exactly.

Settings (each in a fresh subprocess, so that imports and earlier Ray sessions do not count):

- ``inprocess``: ``run_features(...)`` with no executor: the driver-only stage as it was;
- ``ray_1node``: ``RayExecutor(local_cpus=2)`` (``ray.init`` with 2 CPUs, the embedded default);
- ``ray_1node_dask_on_ray``: the same, with the per-slide heatmap graphs on ``ray_dask_get`` (nested tasks)
  instead of the task's local threaded scheduler;
- ``ray_2nodes``: ``ray start --head --num-cpus=1`` + one ``ray start --address ... --num-cpus=1`` worker
  node on this machine (own temp folder; stopped after by killing only their processes, never ``ray stop``),
  the driver connecting with ``RayExecutor(address)``.

Command (about 15 min on 2 shared cores for the 60-slide cohort of ``benchmarks/cohort_pipeline.py``)::

    nice -n 10 .venv/bin/python benchmarks/features_cluster.py --src /tmp/cp60/run --data /tmp/cp60/data \\
        --work /tmp/fc60 [--settings inprocess ray_1node ray_1node_dask_on_ray ray_2nodes] [--no-track]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULT = ROOT / "benchmarks" / "results" / "features_cluster.json"
SETTINGS = ("inprocess", "ray_1node", "ray_1node_dask_on_ray", "ray_2nodes")


def _ray_pids(temp: Path) -> list[int]:
    """Processes of the Ray whose temp folder is ``temp``: those whose command line names it (GCS, raylets,
    agents) and all their descendants (the workers, which rename themselves ``ray::...``); this one excluded."""
    parent, named = {}, set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parent[int(d.name)] = ppid
            if str(temp) in cmd:
                named.add(int(d.name))
    ours = set(named)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    ours.discard(os.getpid())
    return sorted(ours)


def _cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each live process; ones that ended are left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
    return out


def _copy_run(src: Path, dst: Path, n: int | None) -> Path:
    """``dst`` with the committed stores and detections of ``src`` (the first ``n`` slides) and its config."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "slides").mkdir(parents=True)
    stores = sorted((src / "slides").glob("*.zarr"))[:n]
    for s in stores:
        shutil.copytree(s, dst / "slides" / s.name)
        csv = s.with_name(s.name[: -len(".zarr")] + ".mitoses.csv")
        if csv.is_file():
            shutil.copy2(csv, dst / "slides" / csv.name)
    shutil.copy2(src / "config.yaml", dst / "config.yaml")
    return dst


def _one(setting: str, run: Path, data: Path, models: Path, track: bool) -> dict:
    """Run the stage once in this process (a child of :func:`main`) and measure it."""
    t_imp = time.perf_counter()
    import pandas as pd

    from ray_nodes import NO_AUTH, free_port, ray_cli, short_temp, stop_cluster
    from tupac.feature_run import run_features
    from tupac.infer.cluster import RayExecutor
    from tupac.pipeline import PipelineConfig

    cfg = PipelineConfig.from_yaml(run / "config.yaml").features_config()
    labels = data / "training_ground_truth.csv"
    import_s = time.perf_counter() - t_imp
    row: dict = {"setting": setting, "started": time.strftime("%H:%M:%SZ", time.gmtime()),
                 "import_s": round(import_s, 2), "track": track}
    marks: list[tuple[str, float]] = []

    def tick(sid: str, stage: str) -> None:
        marks.append((stage if not sid else "slide", time.perf_counter()))

    def stage(executor=None, scheduler=None, temp: Path | None = None):
        pids = _ray_pids(temp) if temp else []
        cpu0 = _cpu_of(pids)
        c0, t0 = time.process_time(), time.perf_counter()
        res = run_features(run, labels=labels, slides=data, models=models, config=cfg, scheduler=scheduler,
                           progress=tick, track=track, executor=executor)
        wall, driver = time.perf_counter() - t0, time.process_time() - c0
        ray_cpu = None
        if temp:
            cpu1 = _cpu_of(_ray_pids(temp))
            # Processes that started during the stage (workers) count from zero.
            ray_cpu = sum(v - cpu0.get(p, 0.0) for p, v in cpu1.items())
        slides_done = max(t for k, t in marks if k == "slide")
        at = {k: t for k, t in marks if k != "slide"}
        edges = [("slides", t0, slides_done)]
        order = ["deep-feature histograms", "general features (grade network)", "MLflow: grade network runs"]
        names = {"deep-feature histograms": "deep_hist_fit", "general features (grade network)": "deep_hist_rows",
                 "MLflow: grade network runs": "general_fit_rows_and_tables"}
        prev = slides_done
        for k in order:
            if k in at:
                edges.append((names[k], prev, at[k]))
                prev = at[k]
        edges.append(("mlflow" if "MLflow: grade network runs" in at else "tables", prev, t0 + wall))
        tasks = sum(res.cpu_s.values())
        total = driver + (ray_cpu if ray_cpu is not None else 0.0)
        row.update({
            "slides": len(res.table), "training": len(res.training), "wall_s": round(wall, 2),
            "driver_cpu_s": round(driver, 2), "tasks_cpu_s": round(tasks, 2),
            "slide_tasks_cpu_s": round(sum(v for k, v in res.cpu_s.items() if not k.startswith("(")), 2),
            "fits_cpu_s": {k: round(v, 2) for k, v in res.cpu_s.items() if k.startswith("(")},
            "ray_cpu_s": round(ray_cpu, 2) if ray_cpu is not None else None,
            "total_cpu_s": round(total, 2), "driver_cpu_share": round(driver / total, 4) if total else None,
            "phases_s": {name: round(b - a, 2) for name, a, b in edges},
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        })
        table = res.table
        ref = Path(os.environ["FC_REFERENCE"]) if os.environ.get("FC_REFERENCE") else None
        if ref is not None and ref.is_file():
            try:
                pd.testing.assert_frame_equal(table, pd.read_parquet(ref), check_exact=True)
                row["same_table"] = True
            except AssertionError as e:
                row["same_table"] = False
                row["table_difference"] = str(e).splitlines()[0][:300]
        else:
            row["same_table"] = None

    if setting == "inprocess":
        stage()
        return row
    temp = short_temp()
    try:
        if setting.startswith("ray_1node"):
            t0 = time.perf_counter()
            with RayExecutor(local_cpus=2, include_dashboard=False, temp_dir=str(temp), log_dir=run / "logs") as ex:
                row["ray_start_s"] = round(time.perf_counter() - t0, 2)
                row["cluster"] = "ray.init(num_cpus=2): one local node, 2 CPUs"
                scheduler = None
                if setting.endswith("dask_on_ray"):
                    from ray.util.dask import ray_dask_get

                    scheduler = ray_dask_get
                row["dask_scheduler"] = "ray_dask_get (nested tasks)" if scheduler else "threads (in the slide's task)"
                stage(ex, scheduler, temp)
            return row
        port = free_port()
        t0 = time.perf_counter()
        head = ray_cli("start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                       f"--temp-dir={temp}", "--disable-usage-stats")
        if head.returncode:
            raise RuntimeError(head.stderr[-2000:])
        address = f"127.0.0.1:{port}"
        worker = ray_cli("start", f"--address={address}", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats")
        if worker.returncode:
            raise RuntimeError(worker.stderr[-2000:])
        os.environ.update(NO_AUTH)
        with RayExecutor(address, log_dir=run / "logs") as ex:
            import ray

            row["ray_start_s"] = round(time.perf_counter() - t0, 2)
            nodes = [n for n in ray.nodes() if n["Alive"]]
            row["cluster"] = (f"ray start --head --num-cpus=1 + 1 worker node --num-cpus=1 on this machine: "
                              f"{len(nodes)} nodes, {ray.cluster_resources().get('CPU')} CPUs")
            row["dask_scheduler"] = "threads (in the slide's task)"
            stage(ex, None, temp)
        return row
    finally:
        stop_cluster(temp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=Path("/tmp/cp60/run"), help="finished run (read only)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/cp60/data"), help="its dataset (slides, labels)")
    ap.add_argument("--models", type=Path, default=None, help="models folder (default SRC/models)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fc60"), help="where the run copies go")
    ap.add_argument("--slides", type=int, default=None, help="only the first N slides (default all)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--track", action=argparse.BooleanOptionalAction, default=True,
                    help="log the grade network's fit to MLflow, as `tupac run` does")
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--append", action="store_true",
                    help="add the rows to OUT's (a setting rerun later, e.g. on a quieter machine) and compare its "
                         "table with the first run's reference table in WORK")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    models = a.models or a.src / "models"
    if a.one:
        print("RESULT " + json.dumps(_one(a.one, a.run, a.data, models, a.track)), flush=True)
        return

    n_src = len(list((a.src / "slides").glob("*.zarr")))
    rows, reference = [], a.work / "reference.parquet"
    if a.append and a.out.is_file():
        rows = json.loads(a.out.read_text())["rows"]
    else:
        reference.unlink(missing_ok=True)
    for setting in a.settings:
        run = _copy_run(a.src, a.work / setting / "run", a.slides)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FC_REFERENCE": str(reference)}
        cmd = [sys.executable, __file__, "--one", setting, "--run", str(run), "--data", str(a.data),
               "--models", str(models), "--track" if a.track else "--no-track"]
        print(f"[{time.strftime('%H:%M:%S')}] {setting} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            rows.append({"setting": setting, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:500]})
        else:
            rows.append(json.loads(line[len("RESULT "):]))
            print(json.dumps(rows[-1]), flush=True)
            if not reference.is_file():
                shutil.copy2(run / "features.parquet", reference)
        _write(a, rows, n_src)  # after every setting: a long run interrupted keeps what it measured


def _write(a: argparse.Namespace, rows: list[dict], n_src: int) -> None:
    n = next((r["slides"] for r in rows if "slides" in r), None)
    doc = {
        "command": " ".join(["nice -n 10", sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "note": "2 cores shared with other jobs: see each row's load_avg_end"},
        "cohort": {"src": str(a.src), "slides_in_src": n_src, "slides": n, "data": str(a.data),
                   "note": ("the 60-slide phantom cohort of benchmarks/cohort_pipeline.py" if n == 60 else
                            f"a {n}-slide cohort (not the 60-slide one)")},
        "reference_table": "the first setting's features.parquet; same_table compares every later one to it exactly",
        "rows": rows,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}", flush=True)


if __name__ == "__main__":
    main()
