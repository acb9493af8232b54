"""The cohort job in one process: outputs, equality with the sequential reference, resume, bad input.

Ray runs locally with 2 CPUs and a 200 MB object store; cohorts are 2-3 phantom slides of
1 x 0.8 mm with tiny untrained models (correctness does not need good weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_job_support import REAL, infer_cli, local_args, make_cohort, make_models, slides_of, write_manifest


# -- pure: windowed detection == whole-heatmap detection -----------------------------------
def test_windowed_detection_equals_whole_heatmap():
    from tupac.heatmaps.windows import HeatmapGeometry
    from tupac.infer.slide_task import detect_windowed
    from tupac.mitosis.detect import detect_from_heatmap

    rng = np.random.default_rng(0)
    geom = HeatmapGeometry((70, 90), 16, 79, 16, 39.0, 0.25, 0.25)
    heat = np.zeros(geom.shape, np.float32)
    windows = np.array([(r, c) for r in range(5) for c in range(6) if (r + c) % 3], np.int64)
    for r, c in windows:
        rows, cols = geom.cells((int(r), int(c)))
        heat[rows, cols] = rng.random((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32)
    whole = detect_from_heatmap(heat, 16, 39.0, 0.6, 24.0, 30.0)
    win = detect_windowed(lambda rs, cs: heat[rs, cs], geom, windows, 0.6, 24.0, 30.0, 1.0)
    assert len(whole) > 20
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), win.reset_index(drop=True))


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort") / "root", n=2)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


def _cfg(models: Path, out: Path, **kw):
    from tupac.infer.job import JobConfig

    return JobConfig(models=models, out=out, actors=1, tumor_chunk=16, mitosis_chunk=32, batch_size=2, **kw)


def _quiet(total):
    from rich.console import Console

    from tupac.infer.progress import CohortProgress

    return CohortProgress(total, console=Console(file=open("/dev/null", "w")), live=False)


@pytest.mark.slow
def test_cohort_outputs_match_sequential_reference_and_resume_skips(local_ray, models, cohort, tmp_path):
    from tupac.data.manifest import load_cohort
    from tupac.heatmaps import HeatmapStore, Ledger, read_commit
    from tupac.infer.job import run_job
    from tupac.models.trained import load_trained
    from tupac.infer.tumor_map import tumor_map

    entries = load_cohort(data=cohort)
    run = tmp_path / "run"
    summary = run_job(entries, _cfg(models, run), progress=_quiet)
    assert summary["ok"] and sorted(summary["done"]) == [e.slide_id for e in entries]
    assert summary["skipped_stages"] == {}
    # The one CPU actor runs torch on the whole 2-CPU Ray (its share), not on its 1-CPU reservation.
    assert [a["torch_threads"] for a in summary["actors"]] == [2]
    assert json.loads((run / "summary.json").read_text())["counts"]["DONE"] == 2

    for e in entries:
        store = HeatmapStore.open(run / "slides" / f"{e.slide_id}.zarr", mode="r")
        assert set(store.names) == {"tissue", "tumor", "mitosis"}
        for name in store.names:  # every image is an OME-NGFF multiscale in micrometers
            ms = dict(store._group[name].attrs)["ome"]["multiscales"][0]
            assert [a["unit"] for a in ms["axes"]] == ["micrometer", "micrometer"]
        rec = read_commit(store)
        assert set(rec.models) == {"tumor:locnet", "mitosis:mitosnet"} and "mitoses.csv" in rec.outputs
        # The slide's profile: every step of both stages timed (benchmarks/real_size.py reads these).
        steps = {"tissue_s", "stain_s", "store_s", "regions_s", "detect_s"} | {
            f"{task}_{step}" for task in ("tumor", "mitosis")
            for step in ("decode_s", "standardize_s", "model_wait_s", "model_s", "write_s")}
        assert steps <= set(rec.timings_s) and rec.timings_s["mitosis_model_s"] > 0, rec.timings_s
        # The job's tumor heatmap is the single-slide sequential reference's, window for window.
        ref = tumor_map(e.path, load_trained(models / "tumor"), tmp_path / f"ref-{e.slide_id}.zarr", chunk=16)
        np.testing.assert_allclose(store.read("tumor"), ref.read("tumor"), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(store.read("tissue"), ref.read("tissue"))
        tumor = store.read("tumor")
        assert tumor.max() > 0 and store.read("mitosis").max() > 0
        # Mitosis windows only where tumor regions are: cells far outside tissue stay 0.
        det = pd.read_csv(run / "slides" / f"{e.slide_id}.mitoses.csv")
        assert list(det.columns) == ["x", "y", "prob"] and len(det) == rec.extra["mitoses"]
        assert (det.x >= 0).all() and (det.y >= 0).all() and (det.prob >= 0.5).all()
        # The mitosis stage standardized with stain statistics measured on the tumor regions (tissue
        # at or above the tumor threshold), recorded in the commit for the features stage.
        from tupac.preprocess import stain
        from tupac.preprocess.tissue import TissueMask
        from tupac.slide import open_slide
        from tupac.tumor.regions import heatmap_on_grid

        tissue = store.read("tissue").astype(bool)
        prob = heatmap_on_grid(tumor, store.mpp("tumor"), store.spec("tumor").offset_um[0], tissue.shape, store.mpp("tissue"))
        regions = tissue & (prob >= load_trained(models / "tumor").threshold)
        recorded = stain.SlideStainStats.from_dict(rec.extra["mitosis_stain_stats"])
        with open_slide(e.path) as reader:
            measured = stain.fit_slide(reader, TissueMask(tissue, store.mpp("tissue")),
                                       region=TissueMask(regions, store.mpp("tissue")), method=recorded.method)
        assert recorded.method == load_trained(models / "mitosis").reference.method
        assert recorded.key == measured.key and recorded.n_tiles > 0

    # Re-running skips DONE slides: attempts stay 1, files are untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "slides").rglob("*") if p.is_file()}
    again = run_job(entries, _cfg(models, run), progress=_quiet)
    assert sorted(again["skipped"]) == [e.slide_id for e in entries] and again["ok"]
    with Ledger.open(run) as led:
        assert [r.attempts for r in led.records()] == [1, 1]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # A changed input (new content) is recomputed; deleting outputs forces recomputation too.
    shutil.rmtree(run / "slides" / f"{entries[1].slide_id}.zarr")
    third = run_job(entries, _cfg(models, run), progress=_quiet)
    assert third["skipped"] == [entries[0].slide_id] and third["ok"]
    with Ledger.open(run) as led:
        assert led.get(entries[1].slide_id).attempts == 2

    # A committed store that lost a chunk (or whose chunks are not those its record lists) is never
    # adopted as done: it is recomputed, and the damaged store is kept under RUN/superseded/.
    first = run / "slides" / f"{entries[0].slide_id}.zarr"
    lost = sorted((first / "tumor" / "0" / "c").rglob("*"))[-1]
    lost.unlink()
    fourth = run_job(entries, _cfg(models, run), progress=_quiet)
    assert fourth["skipped"] == [entries[1].slide_id] and fourth["ok"]
    assert len(fourth["superseded"]) == 1 and "tumor/0 holds" in fourth["superseded"][0]
    assert lost.is_file()  # recomputed
    kept = list((run / "superseded").glob(f"*/{first.name}"))
    assert len(kept) == 1 and not (kept[0] / lost.relative_to(first)).exists()


@pytest.mark.slow
def test_mitosis_stage_skipped_without_mitosis_model(local_ray, cohort, tmp_path):
    from tupac.data.manifest import load_cohort
    from tupac.heatmaps import HeatmapStore
    from tupac.infer.job import run_job

    models = make_models(tmp_path / "models", mitosis=False)
    entries = load_cohort(data=cohort)[:1]
    summary = run_job(entries, _cfg(models, tmp_path / "run"), progress=_quiet)
    assert summary["ok"] and "mitosis" in summary["skipped_stages"]
    assert "tupac train mitosis" in summary["skipped_stages"]["mitosis"]
    store = HeatmapStore.open(tmp_path / "run" / "slides" / f"{entries[0].slide_id}.zarr", mode="r")
    assert set(store.names) == {"tissue", "tumor"} and store.committed
    assert not (tmp_path / "run" / "slides" / f"{entries[0].slide_id}.mitoses.csv").exists()


def _blank_slide(path: Path) -> Path:
    """A white (glass only) Aperio slide of 1 x 0.8 mm: no tissue."""
    from tupac.synth.aperio import write_aperio_svs

    write_aperio_svs(path, (4000, 3200), lambda x0, y0, w, h: np.full((h, w, 3), 243, np.uint8))
    return path


@pytest.mark.slow
def test_bad_inputs_fail_alone_and_a_reader_segfault_does_not_kill_the_job(models, cohort, tmp_path):
    good = slides_of(cohort)
    trunc = tmp_path / "truncated.svs"
    data = good[1].read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    text = tmp_path / "notes.svs"
    text.write_text("slide_id,comment\nthis is not a slide\n")
    rows = [
        ("good", good[0], None),
        ("crashes", good[1], None),  # the worker reading it segfaults (fault injection)
        ("truncated", trunc, None),
        ("unreadable", REAL / "unreadable.svs", None),
        ("broken", REAL / "broken.svs", None),
        ("blank", _blank_slide(tmp_path / "blank.svs"), None),
        ("no-mpp", REAL / "tcga-cr-7395-01a-01-ts1.svs", None),
        ("missing", tmp_path / "nowhere.svs", None),
        ("not-a-slide", text, None),
    ]
    manifest = write_manifest(tmp_path / "cohort.csv", rows)
    run = tmp_path / "run"
    env = {"TUPAC_INFER_FAULT": "segfault:crashes:tumor"}
    proc = infer_cli(local_args(models, run, manifest=manifest) + ["--max-attempts", "1"], env=env, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout
    s = json.loads((run / "summary.json").read_text())
    assert sorted(s["done"]) == ["blank", "good"]
    reasons = {f["slide_id"]: f["error"] for f in s["failed"]}
    assert set(reasons) == {"crashes", "truncated", "unreadable", "broken", "no-mpp", "missing", "not-a-slide"}
    assert "died" in reasons["crashes"] and "crash" in reasons["crashes"], reasons["crashes"]
    assert "MPP" in reasons["no-mpp"] or "mpp" in reasons["no-mpp"]
    assert "no such file" in reasons["missing"]
    for sid in reasons:
        assert str(dict((r[0], r[1]) for r in rows)[sid].name) in reasons[sid], (sid, reasons[sid])
        assert len(reasons[sid].splitlines()) == 1
    # The slide without tissue is DONE with an empty result.
    from tupac.heatmaps import HeatmapStore

    blank = HeatmapStore.open(run / "slides" / "blank.zarr", mode="r")
    assert blank.committed and blank.read("tissue").sum() == 0 and blank.read("tumor").max() == 0
    assert pd.read_csv(run / "slides" / "blank.mitoses.csv").empty
    # ... and said so: in its commit record, the summary and the printed summary.
    from tupac.heatmaps import read_commit

    assert read_commit(blank).extra["no_tissue"] is True
    assert read_commit(run / "slides" / "good.zarr").extra["no_tissue"] is False
    assert s["no_tissue"] == ["blank"]
    assert "warning: blank: no tissue found" in " ".join(proc.stdout.split())
    # The failures are given up on the next run (max attempts 1): nothing is recomputed.
    again = infer_cli(local_args(models, run, manifest=manifest) + ["--max-attempts", "1"], timeout=600)
    assert again.returncode == 1
    s2 = json.loads((run / "summary.json").read_text())
    assert sorted(s2["skipped"]) == ["blank", "good"]
    assert all(f["given_up"] for f in s2["failed"]) and len(s2["failed"]) == 7
    assert "given up" in again.stdout


def test_cli_rejects_bad_usage_in_one_line(tmp_path, cohort):
    proc = infer_cli(["--data", str(cohort), "--manifest", "x.csv", "--models", str(tmp_path), "--out", str(tmp_path / "r")])
    assert proc.returncode == 2 and "exactly one of" in proc.stderr and "Traceback" not in proc.stderr
    proc = infer_cli(["--data", str(cohort), "--models", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert proc.returncode == 2 and "tumor" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_job_config_and_model_folders_are_validated(tmp_path):
    from tupac.errors import ConfigError, ModelError
    from tupac.infer.actors import model_dirs
    from tupac.infer.job import JobConfig
    from tupac.heatmaps.prepare import CardInfo

    for bad in ({"batch_size": 0}, {"max_attempts": 0}, {"actors": 0}, {"num_gpus_per_actor": -1.0},
                {"actor_concurrency": 3}):
        with pytest.raises(ConfigError):
            JobConfig(models=tmp_path, out=tmp_path / "run", **bad)
    models = make_models(tmp_path / "m", mitosis=False)
    found, skipped = model_dirs(models)
    assert set(found) == {"tumor"} and "mitosis" in skipped
    info = CardInfo.from_dir("tumor", found["tumor"])
    assert info.stain_method == "reinhard" and info.threshold == 0.5 and len(info.weights_sha256) == 64
    with pytest.raises(ModelError, match="expected a mitosis model"):
        CardInfo.from_dir("mitosis", found["tumor"])


def test_actor_plan_that_starves_slide_tasks_is_refused(local_ray, models, cohort, tmp_path):
    from tupac.errors import ConfigError
    from tupac.data.manifest import load_cohort
    from tupac.infer.job import JobConfig, run_job

    cfg = JobConfig(models=models, out=tmp_path / "run", actors=2, cpus_per_actor=1.0)
    with pytest.raises(ConfigError, match="need at least 1 CPU"):
        run_job(load_cohort(data=cohort)[:1], cfg, progress=_quiet)


def test_cuda_decoding_without_gpu_actors_is_refused(local_ray, models, cohort, tmp_path):
    from tupac.errors import ConfigError
    from tupac.data.manifest import load_cohort
    from tupac.infer.job import JobConfig, run_job

    cfg = JobConfig(models=models, out=tmp_path / "run", actors=1, decode_device="cuda")
    with pytest.raises(ConfigError, match="decode_device='cuda' needs GPU actors"):
        run_job(load_cohort(data=cohort)[:1], cfg, progress=_quiet)


def test_stain_lookup_table_path_gives_the_same_bytes(local_ray, models, cohort):
    """Large stages standardize through the slide's lookup table; the bytes equal the per-pixel path."""
    from tupac.heatmaps.engine import read_windows
    from tupac.infer.actors import ModelActor, use_stain_lut
    from tupac.heatmaps.windows import heatmap_geometry
    from tupac.preprocess import stain
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide

    assert not use_stain_lut(9, 1148) and use_stain_lut(13, 1148)  # 2**24 pixels is the break-even
    actor = ModelActor({"tumor": str(models / "tumor")}, threads=1)  # in-process: same code as the Ray actor
    reference = actor.trained["tumor"].reference
    with open_slide(slides_of(cohort)[0]) as reader:
        stats = stain.fit_slide(reader, slide_tissue_mask(reader, 8.0), method=reference.method)
        geom = heatmap_geometry(reader.dimensions, reader.mpp, actor.trained["tumor"].card, 16)
        window = read_windows(reader, geom, [(0, 0)])[0]
    direct = actor._preprocess("tumor", stats.to_dict(), lut=False)(window)
    table = actor._preprocess("tumor", stats.to_dict(), lut=True)(window)
    assert not np.array_equal(direct, window)  # the transform does change the pixels
    np.testing.assert_array_equal(table, direct)


class _Cells:
    """Stands in for the heatmap store: keeps what an actor writes."""

    def __init__(self):
        self.blocks = {}

    def write_tile(self, task, rc, block):
        self.blocks[(task, tuple(rc))] = np.array(block)


def test_actor_device_decode_path_writes_the_cpu_paths_cells(local_ray, models, cohort):
    """The actor's device path (DeviceWindows, the table on the device, the model on a tensor) run
    on the CPU gives the CPU path's cells exactly, table or not; the actor records its decision."""
    from tupac.heatmaps.device_windows import DeviceWindows
    from tupac.heatmaps.windows import heatmap_geometry
    from tupac.infer.actors import ModelActor, WindowBatch
    from tupac.preprocess import stain
    from tupac.preprocess.tissue import slide_tissue_mask
    from tupac.slide import open_slide

    actor = ModelActor({"tumor": str(models / "tumor")}, threads=1)
    assert actor.ready()["decode_device"] == "cpu" and "no GPU" in actor.ready()["decode_reason"]
    path = slides_of(cohort)[0]
    with open_slide(path, backend="cucim") as reader:
        stats = stain.fit_slide(reader, slide_tissue_mask(reader, 8.0), method="reinhard")
        geom = heatmap_geometry(reader.dimensions, reader.mpp, actor.trained["tumor"].card, 16)
    rows, cols = geom.grid
    windows = ((0, 0), (rows // 2, cols // 2), (rows - 1, cols - 1))
    out = {}
    for decode in ("cpu", "cuda"):
        for lut in (False, True):
            actor.decode_device = decode  # "cuda" routing, with the device code running on the CPU
            cells = _Cells()
            actor._store = lambda _path, cells=cells: cells
            batch = WindowBatch("tumor", "s", str(path), None, "unused", geom, stats.to_dict(), windows, "cucim", 0, lut)
            result = actor.run(batch)
            assert "error" not in result and result["windows"] == 3 and set(result["steps_s"]) >= {"decode_s", "model_s"}
            out[decode, lut] = cells.blocks
    reader = actor._reader(str(path), None, "cucim")
    assert isinstance(ModelActor._source(actor, reader, geom), DeviceWindows)  # (decode_device is "cuda" now)
    for key, blocks in out.items():
        assert blocks.keys() == out["cpu", False].keys()
        for k in blocks:
            np.testing.assert_array_equal(blocks[k], out["cpu", False][k], err_msg=str((key, k)))


@pytest.mark.slow
def test_retrained_models_recompute_and_keep_the_old_outputs(local_ray, models, cohort, tmp_path):
    """New weights for a RUN that is done: every slide is recomputed, and the old committed outputs move
    to RUN/superseded/ instead of failing the slide ("already committed") or being overwritten."""
    from safetensors.torch import load_file, save_file

    from tupac.data.manifest import load_cohort
    from tupac.heatmaps import read_commit
    from tupac.infer.job import run_job

    entries = load_cohort(data=cohort)[:1]
    sid = entries[0].slide_id
    run = tmp_path / "run"
    first = run_job(entries, _cfg(models, run), progress=_quiet)
    assert first["ok"]
    old_commit = (run / "slides" / f"{sid}.zarr" / "commit.json").read_bytes()

    retrained = tmp_path / "retrained"
    shutil.copytree(models, retrained)
    weights = load_file(retrained / "tumor" / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, retrained / "tumor" / "model.safetensors")
    second = run_job(entries, _cfg(retrained, run), progress=_quiet)
    assert second["ok"] and second["done"] == [sid] and len(second["superseded"]) == 1

    kept = list((run / "superseded").glob(f"*/{sid}.zarr"))
    assert len(kept) == 1 and (kept[0] / "commit.json").read_bytes() == old_commit
    assert (kept[0].parent / f"{sid}.mitoses.csv").is_file()
    new = read_commit(run / "slides" / f"{sid}.zarr")
    assert new.models != json.loads(old_commit)["models"]


def test_changed_output_options_recompute_and_same_options_skip(local_ray, models, cohort, tmp_path):
    """A rerun with another tissue dilation must not adopt the slides done with the old mask: they are
    recomputed and the old outputs superseded; the same options again skip them."""
    from tupac.data.manifest import load_cohort
    from tupac.heatmaps import read_commit
    from tupac.heatmaps.store import HeatmapStore
    from tupac.infer.job import run_job

    entries = load_cohort(data=cohort)[:1]
    sid = entries[0].slide_id
    run = tmp_path / "run"
    first = run_job(entries, _cfg(models, run), progress=_quiet)
    assert first["ok"] and read_commit(run / "slides" / f"{sid}.zarr").extra["job_params"] == {
        "tumor_chunk": 16, "mitosis_chunk": 32}
    tissue_before = HeatmapStore.open(run / "slides" / f"{sid}.zarr", mode="r").read("tissue")

    dilated = _cfg(models, run, tissue_dilation_um=64.0)
    second = run_job(entries, dilated, progress=_quiet)
    assert second["ok"] and second["done"] == [sid] and second["skipped"] == [] and len(second["superseded"]) == 1
    rec = read_commit(run / "slides" / f"{sid}.zarr")
    assert rec.extra["job_params"]["tissue_dilation_um"] == 64.0
    tissue_after = HeatmapStore.open(run / "slides" / f"{sid}.zarr", mode="r").read("tissue")
    assert tissue_after.sum() > tissue_before.sum()  # the new mask, not the adopted old one

    third = run_job(entries, dilated, progress=_quiet)
    assert third["skipped"] == [sid] and not third["superseded"]


def test_a_new_threshold_on_the_same_weights_recomputes(local_ray, models, cohort, tmp_path):
    """Another threshold rule can leave the weights as they were and change only the card: the slides
    detected at the old threshold are not adopted as done."""
    from tupac.data.manifest import load_cohort
    from tupac.heatmaps import read_commit
    from tupac.infer.job import run_job

    entries = load_cohort(data=cohort)[:1]
    sid = entries[0].slide_id
    run = tmp_path / "run"
    assert run_job(entries, _cfg(models, run), progress=_quiet)["ok"]
    old = read_commit(run / "slides" / f"{sid}.zarr").extra["model_params"]["mitosis"]["threshold"]

    moved = tmp_path / "models"
    shutil.copytree(models, moved)
    card = json.loads((moved / "mitosis" / "card.json").read_text())
    card["detection_threshold"] = round(old / 2, 6)
    (moved / "mitosis" / "card.json").write_text(json.dumps(card))
    again = run_job(entries, _cfg(moved, run), progress=_quiet)
    assert again["done"] == [sid] and again["skipped"] == [] and len(again["superseded"]) == 1
    assert read_commit(run / "slides" / f"{sid}.zarr").extra["model_params"]["mitosis"]["threshold"] == round(old / 2, 6)


# -- the actor plan (pure: resources in, plan out) ----------------------------------------------
def _plan(resources, n_slides=3, autoscaler=False, **kw):
    from tupac.infer.job import JobConfig, plan_actors

    return plan_actors(JobConfig(models=Path("m"), out=Path("r"), **kw), resources, n_slides, autoscaler)


def test_plan_on_a_fixed_cluster_follows_what_is_up():
    # The local default: 2 CPUs -> one CPU actor with 2 torch threads (what the digests of the other tests rely on).
    p = _plan({"CPU": 2.0})
    assert (p.n, p.gpus, p.cpus, p.threads, p.waits, p.elastic, p.notes) == (1, 0.0, 1.0, 2, False, False, ())
    assert _plan({"CPU": 8.0}, n_slides=50).n == 4  # CPUs / 2, whatever the cohort
    p = _plan({"CPU": 3.0, "GPU": 2.0}, n_slides=50)  # the multi-node test's cluster: one actor per GPU
    assert (p.n, p.gpus, p.threads, p.waits) == (2, 1.0, 1, False)
    assert _plan({"CPU": 9.0, "GPU": 2.0}, num_gpus_per_actor=0.5).n == 4


def test_plan_on_an_empty_cluster_asks_for_gpu_actors_from_the_options_and_the_cohort():
    # A CPU-0 head with GPU workers at min_workers: 0: nothing is up that can hold an actor.
    head = {"memory": 1e10, "object_store_memory": 1e8}
    for autoscaler in (True, False):
        p = _plan(head, n_slides=3, autoscaler=autoscaler)
        assert (p.n, p.gpus, p.cpus, p.waits, p.elastic) == (3, 1.0, 1.0, True, True)
        assert any("--num-gpus-per-actor 0" in note for note in p.notes)
    assert _plan(head, n_slides=100, autoscaler=True).n == 8  # --max-actors' default caps the ask
    assert _plan(head, n_slides=100, autoscaler=True, max_actors=2).n == 2
    # Before issue 19 these raised "reserve all 1 CPUs of the cluster".
    p = _plan(head, n_slides=3, num_gpus_per_actor=1.0, actors=4)
    assert (p.n, p.gpus, p.waits, p.notes) == (4, 1.0, True, ())
    p = _plan(head, n_slides=1, actors=4, autoscaler=True)
    assert (p.n, p.gpus, p.waits) == (4, 1.0, True)
    assert p.describe() == "4 model actor(s) (1 GPU, 1 CPU each)"


def test_plan_on_an_autoscaling_cluster_asks_for_more_than_is_up():
    # One GPU worker up of an autoscaling group: the cohort, not the one node, sizes the ask.
    p = _plan({"CPU": 2.0, "GPU": 1.0}, n_slides=5, autoscaler=True)
    assert (p.n, p.gpus, p.waits, p.elastic) == (5, 1.0, False, True)
    assert any("--actors" in note for note in p.notes)
    assert _plan({"CPU": 64.0, "GPU": 16.0}, n_slides=5, autoscaler=True).n == 16  # never fewer than fit
    # A CPU head and no GPU up: CPU actors, and the user is told how to ask for GPU nodes.
    p = _plan({"CPU": 4.0}, n_slides=5, autoscaler=True)
    assert (p.n, p.gpus, p.threads) == (5, 0.0, 1)
    assert any("--num-gpus-per-actor 1" in note for note in p.notes)


def test_plan_still_refuses_what_can_never_run():
    from tupac.errors import ConfigError

    with pytest.raises(ConfigError, match=r"2 actor\(s\) x 1 CPU reserve all 2 CPUs"):
        _plan({"CPU": 2.0}, actors=2)
    with pytest.raises(ConfigError, match="decode_device='cuda' needs GPU actors"):
        _plan({"CPU": 2.0}, decode_device="cuda")
    with pytest.raises(ConfigError, match="max_actors must be >= 1"):
        _plan({"CPU": 2.0}, max_actors=0)
    _plan({"CPU": 2.0}, actors=2, autoscaler=True)  # an autoscaler brings the tasks' CPUs with new nodes


def test_model_actors_are_restarted_without_limit_and_ask_for_the_planned_resources():
    """A node that leaves takes its actors along; Ray must restart them wherever nodes are (or join)."""
    from tupac.infer.job import ActorPlan, JobConfig, _Driver

    driver = _Driver.__new__(_Driver)  # the options alone: no Ray needed
    driver.cfg = JobConfig(models=Path("m"), out=Path("r"), actor_concurrency=1)
    driver.plan = ActorPlan(2, 0.5, 1.5, 1)
    assert driver.actor_options() == {"num_gpus": 0.5, "num_cpus": 1.5, "max_restarts": -1, "max_task_retries": 0,
                                      "max_concurrency": 1}
