"""Heatmap stores and commit records: what is written reads back, viewers see NGFF images in µm,
nothing committed is silently lost, and several processes fill one store chunk by chunk."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from tupac.errors import ConfigError, HeatmapStoreError, StoreExistsError
from tupac.heatmaps.commit import (
    COMMIT_FILE,
    CommitRecord,
    InputFingerprint,
    atomic_write_bytes,
    code_version,
    file_sha256,
    input_fingerprint,
    is_committed,
    models_fingerprint,
    read_commit,
)
from tupac.heatmaps.store import ArraySpec, HeatmapStore, store_path

SPECS = {
    "tissue": ArraySpec((25, 35), (8, 8), "uint8", 16.0),
    "tumor": ArraySpec((100, 140), (32, 32), "float32", 1.0, levels=3),
    "mitosis": ArraySpec((90, 130), (40, 40), "float32", 0.25, fill_value=0.0),
}


def _fill(store: HeatmapStore, name: str, full: np.ndarray) -> None:
    gr, gc = store.spec(name).grid()
    for r in range(gr):
        for c in range(gc):
            ys, xs = store.chunk_bounds(name, (r, c))
            store.write_tile(name, (r, c), full[ys, xs])


@pytest.fixture
def slide_file(tmp_path: Path) -> Path:
    p = tmp_path / "in" / "S1.svs"
    p.parent.mkdir()
    p.write_bytes(np.random.default_rng(3).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    return p


def test_round_trip_every_array_and_chunk_files(tmp_path: Path) -> None:
    path = store_path(tmp_path / "RUN", "S1")
    assert path == tmp_path / "RUN" / "slides" / "S1.zarr"
    store = HeatmapStore.create(path, "S1", SPECS)
    rng = np.random.default_rng(0)
    tumor = rng.random((100, 140), dtype=np.float32)
    tissue = (rng.random((25, 35)) > 0.5).astype(bool)  # bool blocks go into a uint8 array
    mitosis = rng.random((90, 130))  # float64 blocks are stored as float32
    _fill(store, "tumor", tumor)
    _fill(store, "tissue", tissue)
    _fill(store, "mitosis", mitosis)

    again = HeatmapStore.open(path, mode="r")
    assert again.slide_id == "S1" and again.names == ("tissue", "tumor", "mitosis")
    np.testing.assert_array_equal(again.read("tumor"), tumor)
    np.testing.assert_array_equal(again.read("tissue"), tissue.astype(np.uint8))
    np.testing.assert_array_equal(again.read("mitosis"), mitosis.astype(np.float32))
    assert again.read("tumor").dtype == np.float32 and again.read("tissue").dtype == np.uint8
    assert [again.mpp(n) for n in again.names] == [16.0, 1.0, 0.25]
    assert again.mpp("tumor", level=2) == 4.0
    lazy = again.as_dask("mitosis")
    assert lazy.chunksize == (40, 40)
    np.testing.assert_array_equal(lazy[40:80, 80:120].compute(), mitosis[40:80, 80:120].astype(np.float32))
    # chunked on the tile grid: one chunk file per tile, under <name>/0/
    arr = zarr.open_array(str(path / "mitosis" / "0"), mode="r")
    assert arr.chunks == (40, 40) and arr.metadata.dimension_names == ("y", "x")
    assert len([p for p in (path / "mitosis" / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]) == 3 * 4


def test_unwritten_chunks_read_as_fill_value(tmp_path: Path) -> None:
    specs = {"tumor": ArraySpec((64, 64), (32, 32), "float32", 1.0, fill_value=-1.0)}
    store = HeatmapStore.create(tmp_path / "a.zarr", "a", specs)
    store.write_tile("tumor", (1, 0), np.full((32, 32), 0.5, np.float32))
    out = store.read("tumor")
    assert (out[32:, :32] == 0.5).all() and (out[:32] == -1).all() and (out[32:, 32:] == -1).all()


def test_ngff_metadata_in_the_zarr_json(tmp_path: Path) -> None:
    spec = ArraySpec((64, 80), (32, 32), "float32", 0.5, levels=2, offset_um=(10.0, 20.0))
    HeatmapStore.create(tmp_path / "s.zarr", "s", {"tumor": spec})
    meta = json.loads((tmp_path / "s.zarr" / "tumor" / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert ms["axes"] == [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    d0, d1 = ms["datasets"]
    assert d0 == {"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [0.5, 0.5]}, {"type": "translation", "translation": [10.0, 20.0]}]}
    # level 1 pixel centres sit between the two level-0 pixels they average
    assert d1["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0]}, {"type": "translation", "translation": [10.25, 20.25]}]
    assert zarr.open_array(str(tmp_path / "s.zarr" / "tumor" / "1"), mode="r").shape == (32, 40)


def test_ome_zarr_reader_opens_each_heatmap(tmp_path: Path) -> None:
    ome_io = pytest.importorskip("ome_zarr.io")
    ome_reader = pytest.importorskip("ome_zarr.reader")
    path = tmp_path / "S.zarr"
    store = HeatmapStore.create(path, "S", SPECS)
    tumor = np.random.default_rng(1).random((100, 140), dtype=np.float32)
    _fill(store, "tumor", tumor)
    store.build_pyramid("tumor")
    for name, spec in SPECS.items():
        nodes = list(ome_reader.Reader(ome_io.parse_url(str(path / name)))())
        assert nodes, f"ome-zarr found no image in {name}"
        meta = nodes[0].metadata
        assert [a["name"] for a in meta["axes"]] == ["y", "x"]
        assert {a["unit"] for a in meta["axes"]} == {"micrometer"}
        scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
        assert scales == [[spec.mpp * 2**k] * 2 for k in range(spec.levels)]
        assert [tuple(d.shape) for d in nodes[0].data] == [spec.level_shape(k) for k in range(spec.levels)]
    nodes = list(ome_reader.Reader(ome_io.parse_url(str(path / "tumor")))())
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), tumor)


def test_pyramid_levels_are_block_means_and_maxima(tmp_path: Path) -> None:
    specs = {
        "tumor": ArraySpec((20, 30), (8, 8), "float32", 1.0, levels=3),
        "tissue": ArraySpec((21, 31), (8, 8), "uint8", 1.0, levels=2),
    }
    store = HeatmapStore.create(tmp_path / "p.zarr", "p", specs)
    rng = np.random.default_rng(2)
    tumor = rng.random((20, 30), dtype=np.float32)
    tissue = (rng.random((21, 31)) > 0.8).astype(np.uint8)
    _fill(store, "tumor", tumor)
    _fill(store, "tissue", tissue)
    store.build_pyramid("tumor")
    store.build_pyramid("tissue")
    l1 = tumor.reshape(10, 2, 15, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(store.read("tumor", 1), l1, rtol=1e-6)
    np.testing.assert_allclose(store.read("tumor", 2), l1[:10, :14].reshape(5, 2, 7, 2).mean(axis=(1, 3)), rtol=1e-6)
    np.testing.assert_array_equal(store.read("tissue", 1), tissue[:20, :30].reshape(10, 2, 15, 2).max(axis=(1, 3)))


def test_write_tile_rejects_misaligned_or_wrong_blocks(tmp_path: Path) -> None:
    store = HeatmapStore.create(tmp_path / "w.zarr", "w", SPECS)
    with pytest.raises(HeatmapStoreError, match=r"needs a block of shape \(32, 32\)"):
        store.write_tile("tumor", (0, 0), np.zeros((16, 32), np.float32))
    with pytest.raises(HeatmapStoreError, match=r"needs a block of shape \(4, 12\)"):
        store.write_tile("tumor", (3, 4), np.zeros((32, 32), np.float32))  # bottom-right edge tile is 4 x 12
    with pytest.raises(HeatmapStoreError, match="outside the 4 x 5 tile grid"):
        store.write_tile("tumor", (4, 0), np.zeros((32, 32), np.float32))
    with pytest.raises(HeatmapStoreError, match="cannot store float64 values in a uint8"):
        store.write_tile("tissue", (0, 0), np.zeros((8, 8)))
    with pytest.raises(HeatmapStoreError, match="no heatmap 'stroma'"):
        store.write_tile("stroma", (0, 0), np.zeros((8, 8)))
    assert (store.read("tumor") == 0).all()  # nothing was written by the refused calls


def test_specs_and_ids_are_validated() -> None:
    with pytest.raises(ConfigError, match="mpp"):
        ArraySpec((10, 10), (5, 5), "float32", 0.0)
    with pytest.raises(ConfigError, match="dtype"):
        ArraySpec((10, 10), (5, 5), "complex64", 1.0)
    with pytest.raises(ConfigError, match="levels"):
        ArraySpec((10, 10), (5, 5), "float32", 1.0, levels=5)
    with pytest.raises(ValueError, match="plain name"):
        store_path("/run", "../evil")


def test_create_refuses_to_drop_committed_or_foreign_data(tmp_path: Path, slide_file: Path) -> None:
    path = tmp_path / "RUN" / "slides" / "S1.zarr"
    store = HeatmapStore.create(path, "S1", SPECS)
    _fill(store, "tumor", np.ones((100, 140), np.float32))
    store.commit(slide_file, input_fingerprint(slide_file), {"tumor": "abc"})
    with pytest.raises(StoreExistsError, match="committed heatmap store"):
        HeatmapStore.create(path, "S1", SPECS)
    assert (HeatmapStore.open(path).read("tumor") == 1).all() and is_committed(path)
    fresh = HeatmapStore.create(path, "S1", SPECS, overwrite=True)
    assert not fresh.committed and (fresh.read("tumor") == 0).all()

    foreign = tmp_path / "mine.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(HeatmapStoreError, match="not a tupac heatmap store; refusing"):
        HeatmapStore.create(foreign, "mine", SPECS)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_uncommitted_attempt_is_replaced_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "S2.zarr"
    first = HeatmapStore.create(path, "S2", SPECS)
    first.write_tile("tumor", (0, 0), np.ones((32, 32), np.float32))  # a crashed attempt
    second = HeatmapStore.create(path, "S2", SPECS)
    assert (second.read("tumor") == 0).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_commit_record_contents_and_read_only_after(tmp_path: Path, slide_file: Path) -> None:
    path = tmp_path / "S1.zarr"
    store = HeatmapStore.create(path, "S1", SPECS)
    _fill(store, "tumor", np.full((100, 140), 0.25, np.float32))
    assert not is_committed(path)
    with pytest.raises(HeatmapStoreError, match="not committed"):
        read_commit(path)
    dets = tmp_path / "S1.mitoses.csv"
    dets.write_text("x,y,prob\n10,20,0.9\n")
    fp = input_fingerprint(slide_file)
    store.commit(slide_file, fp, {"locnet": "h1", "mitosnet": "h2"}, timings_s={"tumor": 1.5}, outputs={"mitoses.csv": dets})
    rec = read_commit(store)
    assert rec.slide_id == "S1" and rec.input == fp and rec.input_path == str(slide_file)
    assert rec.input.size == slide_file.stat().st_size == 300_000
    import hashlib

    assert rec.input.sha256 == hashlib.sha256(slide_file.read_bytes()).hexdigest()
    assert rec.models == {"locnet": "h1", "mitosnet": "h2"} and rec.models_fp == models_fingerprint({"mitosnet": "h2", "locnet": "h1"})
    assert rec.timings_s == {"tumor": 1.5}
    assert rec.outputs["mitoses.csv"]["sha256"] == hashlib.sha256(dets.read_bytes()).hexdigest()
    assert rec.arrays["tumor"]["mpp"] == 1.0 and rec.arrays["tumor"]["chunks"] == [32, 32]
    assert rec.code["tupac"] == code_version()["tupac"]
    on_disk = json.loads((path / COMMIT_FILE).read_text())
    assert on_disk["input"] == {"size": 300_000, "sha256": fp.sha256}
    with pytest.raises(HeatmapStoreError, match="read-only"):
        store.write_tile("tumor", (0, 0), np.zeros((32, 32), np.float32))
    assert (HeatmapStore.open(path).read("tumor") == 0.25).all()


def test_commit_removes_chunk_writes_orphaned_by_a_killed_writer(tmp_path: Path, slide_file: Path) -> None:
    path = tmp_path / "S1.zarr"
    store = HeatmapStore.create(path, "S1", SPECS)
    _fill(store, "tumor", np.full((100, 140), 0.5, np.float32))
    chunk = path / "tumor" / "0" / "c" / "0" / "1"
    assert chunk.is_file()
    # What zarr's LocalStore leaves when its process is killed between the temp write and the rename.
    orphan = chunk.with_suffix(".9634e4a3d896489fb35d1985b0581055.partial")
    orphan.write_bytes(b"")
    lookalike = chunk.parent / "notes.partial"  # not zarr's temp-file form: left alone
    lookalike.write_text("keep")
    store.commit(slide_file, input_fingerprint(slide_file), {"locnet": "h1"})
    assert not orphan.exists() and lookalike.read_text() == "keep"
    assert (HeatmapStore.open(path, mode="r").read("tumor") == 0.5).all()


def test_a_store_with_a_missing_chunk_is_never_committed(tmp_path: Path, slide_file: Path) -> None:
    """What a second job on the same folder did: it cleared the store mid-slide, and the first job
    went on writing its later windows into the fresh one."""
    path = tmp_path / "S1.zarr"
    store = HeatmapStore.create(path, "S1", SPECS)
    planned = [(r, c) for r in range(4) for c in range(5)]  # the tumor grid is 4 x 5 chunks
    for rc in planned:
        ys, xs = store.chunk_bounds("tumor", rc)
        # all-zero windows (no tumor) are still written: a missing file must mean a lost write
        store.write_tile("tumor", rc, np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.float32))
    assert set(store.chunk_files("tumor")) == set(planned)
    (path / "tumor" / "0" / "c" / "1" / "2").unlink()
    with pytest.raises(HeatmapStoreError, match=r"refusing to commit: tumor lacks 1 of the 20 chunks .*\(1, 2\)"):
        store.commit(slide_file, input_fingerprint(slide_file), {"locnet": "h1"}, expected_chunks={"tumor": planned})
    assert not is_committed(path) and not (path / COMMIT_FILE).exists()
    store.write_tile("tumor", (1, 2), np.zeros((32, 32), np.float32))  # the window recomputed
    rec = store.commit(slide_file, input_fingerprint(slide_file), {"locnet": "h1"}, expected_chunks={"tumor": planned})
    assert rec.chunks["tumor/0"]["count"] == 20 and rec.chunks["tissue/0"]["count"] == 0


def test_a_committed_store_whose_chunks_changed_is_not_trusted(tmp_path: Path, slide_file: Path) -> None:
    from tupac.heatmaps.store import detections_path, verify_committed

    path = tmp_path / "RUN" / "slides" / "S1.zarr"
    store = HeatmapStore.create(path, "S1", SPECS)
    _fill(store, "tumor", np.full((100, 140), 0.5, np.float32))
    _fill(store, "tissue", np.ones((25, 35), np.uint8))
    dets = detections_path(path)
    dets.write_text("x,y,prob\n10,20,0.9\n")
    store.commit(slide_file, input_fingerprint(slide_file), {"locnet": "h1"}, outputs={"mitoses.csv": dets})
    assert verify_committed(path) is None
    dets.write_text("x,y,prob\n")
    assert "mitoses.csv changed since S1.zarr was committed" in verify_committed(path)
    dets.write_text("x,y,prob\n10,20,0.9\n")
    assert verify_committed(path) is None
    (path / "tumor" / "0" / "c" / "0" / "0").unlink()
    assert "tumor/0 holds 19 chunk file(s), the commit record 20" in verify_committed(path)


def test_streamed_hash_matches_hashlib_for_odd_block_sizes(slide_file: Path) -> None:
    import hashlib

    want = hashlib.sha256(slide_file.read_bytes()).hexdigest()
    for block in (1000, 4096, 1 << 20):
        assert file_sha256(slide_file, block=block) == InputFingerprint(300_000, want)
    assert input_fingerprint(slide_file).key == f"sha256:{want}:300000"


def test_corrupt_or_foreign_commit_is_not_committed(tmp_path: Path) -> None:
    path = tmp_path / "S.zarr"
    HeatmapStore.create(path, "S", SPECS)
    (path / COMMIT_FILE).write_text('{"record_version": 1, "slide_id": "S"')  # torn by hand
    assert not is_committed(path)
    with pytest.raises(HeatmapStoreError, match="invalid commit record"):
        read_commit(path)


def _atomic_writer(path: str, n: int) -> None:
    for i in range(n):
        atomic_write_bytes(path, json.dumps({"i": i, "pad": "x" * 200_000}).encode())


def test_atomic_write_survives_kill_mid_loop(tmp_path: Path) -> None:
    target = tmp_path / "commit.json"
    atomic_write_bytes(target, json.dumps({"i": -1}).encode())
    proc = mp.get_context("fork").Process(target=_atomic_writer, args=(str(target), 10_000))
    proc.start()
    seen = set()
    while len(seen) < 5 and proc.is_alive():  # readers only ever see whole records
        seen.add(json.loads(target.read_bytes())["i"])
    os.kill(proc.pid, 9)
    proc.join()
    assert json.loads(target.read_bytes())["i"] >= 0
    assert len(seen) >= 2


def _fill_rows(path: str, name: str, rows: list[int]) -> None:
    store = HeatmapStore.open(path)
    spec = store.spec(name)
    for r in rows:
        for c in range(spec.grid()[1]):
            ys, xs = store.chunk_bounds(name, (r, c))
            yy, xx = np.mgrid[ys, xs]
            store.write_tile(name, (r, c), (yy * 1000 + xx).astype(np.float32))


def test_several_processes_fill_one_store(tmp_path: Path) -> None:
    path = tmp_path / "P.zarr"
    HeatmapStore.create(path, "P", {"tumor": ArraySpec((96, 80), (16, 16), "float32", 1.0)})
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fill_rows, args=(str(path), "tumor", list(range(k, 6, 3)))) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    yy, xx = np.mgrid[:96, :80]
    np.testing.assert_array_equal(HeatmapStore.open(path).read("tumor"), (yy * 1000 + xx).astype(np.float32))


def test_open_reports_missing_and_foreign(tmp_path: Path) -> None:
    with pytest.raises(HeatmapStoreError, match="no heatmap store here"):
        HeatmapStore.open(tmp_path / "nope.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    with pytest.raises(HeatmapStoreError, match="not a tupac heatmap store"):
        HeatmapStore.open(tmp_path / "plain.zarr")
    assert isinstance(HeatmapStoreError("x", "y"), OSError)


def test_commit_record_dict_round_trip() -> None:
    rec = CommitRecord("S", "/a.svs", InputFingerprint(3, "ab"), {"m": "h"}, timings_s={"t": 1.0})
    assert CommitRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_store_pickles_as_its_path(tmp_path: Path) -> None:
    import pickle

    store = HeatmapStore.create(tmp_path / "K.zarr", "K", SPECS)
    store.write_tile("tissue", (0, 0), np.ones((8, 8), np.uint8))
    clone = pickle.loads(pickle.dumps(store))  # what a Ray task argument goes through
    assert clone.path == store.path and clone is not store
    clone.write_tile("tissue", (0, 1), np.full((8, 8), 2, np.uint8))
    out = store.read("tissue")
    assert (out[:8, :8] == 1).all() and (out[:8, 8:16] == 2).all()
