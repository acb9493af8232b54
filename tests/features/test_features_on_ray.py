"""The features stage as Ray tasks (issue 19): the same numbers as in this process, and a slide that cannot
be read fails with the file named, as it does here.

A local Ray (2 CPUs, its own temp folder so that it never joins another Ray on the machine) runs each
slide's features as a task that reads the slide's pixels itself, the fits as tasks of their own.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from phantom_runs import labelled_phantom, truth_run
from ray_nodes import short_temp
from safetensors.numpy import load_file

from tupac.errors import TupacError
from tupac.feature_run import run_features
from tupac.features.config import FeatureRunConfig
from tupac.infer.cluster import RayExecutor

pytestmark = pytest.mark.slow
N_TRAIN = 6
CFG = FeatureRunConfig(n_patches=3, n_clusters=8, n_splits=2, min_prob=0.5, general_epochs=5,
                       min_region_mm2=0.002)  # the phantom tumors have true islands under 0.01 mm²


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return labelled_phantom(tmp_path_factory.mktemp("phantom_ray"), "labels.csv", N_TRAIN)


@pytest.fixture(scope="module")
def ray_ex():
    temp = short_temp()
    try:
        with RayExecutor(local_cpus=2, include_dashboard=False, temp_dir=str(temp), retries=0) as ex:
            yield ex
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _outputs(run):
    """Everything the stage wrote that must not depend on where it ran (the MLflow record aside)."""
    f = run / "features"
    return {
        "table": pd.read_parquet(run / "features.parquet"),
        "deep_hist": load_file(str(f / "deep_hist.safetensors")),
        "general": load_file(str(f / "general" / "general.safetensors")),
        "oof": pd.read_parquet(f / "general" / "oof.parquet"),
        "fringe": {p.name: pd.read_csv(p) for p in sorted((f / "fringe").glob("*.csv"))},
        "qc": pd.read_csv(f / "qc.csv"),
    }


def _assert_same(a, b):
    pd.testing.assert_frame_equal(a["table"], b["table"], check_exact=True)
    for key in ("deep_hist", "general"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key}/{name}")
    pd.testing.assert_frame_equal(a["oof"], b["oof"], check_exact=True)
    assert a["fringe"].keys() == b["fringe"].keys()
    for name in a["fringe"]:
        pd.testing.assert_frame_equal(a["fringe"][name], b["fringe"][name], check_exact=True)
    pd.testing.assert_frame_equal(a["qc"], b["qc"])


def test_ray_tasks_give_the_in_process_features_bit_for_bit(phantom, ray_ex, tmp_path):
    root, meta, models = phantom
    here, there = tmp_path / "here" / "run", tmp_path / "there" / "run"
    for run in (here, there):
        truth_run(root / "data", run)
    kw = dict(labels=root / "labels.csv", models=models, config=CFG)
    local = run_features(here, track=False, **kw)
    seen = []
    ray = run_features(there, executor=ray_ex, track=True, progress=lambda s, m: seen.append((s, m)), **kw)
    _assert_same(_outputs(here), _outputs(there))
    assert sorted(s for s, m in seen if s) == sorted(meta["slides"])
    # Every slide was a task of its own, and the grade network's fit was logged (from a task) to the run's store.
    assert set(ray.cpu_s) == set(meta["slides"]) | {"(deep_hist fit)", "(general fit)"}
    assert all(v > 0 for v in ray.cpu_s.values())
    assert (there / "features" / "mlflow.json").is_file() and not (here / "features" / "mlflow.json").exists()
    assert [n for n in ray.notes if not n.startswith("general: MLflow")] == local.notes

    # A run without labels reuses the saved fits (loaded by tasks), with the heatmap graphs on Dask-on-Ray
    # (nested Ray tasks): the same table again.
    from ray.util.dask import ray_dask_get

    again = run_features(there, models=models, config=CFG, executor=ray_ex, scheduler=ray_dask_get)
    pd.testing.assert_frame_equal(again.table, local.table, check_exact=True)
    assert any(n.startswith("general: reused the grade network of 6 training slides") for n in again.notes)
    assert any(n.startswith("deep_hist: reused the fit of 6 training slides") for n in again.notes)


@pytest.mark.parametrize("broken", ["missing", "unreadable"])
def test_a_slide_that_cannot_be_read_fails_its_task_with_the_file_named(phantom, ray_ex, tmp_path, broken):
    root, meta, models = phantom
    run = tmp_path / "run"
    ids = ["TUPAC-TR-001", "TUPAC-TR-002", "TUPAC-TR-003"]
    truth_run(root / "data", run, ids)
    # A slide folder (--slides) with the first two slides as they are and the third missing or not a slide.
    folder = tmp_path / "slides"
    folder.mkdir()
    for sid in ids:
        src = meta["slides"][sid]["path"]
        dst = folder / f"{sid}{src[src.rindex('.'):]}"
        if sid != ids[-1]:
            dst.symlink_to(src)
        elif broken == "missing":
            dst.symlink_to(tmp_path / "gone.tif")  # listed in the folder, no file behind it
        else:
            dst.write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing else
    bad = (folder / f"{ids[-1]}{dst.suffix}").resolve()
    errors = []
    for executor in (None, ray_ex):
        with pytest.raises(TupacError) as info:
            run_features(run, slides=folder, models=models, config=CFG, executor=executor, track=False)
        errors.append(info.value)
    assert str(bad) in str(errors[0]), errors[0]
    # On Ray the task's own error arrives as itself: same class, same one-line message.
    assert type(errors[1]) is type(errors[0]) and str(errors[1]) == str(errors[0])
    assert not (run / "features.parquet").exists()


def test_the_feature_networks_give_the_same_bits_on_any_thread_count():
    """Why a Ray task (torch on 1 thread) matches this process (torch on all cores): MitosNet's descriptors
    and feature volumes do not depend on torch's thread count here, so pinning threads costs nothing."""
    import torch

    from tupac.features.deep_hist import mitosis_descriptors
    from tupac.features.general import feature_volumes
    from tupac.models import create_model

    torch.manual_seed(0)
    model = create_model("mitosnet").eval()
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (64, 79, 79, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    got = {}
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got[n] = (mitosis_descriptors(model, patches), feature_volumes(model, big))
    finally:
        torch.set_num_threads(before)
    for n in (2, 3):
        np.testing.assert_array_equal(got[n][0], got[1][0])
        np.testing.assert_array_equal(got[n][1], got[1][1])


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_tupac_error_survives_pickling_with_its_message_and_attributes():
    """A task's error crosses to the driver pickled: those built from (path, problem) must come back as
    themselves (not Ray's UnserializableException), naming the same file."""
    import inspect
    import pickle
    from pathlib import Path

    import tupac.errors as errors

    classes = {c for c in _all_subclasses(errors.TupacError) if c.__module__ == "tupac.errors"} | {errors.TupacError}
    with_path = 0
    for cls in sorted(classes, key=lambda c: c.__name__):
        params = inspect.signature(cls.__init__).parameters
        err = cls(Path("/data/slide 1.svs"), "truncated") if "path" in params else cls("a message")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err) and back.__dict__ == err.__dict__, cls
        with_path += "path" in params
    assert with_path >= 6  # SlideError, ModelFileError, HeatmapStoreError, LedgerError, FeatureFileError, ...


def test_features_command_runs_the_stage_on_ray_with_the_same_table(phantom, ray_ex, tmp_path):
    """``tupac features --ray`` joins the Ray this process holds (here the fixture's) and gives the table of
    the in-process stage."""
    from typer.testing import CliRunner

    from tupac.cli import app

    root, meta, models = phantom
    ids = ["TUPAC-TR-002", "TUPAC-TR-004", "TUPAC-TR-007"]
    here, there = tmp_path / "here" / "run", tmp_path / "there" / "run"
    for run in (here, there):
        truth_run(root / "data", run, ids)
    local = run_features(here, models=models, config=CFG)
    res = CliRunner().invoke(app, ["features", "--run", str(there), "--models", str(models), "--ray",
                                   "--patches", "3", "--min-prob", "0.5", "--min-region-mm2", "0.002"])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_parquet(there / "features.parquet"), local.table, check_exact=True)
