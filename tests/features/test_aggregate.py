"""Dask aggregation over a Zarr v3 heatmap store: cohort table, dictionary, graph size, schedulers."""

from __future__ import annotations

import math

import dask
import numpy as np
import pandas as pd
import pytest
import zarr
from feature_stores import write_heatmaps
from features_drawing import disk, he_patch

from tupac.errors import FeatureError, FeatureFileError
from tupac.features import feature_dictionary
from tupac.features.aggregate import SlideInput, cohort_features, open_heatmaps, slide_features
from tupac.features.deep_hist import fit_deep_histogram
from tupac.features.mitosis_arch import heatmap_features, heatmap_moments
from tupac.features.tumor import resample_nearest

SLIDE_MPP = 0.25
TUMOR_MPP, TISSUE_MPP, MIT_MPP = 16.0, 64.0, 4.0
RADIUS_PX = 60  # tumor disk radius at 16 µm/px: 0.96 mm


def write_store(path, *, tumor_on=True, chunks=64, seed=0, offsets=None):
    """A 3.2 x 4.8 mm slide: tumor disk, tissue rectangle, random mitosis heatmap, as a HeatmapStore."""
    tumor = np.zeros((200, 300), np.float32)
    if tumor_on:
        tumor[disk(tumor.shape, (100, 150), RADIUS_PX)] = 0.9
    tissue = np.zeros((50, 75), bool)
    tissue[5:45, 5:70] = True
    mit = np.random.default_rng(seed).random((800, 1200)).astype(np.float32)
    off = offsets or {}
    write_heatmaps(path, "s", {
        "tumor": (tumor, TUMOR_MPP, off.get("tumor"), chunks),
        "tissue": (tissue, TISSUE_MPP, off.get("tissue"), 32),
        "mitosis": (mit, MIT_MPP, off.get("mitosis"), 4 * chunks),
    })
    return path


def detections(n, seed=1):
    rng = np.random.default_rng(seed)
    centre = np.array([150.5, 100.5]) * TUMOR_MPP / SLIDE_MPP
    r = 1.3 * RADIUS_PX * TUMOR_MPP / SLIDE_MPP * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(0, 2 * np.pi, n)
    xy = centre + np.c_[r * np.cos(a), r * np.sin(a)]
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "prob": rng.uniform(0.5, 1, n)})


def test_features_from_a_store_agree_with_the_drawing(tmp_path):
    hm = open_heatmaps(write_store(tmp_path / "s.zarr"))
    assert (hm.tumor_mpp, hm.tissue_mpp, hm.mitosis_mpp) == (TUMOR_MPP, TISSUE_MPP, MIT_MPP)
    det = detections(60)
    r = slide_features(hm, det, SLIDE_MPP, n_patches=10)
    f = r.features
    assert f["tumor_area_mm2"] == pytest.approx(math.pi * (RADIUS_PX * TUMOR_MPP / 1000) ** 2, rel=0.02)
    assert f["tissue_area_mm2"] == pytest.approx(40 * 65 * (TISSUE_MPP / 1000) ** 2)
    inside = np.hypot(det.x * SLIDE_MPP / TUMOR_MPP - 150.5, det.y * SLIDE_MPP / TUMOR_MPP - 100.5) <= RADIUS_PX - 1
    assert f["arch_n_mitoses"] == 60
    assert f["arch_n_in_tumor"] >= inside.sum() and f["arch_n_in_tumor"] < 60
    # Heatmap statistics computed chunk by chunk equal the in-memory computation.
    tumor_np = np.zeros((200, 300), bool)
    tumor_np[disk((200, 300), (100, 150), RADIUS_PX)] = True
    mit = np.asarray(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["mitosis/0"][:])
    mask = resample_nearest(tumor_np, TUMOR_MPP, MIT_MPP, mit.shape)
    expected = heatmap_features(heatmap_moments(mit, mask))
    for k, v in expected.items():
        assert f[k] == pytest.approx(v, rel=1e-9)
    assert r.fringe_origins_l0.shape == (10, 2) and f["fringe_n_patches"] == 10
    assert r.groups == ("tumor", "fringe", "mitosis_arch")
    # The same detections as an (n, 3) array give the same features.
    assert slide_features(hm, det[["x", "y", "prob"]].to_numpy(), SLIDE_MPP, n_patches=10).features == f
    with pytest.raises(FeatureError, match="detections"):
        slide_features(hm, np.zeros((3, 4)), SLIDE_MPP)


def test_cohort_table_is_finite_documented_and_writes_to_parquet(tmp_path):
    full = write_store(tmp_path / "a.zarr")
    empty = write_store(tmp_path / "b.zarr", tumor_on=False)
    res = cohort_features([
        SlideInput("a", full, detections(40), SLIDE_MPP),
        SlideInput("b", empty, detections(0), SLIDE_MPP),  # no tumor, no mitoses
        SlideInput("c", full, None, SLIDE_MPP),
    ])
    t = res.table
    assert t["slide_id"].tolist() == ["a", "b", "c"]
    assert np.isfinite(t.drop(columns="slide_id").to_numpy()).all()
    assert set(t.columns[1:]) == set(res.dictionary["name"]) and len(t.columns) - 1 == len(res.dictionary)
    assert set(res.dictionary["name"]) <= set(feature_dictionary()["name"])
    b = t.set_index("slide_id").loc["b"]
    assert b["tumor_missing"] == 1 and b["arch_tumor_missing"] == 1 and b["arch_nn_missing"] == 1
    assert b["tumor_area_mm2"] == 0 and b["arch_n_mitoses"] == 0 and b["fringe_n_patches"] == 0
    assert t.set_index("slide_id").loc["c", "arch_n_mitoses"] == 0
    t.to_parquet(tmp_path / "features.parquet")
    back = pd.read_parquet(tmp_path / "features.parquet")
    pd.testing.assert_frame_equal(back, t)


def test_graph_size_follows_chunks_not_detections(tmp_path):
    coarse = open_heatmaps(write_store(tmp_path / "c.zarr", chunks=64))
    fine = open_heatmaps(write_store(tmp_path / "f.zarr", chunks=32))
    n_few = slide_features(coarse, detections(5), SLIDE_MPP, n_patches=2).n_tasks
    n_many = slide_features(coarse, detections(2000), SLIDE_MPP, n_patches=2).n_tasks
    n_fine = slide_features(fine, detections(5), SLIDE_MPP, n_patches=2).n_tasks
    assert n_few == n_many
    chunks_coarse = coarse.tumor.npartitions + coarse.tissue.npartitions + coarse.mitosis.npartitions
    chunks_fine = fine.tumor.npartitions + fine.tissue.npartitions + fine.mitosis.npartitions
    assert n_fine > n_few
    for n, c in ((n_few, chunks_coarse), (n_fine, chunks_fine)):
        assert c < n <= 4 * c + 20


def test_custom_scheduler_is_used_and_gives_the_same_features(tmp_path):
    hm = open_heatmaps(write_store(tmp_path / "s.zarr"))
    calls = []

    def get(dsk, keys, **kwargs):  # what ray.util.dask.ray_dask_get looks like to dask
        calls.append(keys)
        return dask.get(dsk, keys, **kwargs)

    det = detections(30)
    a = slide_features(hm, det, SLIDE_MPP, n_patches=3, scheduler=get).features
    b = slide_features(hm, det, SLIDE_MPP, n_patches=3).features
    assert len(calls) == 2
    assert a == pytest.approx(b)


def test_large_heatmaps_are_block_averaged_and_keep_the_area(tmp_path):
    hm = open_heatmaps(write_store(tmp_path / "s.zarr"))
    small = slide_features(hm, detections(30), SLIDE_MPP, max_pixels=3000, n_patches=2).features
    full = slide_features(hm, detections(30), SLIDE_MPP, n_patches=2).features
    assert small["tumor_area_mm2"] == pytest.approx(full["tumor_area_mm2"], rel=0.05)
    assert small["arch_n_mitoses"] == 30


def _renderer(det):
    """read_patch for a synthetic slide: pink tissue with a purple figure at every detection."""
    xy = det[["x", "y"]].to_numpy()

    def read_patch(origin):
        local = (xy - origin)  # level 0 is 0.25 µm/px: patch pixels are level-0 pixels
        keep = np.all((local >= 0) & (local < 1000), axis=1)
        return he_patch(1000, [(x, y, 20, 14, 0.0) for x, y in local[keep]])

    return read_patch


def test_biological_and_deep_groups_and_new_slide_independence(tmp_path, rng):
    store = write_store(tmp_path / "s.zarr")
    det_a, det_b = detections(150, seed=2), detections(80, seed=3)
    train = {"t1": rng.normal(0, 1, (40, 8)), "t2": rng.normal(0, 1, (40, 8))}
    fit = fit_deep_histogram(train, n_clusters=5)
    vec_a, vec_b = rng.normal(0, 1, (150, 8)), rng.normal(0, 1, (80, 8))
    a = SlideInput("a", store, det_a, SLIDE_MPP, read_patch=_renderer(det_a), deep_vectors=vec_a)
    b = SlideInput("b", store, det_b, SLIDE_MPP, read_patch=_renderer(det_b), deep_vectors=vec_b)
    z = SlideInput("z", write_store(tmp_path / "z.zarr", tumor_on=False), None, SLIDE_MPP,
                   read_patch=_renderer(det_b.iloc[:0]))
    one = cohort_features([a], deep_fit=fit, n_patches=2).table
    many = cohort_features([b, a, z], deep_fit=fit, n_patches=2)
    row = many.table.set_index("slide_id").loc["a"]
    pd.testing.assert_series_equal(one.set_index("slide_id").loc["a"], row, check_names=False)
    assert np.isfinite(many.table.drop(columns="slide_id").to_numpy()).all()
    assert set(many.table.columns[1:]) == set(many.dictionary["name"])
    # Every detection inside a fringe patch is counted and segmented.
    origins = many.fringe_origins_l0["a"]
    xy = det_a[["x", "y"]].to_numpy()
    in_patches = sum(int(np.all((xy >= o) & (xy < o + 1000), axis=1).sum()) for o in origins)
    assert row["bio_slide_n_mitoses"] == in_patches
    assert row["bio_slide_n_patches"] == 2
    hist = row[[c for c in many.table.columns if c.startswith("deep_hist_0")]].to_numpy()
    assert hist.sum() == pytest.approx(1.0) and row["deep_hist_missing"] == 0
    zrow = many.table.set_index("slide_id").loc["z"]
    assert zrow["deep_hist_missing"] == 1 and zrow["bio_missing"] == 1 and zrow["bio_slide_n_patches"] == 0


def test_store_errors_name_the_file(tmp_path):
    with pytest.raises(FeatureFileError, match="nope.zarr"):
        open_heatmaps(tmp_path / "nope.zarr")
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    g.create_array("tumor", data=np.ones((4, 4), np.float32))  # the old guessed layout: not a heatmap store
    with pytest.raises(FeatureFileError, match="plain.zarr.*not a readable heatmap store"):
        open_heatmaps(tmp_path / "plain.zarr")
    write_heatmaps(tmp_path / "no_tumor.zarr", "s", {"tissue": (np.ones((4, 4), bool), 8.0, None, 4)})
    with pytest.raises(FeatureFileError, match="no_tumor.zarr.*no 'tumor' heatmap"):
        open_heatmaps(tmp_path / "no_tumor.zarr")


def test_reads_the_ngff_image_groups_with_their_mpp_and_offset(tmp_path):
    path = write_store(tmp_path / "s.zarr", offsets={"tumor": (3.0, 5.0), "mitosis": (0.0, 0.0)})
    hm = open_heatmaps(path)
    assert hm.tumor_offset_um == (3.0, 5.0) and hm.tissue_offset_um == (TISSUE_MPP / 2,) * 2
    np.testing.assert_array_equal(hm.origin_um("tumor"), [3.0 - TUMOR_MPP / 2, 5.0 - TUMOR_MPP / 2])
    g = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(hm.tumor.compute(), g["tumor/0"][:])
    assert hm.tumor.chunks == ((64, 64, 64, 8), (64, 64, 64, 64, 44))


def test_offset_moves_the_tumor_and_the_patches_with_it(tmp_path):
    """The same tumor heatmap stored 40 µm further right and down (a model's cell offset) is a tumor
    40 µm further right and down: detections shifted with it keep every count, fringe patches move along."""
    base = open_heatmaps(write_store(tmp_path / "a.zarr"))
    d = 40.0
    shifted = open_heatmaps(write_store(tmp_path / "b.zarr", offsets={
        "tumor": (TUMOR_MPP / 2 + d, TUMOR_MPP / 2 + d), "tissue": (TISSUE_MPP / 2 + d, TISSUE_MPP / 2 + d),
        "mitosis": (MIT_MPP / 2 + d, MIT_MPP / 2 + d)}))
    det = detections(80)
    moved = det.assign(x=det.x + d / SLIDE_MPP, y=det.y + d / SLIDE_MPP)
    a = slide_features(base, det, SLIDE_MPP, n_patches=5)
    b = slide_features(shifted, moved, SLIDE_MPP, n_patches=5)
    for k in ("tumor_area_mm2", "arch_n_in_tumor", "arch_hotspot_1hpf_count", "arch_grid_n_tiles", "arch_heat_mean"):
        assert b.features[k] == pytest.approx(a.features[k]), k
    np.testing.assert_array_equal(b.fringe_origins_l0, a.fringe_origins_l0 + int(d / SLIDE_MPP))
    # Without honouring the offset, detections near the edge of the disk would fall out of the tumor.
    assert slide_features(base, moved, SLIDE_MPP, n_patches=5).features["arch_n_in_tumor"] != a.features["arch_n_in_tumor"]


@pytest.mark.slow
def test_dask_on_ray(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.util.dask import ray_dask_get

    hm = open_heatmaps(write_store(tmp_path / "s.zarr"))
    det = detections(30)
    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        on_ray = slide_features(hm, det, SLIDE_MPP, n_patches=3, scheduler=ray_dask_get).features
    finally:
        ray.shutdown()
    assert on_ray == pytest.approx(slide_features(hm, det, SLIDE_MPP, n_patches=3).features)
