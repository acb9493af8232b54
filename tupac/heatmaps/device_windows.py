"""Windows decoded into the model's device memory, standardized there (issue 18's GPU path).

On a GPU actor reading a slide through cuCIM, :class:`DeviceWindows` decodes a batch of windows
with nvJPEG straight into CUDA memory and :func:`device_standardizer` standardizes their stain
there with the slide's lookup table, so the batch reaches the model (:func:`predict_windows`
accepts the tensor as is) without a host copy. Everything else stays on the CPU path of
:mod:`tupac.heatmaps.engine` (the default, bytes unchanged).

Which path a run takes is :func:`choose_decode_device`'s decision, made once per actor, and
per slide level :class:`DeviceWindows` checks the GPU decoder against the CPU's first. Measured
on an H100 with cuCIM 26.10 (nvImageCodec 0.9, nvJPEG 13.3):

- RGB-coded JPEG tiles (Aperio SVS, the phantom slides) came out wrong on the GPU (mean
  difference 45-57 levels: the TIFF photometric tag is ignored), and a GPU read of Aperio JPEG 2000
  aborted the process; both are kept off the GPU (``CuCIMReader.device_decode_problem``);
- YCbCr-coded JPEG tiles matched within JPEG decoder tolerance: mean absolute difference 1.46-1.56
  levels, 99th percentile 14, max 75-86 (at chroma edges: the decoders upsample 4:2:0 chroma
  differently), 40% of the bytes differ; a random tiny LocNet's probabilities moved by < 2e-5;
- the GPU read was *slower*: ~0.8 s per cuCIM call whatever its size (4 windows of 1148 px, or 64
  of 380 px) against 0.016-0.084 s for the same 4 windows through cuCIM's CPU batch read.

So ``"auto"`` keeps the CPU path (the reference bytes, and faster today) and says why in
``actors.json``; ``"cuda"`` opts in, and falls back to the CPU with a loud reason where it cannot
be met (the driver refuses it up front when the run plans no GPUs). Edge windows, suspect tiles
and resampled levels are always decoded on the CPU and copied up, so they are identical.

torch is imported lazily: the run format and the engine import without it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tupac.heatmaps.engine import Preprocess, read_windows, standardize, standardizer
from tupac.heatmaps.windows import HeatmapGeometry
from tupac.slide.resample import plan_level

__all__ = [
    "DECODE_DEVICES",
    "DeviceWindows",
    "apply_lut_torch",
    "choose_decode_device",
    "device_standardizer",
    "lut_tensor",
]

DECODE_DEVICES = ("auto", "cpu", "cuda")

AUTO_ON_GPU = ("CPU decoding (auto): cuCIM 26.10's GPU decode measured 10-50x slower than its CPU decode on an "
               "H100 and not byte-identical; decode_device=cuda opts in")


def choose_decode_device(
    requested: str, model_device: str, backend: str, cuda_problem: Callable[[], str | None]
) -> tuple[str, str]:
    """Where a model actor decodes windows, and why.

    Parameters
    ----------
    requested : {"auto", "cpu", "cuda"}
        The run's ``decode_device`` option.
    model_device : str
        The torch device the actor's models run on (``"cuda"`` or ``"cpu"``).
    backend : str
        The run's slide reader option (``"auto"``, ``"openslide"``, ``"cucim"``); under ``"auto"``
        each slide's own backend decides per batch (only cuCIM-read slides decode on the GPU).
    cuda_problem : callable
        Returns why cuCIM cannot decode into CUDA memory, or None
        (:func:`tupac.slide.cucim_backend.cuda_decode_problem`); called only on a CUDA actor.

    Returns
    -------
    (decode_device, reason) : (str, str)
        ``decode_device`` is ``"cuda"`` or ``"cpu"``; ``reason`` is one line for ``actors.json``.
        ``"auto"`` gives ``"cpu"`` (see the module docstring for the measurements behind it). A
        ``"cuda"`` request that cannot be met falls back to ``"cpu"`` with a reason starting
        ``"FALLBACK"``.
    """
    if requested not in DECODE_DEVICES:
        raise ValueError(f"decode_device={requested!r}, expected one of {', '.join(DECODE_DEVICES)}")
    if requested == "cpu":
        return "cpu", "decode_device=cpu requested"
    problem = None
    if not str(model_device).startswith("cuda"):
        problem = f"the models run on {model_device} (no GPU seen by this actor)"
    elif backend == "openslide":
        problem = "slides are read by OpenSlide (backend=openslide), which decodes on the CPU only"
    elif requested == "auto":
        return "cpu", AUTO_ON_GPU
    else:
        problem = cuda_problem()
    if problem is None:
        scope = "" if backend == "cucim" else " (slides read by OpenSlide still decode on the CPU)"
        return "cuda", f"cuCIM decodes JPEG tiles into GPU memory where a slide level passes its check{scope}"
    if requested == "cuda":
        return "cpu", f"FALLBACK to CPU decoding: decode_device=cuda requested, but {problem}"
    return "cpu", problem


class DeviceWindows:
    """The windows of ``geom`` read from a slide into ``device`` memory at the model's resolution.

    Where the model's mpp is a pyramid level's (no resampling) and the reader can decode into
    device memory (:meth:`tupac.slide.cucim_backend.CuCIMReader.read_regions_device`), windows
    are decoded there (edge windows and suspect tiles through the CPU, copied up), once a check
    on the slide's level shows the device decoder agrees with the CPU's
    (:meth:`~tupac.slide.cucim_backend.CuCIMReader.device_decode_problem`). Otherwise each window
    is read as :class:`tupac.heatmaps.engine.SlideWindows` reads it and the batch copied up once:
    same bytes as the CPU path; ``reason`` says why.

    Parameters
    ----------
    reader : SlideReader
    geom : HeatmapGeometry
    device : str
        Torch device (``"cuda"``; ``"cpu"`` runs the same code, as the tests do).
    num_workers : int
        cuCIM decoder threads.
    """

    def __init__(self, reader, geom: HeatmapGeometry, device: str, num_workers: int = 1) -> None:
        self.reader = reader
        self.geom = geom
        self.device = device
        self.num_workers = num_workers
        self.plan = plan_level(reader.mpp, reader.level_downsamples, geom.mpp, source=str(reader.path))
        self.reason = self._why_not_direct(reader, device)
        self.direct = self.reason is None

    def _why_not_direct(self, reader, device: str) -> str | None:
        """Why windows are read on the CPU and copied up, or None where they are decoded on ``device``."""
        if self.plan.resample:
            return f"the model's {self.geom.mpp:g} um/px is no pyramid level: resampled on the CPU"
        if not hasattr(reader, "read_regions_device"):
            return f"the {reader.backend} reader decodes on the CPU only"
        return reader.device_decode_problem(self.plan.level, device)

    def read(self, windows: Sequence[tuple[int, int]]):
        """``(len(windows), n, n, 3)`` uint8 torch tensor on ``device``, ``n = geom.window_px``."""
        # Deferred: torch is heavy (see the module docstring).
        import torch

        if not self.direct:
            return torch.from_numpy(read_windows(self.reader, self.geom, windows)).to(self.device)
        n = self.geom.window_px
        xys = [self.geom.window_origin_l0(tuple(rc)) for rc in windows]
        return self.reader.read_regions_device(np.asarray(xys, dtype=np.int64).reshape(-1, 2), self.plan.level,
                                               (n, n), self.device, num_workers=self.num_workers)


def lut_tensor(table: np.ndarray, device: str):
    """A slide's lookup table (:func:`tupac.preprocess.stain.lookup_table`, ``(2**24,)`` uint32
    packed ``r | g << 8 | b << 16``) as a ``(2**24, 3)`` uint8 tensor on ``device`` (48 MiB)."""
    import torch

    rgb = np.ascontiguousarray(np.asarray(table, dtype="<u4").view(np.uint8).reshape(-1, 4)[:, :3])
    return torch.from_numpy(rgb).to(device)


def apply_lut_torch(table, pixels):
    """:func:`tupac.preprocess.stain.apply_lut` in torch, on the tensors' device.

    Parameters
    ----------
    table : torch.Tensor of uint8, shape (2**24, 3)
        From :func:`lut_tensor`, on the device of ``pixels``.
    pixels : torch.Tensor of uint8, shape (..., 3)

    Returns
    -------
    torch.Tensor of uint8, shape of ``pixels``
        The same bytes as ``apply_lut`` on the host.
    """
    import torch

    p = pixels.to(torch.int32)
    # The packing build_lut indexes by (little-endian r, g, b).
    idx = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    return torch.index_select(table, 0, idx.reshape(-1)).reshape(pixels.shape)


def device_standardizer(reference, stats, table=None):
    """Stain standardization of a batch tensor on its device: ``(B, n, n, 3)`` uint8 -> same.

    Parameters
    ----------
    reference, stats : StainReference, SlideStainStats or None
        None (either): raw pixels, returns None.
    table : torch.Tensor, optional
        The slide's table from :func:`lut_tensor`, on the batch's device: the batch is standardized
        there. Without it (a stage too small to pay for the table, see
        :func:`tupac.infer.actors.use_stain_lut`) the batch goes to the host, through
        ``stain.transform`` per window, and back: same bytes, one round trip.
    """
    if reference is None or stats is None:
        return None
    if table is not None:
        return lambda pixels: apply_lut_torch(table, pixels)
    host: Preprocess | None = standardizer(reference, stats)
    return lambda pixels: _on_host(pixels, host)


def _on_host(pixels, preprocess: Preprocess | None):
    import torch

    out = standardize(pixels.cpu().numpy().copy(), preprocess)
    return torch.from_numpy(out).to(pixels.device)
