"""The device decode path (issue 18) on a CPU-only machine: the same torch code with ``device="cpu"``
gives the CPU path's bytes; the dispatch picks the CPU here and says why; the GPU branch's plumbing
is checked with a stand-in for what needs a GPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from tupac.heatmaps.device_windows import (
    DeviceWindows,
    apply_lut_torch,
    choose_decode_device,
    device_standardizer,
    lut_tensor,
)
from tupac.heatmaps.engine import SlideWindows, predict_windows
from tupac.heatmaps.windows import heatmap_geometry
from tupac.models import create_model
from tupac.preprocess import stain
from tupac.slide import cucim_backend, open_slide

# -- stain standardization on the device ---------------------------------------------------


@pytest.fixture(scope="module")
def he(real_dir) -> np.ndarray:
    return np.asarray(Image.open(real_dir / "he-tumor-target.png").convert("RGB"))


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_torch_lut_gives_the_numpy_bytes(he, method):
    # Template: the top-left quarter; the slide: the rest, darkened, so the transform moves colors.
    reference = stain.fit(he[:500, :500], method=method)
    tile = np.ascontiguousarray((he[400:, 300:].astype(np.float32) * 0.85).astype(np.uint8))
    stats = stain.fit_image(tile, method=method)
    table = stain.lookup_table(stats, reference)
    batch = np.stack([tile[:300, :300], tile[300:600, 300:600]])

    expected = np.stack([stain.transform(t, stats, reference) for t in batch])
    on_device = apply_lut_torch(lut_tensor(table, "cpu"), torch.from_numpy(batch))
    assert on_device.dtype == torch.uint8 and on_device.shape == batch.shape
    np.testing.assert_array_equal(on_device.numpy(), expected)
    np.testing.assert_array_equal(on_device.numpy(), np.stack([stain.apply_lut(table, t) for t in batch]))
    assert not np.array_equal(expected, batch)  # the check would be empty otherwise

    # Without a table the batch is standardized on the host: the same bytes, input untouched.
    before = batch.copy()
    host_path = device_standardizer(reference, stats)(torch.from_numpy(batch))
    np.testing.assert_array_equal(host_path.numpy(), expected)
    np.testing.assert_array_equal(batch, before)
    assert device_standardizer(None, stats) is None and device_standardizer(reference, None) is None


# -- the device window source on a phantom slide -------------------------------------------


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from tupac.synth import generate_cohort

    root = tmp_path_factory.mktemp("device-cohort")
    generate_cohort(root, n_slides=1, seed=5, size_um=(1000.0, 800.0), mitosis_images=0, workers=1)
    return next((root / "training_image_data").glob("*.svs"))


@pytest.fixture(scope="module")
def tiny_locnet():
    torch.manual_seed(0)
    return create_model("locnet", task="tumor", widths=[4, 8, 8, 8, 8], fc_width=8).eval()


def _geom(reader, card, mpp: float, chunk: int = 6):
    return heatmap_geometry(reader.dimensions, reader.mpp, dataclasses.replace(card, mpp=mpp), chunk)


@pytest.mark.parametrize("mpp, direct", [(1.0, True), (0.25, True), (0.5, False)], ids=["level1", "level0", "resampled"])
def test_device_windows_equal_slide_windows(phantom, tiny_locnet, mpp, direct):
    with open_slide(phantom, backend="cucim") as reader:
        geom = _geom(reader, tiny_locnet.card, mpp)
        rows, cols = geom.grid
        # The corners (edge windows, white padding) and the middle row and column (whole windows).
        windows = [(r, c) for r in (0, rows // 2, rows - 1) for c in (0, cols // 2, cols - 1)]
        source = DeviceWindows(reader, geom, "cpu")
        assert source.direct is direct  # a pyramid level is read as is; 0.5 um/px is resampled on the CPU
        got = source.read(windows)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.device.type == "cpu"
        np.testing.assert_array_equal(got.numpy(), SlideWindows(reader, geom).read(windows))
        lw, lh = reader.level_dimensions[source.plan.level]
        n = geom.window_px
        lv = np.array([geom.window_origin_l0(rc) for rc in windows]) / reader.level_downsamples[source.plan.level]
        inside = (lv >= 0).all(1) & (lv[:, 0] + n <= lw) & (lv[:, 1] + n <= lh)
        assert inside.any() and not inside.all()  # both paths ran: edge windows and whole ones


@pytest.mark.parametrize("backend", ["cucim", "openslide"])
@pytest.mark.parametrize("mpp", [1.0, 0.25, 0.5], ids=["level1", "level0", "resampled"])
def test_batch_decode_on_several_workers_gives_the_same_windows(phantom, tiny_locnet, backend, mpp):
    """A GPU actor decodes each batch through the reader's batch read (cuCIM's multi-location
    read_region on its reserved CPUs); the pixels must be those of one window at a time, edge
    windows (white padding) and resampled levels included."""
    with open_slide(phantom, backend=backend) as reader:
        geom = _geom(reader, tiny_locnet.card, mpp)
        rows, cols = geom.grid
        windows = [(r, c) for r in range(rows) for c in range(cols)]
        one_by_one = SlideWindows(reader, geom).read(windows)
        batched = SlideWindows(reader, geom, num_workers=3).read(windows)
        np.testing.assert_array_equal(batched, one_by_one)
        assert (one_by_one < 200).any(axis=-1).mean() > 0.05  # tissue was read, not only glass


class _RecordingImage:
    """Stands in for the CuImage: records the device reads (``device=`` given; the CPU path gives
    none) and decodes them with cuCIM on the CPU, as numpy-backed results."""

    def __init__(self, img):
        self.img = img
        self.calls = []

    def read_region(self, location, size, level, **kw):
        if "device" in kw:
            self.calls.append((location, kw.pop("device")))
        return self.img.read_region(location, size, level, **kw)

    def close(self):
        self.img.close()


def test_read_regions_device_routes_whole_windows_to_the_decoder_in_order(phantom):
    with open_slide(phantom, backend="cucim") as reader:
        real = reader._img
        reader._img = rec = _RecordingImage(real)
        try:
            n, ds = 256, reader.level_downsamples[1]
            # Inside, crossing the left edge, inside, past the far corner, inside.
            xys = [(400, 400), (-200, 800), (1200, 0), (3900, 3100), (0, 1600)]
            got = reader.read_regions_device(xys, 1, (n, n), "cpu", num_workers=2, batch_size=2)
            decoded = [loc for call, _ in rec.calls for loc in (call if isinstance(call[0], tuple) else [call])]
            assert decoded == [(400, 400), (1200, 0), (0, 1600)]  # the whole windows only, in order
            assert {dev for _, dev in rec.calls} == {"cpu"}
            reader._img = real
            for i, xy in enumerate(xys):
                np.testing.assert_array_equal(got[i].numpy(), reader.read_region(xy, 1, (n, n)), err_msg=str(xy))
            assert ds == 4.0
        finally:
            reader._img = real


# -- the model takes a tensor as an array ---------------------------------------------------


def test_predict_windows_on_a_tensor_equals_on_the_array(tiny_locnet, he):
    pixels = np.stack([he[:172, :172], he[300:472, 500:672]])
    a = predict_windows(tiny_locnet, pixels)
    b = predict_windows(tiny_locnet, torch.from_numpy(pixels))
    np.testing.assert_array_equal(a, b)


# -- dispatch -------------------------------------------------------------------------------


def _no_probe():
    raise AssertionError("cuCIM's CUDA probe must not run without a CUDA actor")


def test_auto_decodes_on_the_cpu_without_a_gpu():
    device, reason = choose_decode_device("auto", "cpu", "auto", _no_probe)
    assert device == "cpu" and "no GPU" in reason
    assert choose_decode_device("cpu", "cuda", "cucim", _no_probe) == ("cpu", "decode_device=cpu requested")


def test_cuda_requested_without_a_gpu_falls_back_loudly():
    device, reason = choose_decode_device("cuda", "cpu", "cucim", _no_probe)
    assert device == "cpu" and reason.startswith("FALLBACK") and "no GPU" in reason
    device, reason = choose_decode_device("cuda", "cuda", "auto", lambda: "cuCIM cannot decode into GPU memory (x)")
    assert device == "cpu" and reason.startswith("FALLBACK") and "cuCIM cannot" in reason
    with pytest.raises(ValueError, match="decode_device"):
        choose_decode_device("gpu", "cpu", "auto", _no_probe)


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a machine without a GPU")
def test_cuda_probe_reports_why_here():
    cucim_backend.cuda_decode_problem.cache_clear()
    try:
        problem = cucim_backend.cuda_decode_problem()
    finally:
        cucim_backend.cuda_decode_problem.cache_clear()
    assert problem is not None and problem.startswith("cuCIM cannot decode into GPU memory")


def test_gpu_branch_dispatch_and_sources(monkeypatch, phantom, tiny_locnet):
    """What a GPU actor would do, minus the GPU: the decision, then which source each slide gets."""
    from tupac.infer.actors import ModelActor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # auto stays on the CPU on a GPU actor too (measured slower there), without probing cuCIM.
    device, reason = choose_decode_device("auto", "cuda", "cucim", _no_probe)
    assert device == "cpu" and "opts in" in reason
    device, reason = choose_decode_device("cuda", "cuda", "auto", lambda: None)
    assert device == "cuda" and "OpenSlide still decode on the CPU" in reason

    actor = ModelActor.__new__(ModelActor)  # the routing alone, without loading models in Ray
    actor.decode_device, actor.device, actor.decode_workers = device, "cpu", 4
    with open_slide(phantom, backend="cucim") as cu, open_slide(phantom, backend="openslide") as osl:
        geom = _geom(cu, tiny_locnet.card, 1.0)
        assert isinstance(actor._source(cu, geom), DeviceWindows)
        assert isinstance(actor._source(osl, geom), SlideWindows)
        actor.decode_device = "cpu"
        source = actor._source(cu, geom)
        # The CPU path of a GPU actor decodes each batch on the CPUs it reserved.
        assert isinstance(source, SlideWindows) and source.num_workers == 4


def test_job_config_decode_device_option():
    from tupac.errors import ConfigError
    from tupac.infer.job import JobConfig

    assert JobConfig(models="m", out="o").decode_device == "auto"
    with pytest.raises(ConfigError, match="decode_device='gpu'"):
        JobConfig(models="m", out="o", decode_device="gpu")
    with pytest.raises(ConfigError, match="needs cuCIM"):
        JobConfig(models="m", out="o", decode_device="cuda", backend="openslide")


class _WrongColors(_RecordingImage):
    """A device decoder that gets the colors wrong (as cuCIM 26.10's did on RGB-coded JPEG)."""

    def read_region(self, location, size, level, **kw):
        region = super().read_region(location, size, level, **kw)
        return 255 - np.asarray(region) if self.calls and "device" in kw else region


def test_a_level_the_device_decodes_wrongly_stays_on_the_cpu(phantom, tiny_locnet):
    with open_slide(phantom, backend="cucim") as reader:
        real = reader._img
        reader._img = _WrongColors(real)
        try:
            geom = _geom(reader, tiny_locnet.card, 1.0)
            source = DeviceWindows(reader, geom, "cpu")
            assert not source.direct and "differs from its CPU decode" in source.reason
            reader._img = real
            wins = [(0, 0), (1, 1)]
            np.testing.assert_array_equal(source.read(wins).numpy(), SlideWindows(reader, geom).read(wins))
        finally:
            reader._img = real


def test_only_jpeg_levels_are_sent_to_the_gpu_decoder(real_dir):
    # JPEG 2000 tiles aborted the process on a GPU read: the gate answers before any decode.
    with open_slide(real_dir / "tcga-cr-7395-01a-01-ts1.svs", backend="cucim", mpp=0.25) as reader:
        real, reader._img = reader._img, None  # any decode would fail loudly
        try:
            problem = reader.device_decode_problem(0, "cuda")
        finally:
            reader._img = real
    assert "not JPEG-tiled" in problem and "33005" in problem
