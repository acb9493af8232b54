"""The cuCIM backend: fast JPEG / Aperio JPEG 2000 tiled TIFF reading, with batched reads.

Five cuCIM behaviours are handled here so that callers never see them:

- crashes on unsupported files: the constructor asks ``probe.probe_cucim`` (a child process)
  before opening the file in this process;
- silent decode failures (garbage pixels for a corrupt tile): ``tiles.TileChecker`` checks each
  tile's bytes before its first decode; a suspect tile is read through OpenSlide instead, which
  either decodes it or raises, and that error becomes ``SlideDecodeError``;
- unitless spacing for Aperio SVS: MPP comes from the Aperio metadata instead (``metadata``);
- cuFile's side effects when it initializes (a ``cufile.log`` in the current directory, "dlopen
  error libcuda.so.1" lines on a machine without a GPU): see ``quiet``;
- decoding into GPU memory (``read_regions_device``), which cuCIM 26.10 gets wrong for RGB-coded
  JPEG tiles and aborts on for JPEG 2000: ``device_decode_problem`` keeps such levels on the CPU.
"""

from __future__ import annotations

import functools
import math
import tempfile
import threading
from pathlib import Path

import numpy as np

from tupac.errors import SlideDecodeError, SlideError, SlideOpenError
from tupac.slide.base import BaseSlideReader, _origins, _size, white
from tupac.slide.metadata import build_info
from tupac.slide.openslide_backend import OpenSlideReader
from tupac.slide.probe import PROBE_TIMEOUT_S, probe_cucim
from tupac.slide.quiet import native_noise_filtered, prepare_cufile_log
from tupac.slide.tiles import JPEG, TileChecker

_import_lock = threading.Lock()

DEVICE_DECODE_MEAN_TOLERANCE = 2.0
"""Mean absolute difference (0-255 levels) under which a device decode counts as the same pixels
as cuCIM's CPU decode: JPEG decoders may round their IDCT and upsample chroma differently (see
:meth:`CuCIMReader.device_decode_problem` for what was measured). A decode that reads the color
space wrongly differs by tens of levels on average."""


def _cuimage_class():
    """cuCIM's ``CuImage``, imported with cuFile's log routed and its no-driver lines dropped.

    Deferred: importing cuCIM loads its native libraries (and, after torch, initializes cuFile).
    """
    with _import_lock:
        prepare_cufile_log()
        try:
            with native_noise_filtered():
                from cucim import CuImage
        except ImportError as e:
            raise ImportError(f"cuCIM is not installed ({e})") from None
    return CuImage


def _open_cuimage(path: Path):
    """``CuImage(path)``; building one loads cuCIM's format plugin, which initializes cuFile again."""
    cls = _cuimage_class()
    with native_noise_filtered():
        return cls(str(path))


def cucim_properties(img) -> dict[str, str]:
    """cuCIM metadata in OpenSlide's property vocabulary (``aperio.*``, ``tiff.*``)."""
    meta = img.metadata
    props: dict[str, str] = {f"aperio.{k}": str(v) for k, v in (meta.get("aperio") or {}).items()}
    tiff = meta.get("tiff") or {}
    unit = str(tiff.get("resolution_unit", "")).strip().lower()
    if unit:
        props["tiff.ResolutionUnit"] = unit
        props["tiff.XResolution"] = str(tiff.get("x_resolution", ""))
    if props.get("aperio.Header") or "aperio" in meta:
        props["tiff.ImageDescription"] = str(img.raw_metadata or "")
    return props


def _vendor(meta: dict) -> str:
    for name in ("aperio", "philips"):
        if name in meta:
            return name
    return "generic-tiff"


class CuCIMReader(BaseSlideReader):
    """A slide read through cuCIM (CPU here; the same API on GPU machines).

    Parameters
    ----------
    path : str or Path
        The slide file (Aperio SVS or a tiled JPEG / JPEG 2000 TIFF).
    mpp : float, optional
        Level-0 um/px to use when the metadata has none (or to override it).
    probe_timeout : float
        Seconds allowed to the crash-safety probe (run once per file version).

    Raises
    ------
    SlideOpenError
        The probe failed (cuCIM crashes, hangs or errors on the file) or cuCIM cannot open it.
    MissingMPPError
        No MPP in the metadata and ``mpp`` is None.
    """

    backend = "cucim"

    def __init__(self, path: str | Path, mpp: float | None = None, probe_timeout: float = PROBE_TIMEOUT_S) -> None:
        path = Path(path)
        if not path.is_file():
            raise SlideOpenError(path, "no such file")
        verdict = probe_cucim(path, timeout=probe_timeout)
        if not verdict.ok:
            raise SlideOpenError(path, verdict.reason)
        try:
            img = _open_cuimage(path)
        except ImportError as e:
            raise SlideOpenError(path, str(e)) from None
        except Exception as e:  # cuCIM raises ValueError / RuntimeError for unreadable files
            raise SlideOpenError(path, f"cuCIM cannot open it: {e}") from None
        res = img.resolutions
        info = build_info(
            path, cucim_properties(img),
            tuple(tuple(d) for d in res["level_dimensions"]), tuple(res["level_downsamples"]),
            _vendor(img.metadata), mpp,
        )
        super().__init__(path, info)
        self._img = img
        try:
            self._tiles = TileChecker(path, info.level_dimensions)
        except Exception as e:  # tifffile disagrees with cuCIM about the file: do not trust either
            raise SlideOpenError(path, f"cannot index the TIFF tiles: {e}") from None
        self._fallback = None
        self._fallback_lock = threading.Lock()
        self._device_checks: dict[tuple[int, str], str | None] = {}

    # --- single reads ---------------------------------------------------------------------
    def _read_level(self, x_lv: int, y_lv: int, level: int, w: int, h: int) -> np.ndarray:
        clip = self._clip(x_lv, y_lv, level, w, h)
        if clip is None:
            return white(h, w)
        (cx, cy, cw, ch), (dx, dy) = clip
        bad = self._tiles.suspects(level, cx, cy, cw, ch)
        patch = self._read_suspect(level, cx, cy, cw, ch, bad) if bad else self._decode(level, cx, cy, cw, ch)
        if (dx, dy, cw, ch) == (0, 0, w, h):
            return patch
        out = white(h, w)
        out[dy : dy + ch, dx : dx + cw] = patch
        return out

    def _l0(self, v_lv: int, level: int) -> int:
        """The level-0 coordinate cuCIM maps (by flooring) onto level pixel ``v_lv``."""
        return v_lv if level == 0 else math.ceil(v_lv * self.level_downsamples[level])

    def _decode(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        try:
            region = self._img.read_region((self._l0(x, level), self._l0(y, level)), (w, h), level)
        except Exception as e:
            raise SlideDecodeError(self.path, f"cuCIM failed at level {level}, ({x}, {y}) {w}x{h}: {e}") from None
        return np.asarray(region)[..., :3]

    def _read_suspect(self, level, x, y, w, h, bad) -> np.ndarray:
        """Read a window with a tile that failed the byte check through OpenSlide, which raises
        on undecodable data instead of returning garbage."""
        col, row, problem = bad[0]
        where = f"tile (col {col}, row {row}) of level {level}: {problem}"
        fallback = self._openslide()
        if fallback is None:
            raise SlideDecodeError(self.path, f"{where}; OpenSlide cannot open the file to decode it instead")
        try:
            return fallback._read_level(x, y, level, w, h)
        except SlideDecodeError as e:
            raise SlideDecodeError(self.path, f"{where} ({e.problem})") from None

    def _openslide(self):
        with self._fallback_lock:
            if self._fallback is None:
                try:
                    self._fallback = OpenSlideReader(self.path, mpp=self.mpp)
                except SlideError:
                    self._fallback = False
            return self._fallback or None

    # --- batch reads ----------------------------------------------------------------------
    def read_regions(self, xys_l0, level: int, size: tuple[int, int], num_workers: int = 1,
                     batch_size: int | None = None) -> np.ndarray:
        """Batch read through cuCIM's multi-location ``read_region`` (``num_workers`` decoder
        threads, ``batch_size`` tiles per batch). Windows that cross the slide edge or touch a
        suspect tile take the single-read path. Returns ``(n, h, w, 3)`` uint8."""
        level = self._level(level)
        w, h = _size(size, self.path)
        self._check_open()
        xys = _origins(xys_l0, self.path)
        out = np.empty((len(xys), h, w, 3), dtype=np.uint8)
        ds = self.level_downsamples[level]
        lv = np.floor(xys / ds).astype(np.int64) if level else xys
        lw, lh = self.level_dimensions[level]
        inside = (lv[:, 0] >= 0) & (lv[:, 1] >= 0) & (lv[:, 0] + w <= lw) & (lv[:, 1] + h <= lh)
        for i in np.flatnonzero(inside):
            if self._tiles.suspects(level, int(lv[i, 0]), int(lv[i, 1]), w, h):
                inside[i] = False
        fast = np.flatnonzero(inside)
        for i in np.flatnonzero(~inside):
            out[i] = self._read_level(int(lv[i, 0]), int(lv[i, 1]), level, w, h)
        if len(fast) == 1 or (len(fast) and num_workers < 1):
            for i in fast:
                out[i] = self._decode(level, int(lv[i, 0]), int(lv[i, 1]), w, h)
        elif len(fast):
            self._batch(out, fast, lv, level, w, h, num_workers, batch_size or min(len(fast), 32))
        return out

    def _batch(self, out, fast, lv, level, w, h, num_workers, batch_size) -> None:
        locs = [(self._l0(int(lv[i, 0]), level), self._l0(int(lv[i, 1]), level)) for i in fast]
        try:
            batches = self._img.read_region(
                locs, (w, h), level, num_workers=max(1, num_workers), batch_size=max(1, batch_size)
            )
            k = 0
            for batch in batches:
                arr = np.asarray(batch)
                arr = arr.reshape(-1, h, w, arr.shape[-1])[..., :3]
                out[fast[k : k + len(arr)]] = arr
                k += len(arr)
        except Exception as e:
            raise SlideDecodeError(self.path, f"cuCIM batch read failed at level {level}: {e}") from None
        if k != len(fast):
            raise SlideDecodeError(self.path, f"cuCIM batch read returned {k} of {len(fast)} tiles")

    # --- decoding into device memory -------------------------------------------------------
    def read_regions_device(self, xys_l0, level: int, size: tuple[int, int], device: str = "cuda",
                            num_workers: int = 1, batch_size: int | None = None):
        """Batch read decoded straight into ``device`` memory (nvJPEG through cuCIM on a GPU).

        Windows fully inside ``level`` whose tiles pass the byte check are decoded by cuCIM with
        ``device=`` (on ``"cuda"``: JPEG tiles through nvJPEG, no host copy; the batch is copied
        device to device into the output). The others (crossing the slide edge, or touching a
        suspect tile) take the CPU path of :meth:`read_region` and are copied up, so the output is
        the same window for window, up to the decoders' differences. Resampling is not done here:
        callers use this only where the target mpp is a pyramid level's
        (:func:`tupac.slide.resample.plan_level` without resampling).

        Parameters
        ----------
        xys_l0 : array-like, shape (n, 2)
            Level-0 ``(x, y)`` of each window's top-left; read at level pixel ``floor(x / ds)``
            as :meth:`read_region` does.
        level : int
        size : (width, height)
            Pixels at ``level``.
        device : str
            Torch device of the output, also the device cuCIM decodes on (``"cpu"`` runs the same
            code with cuCIM's CPU decoder, as tests do).
        num_workers, batch_size : int
            cuCIM decoder threads and locations per batch.

        Returns
        -------
        torch.Tensor of uint8, shape (n, height, width, 3), on ``device``
        """
        # Deferred: torch is heavy and the slide layer must import without it.
        import torch

        level = self._level(level)
        w, h = _size(size, self.path)
        self._check_open()
        xys = _origins(xys_l0, self.path)
        lv = np.floor(xys / self.level_downsamples[level]).astype(np.int64) if level else xys
        fast = self._device_ready(lv, level, w, h)
        out = torch.empty((len(xys), h, w, 3), dtype=torch.uint8, device=device)
        slow = np.setdiff1d(np.arange(len(xys)), fast)
        if len(slow):
            host = np.stack([self._read_level(int(lv[i, 0]), int(lv[i, 1]), level, w, h) for i in slow])
            out[torch.as_tensor(slow, device=device)] = torch.from_numpy(host).to(device)
        k = 0
        for part in self._decode_on(device, [(self._l0(int(lv[i, 0]), level), self._l0(int(lv[i, 1]), level))
                                             for i in fast], level, w, h, num_workers, batch_size):
            out[torch.as_tensor(fast[k : k + len(part)], device=device)] = part
            k += len(part)
        if k != len(fast):
            raise SlideDecodeError(self.path, f"cuCIM device read returned {k} of {len(fast)} windows")
        return out

    def device_decode_problem(self, level: int, device: str = "cuda", px: int = 256) -> str | None:
        """Why this slide's ``level`` should not be decoded on ``device``, or None (checked once).

        Only JPEG-tiled levels qualify: on an H100, cuCIM 26.10 aborted the whole process
        ("Unsupported compression method", uncatchable) on a GPU read of Aperio JPEG 2000 tiles.
        A JPEG level then decodes one ``px`` x ``px`` region in its middle on ``device`` and on the
        CPU and compares them, because cuCIM 26.10's GPU decoder (nvImageCodec) ignores the TIFF's
        photometric tag: JPEG tiles stored as RGB (Aperio SVS, tifffile's ``photometric="rgb"``)
        are converted as if they were YCbCr, which on the H100 gave a mean difference of 45-57
        levels (white became (255, 122, 255)), while a YCbCr-coded JPEG TIFF decoded within
        :data:`DEVICE_DECODE_MEAN_TOLERANCE`.
        """
        level = self._level(level)
        tiles = self._tiles.levels[level]
        if str(device) != "cpu" and (tiles is None or tiles.compression != JPEG):
            coding = "not tiled as cuCIM reads it" if tiles is None else f"TIFF compression {tiles.compression}"
            return f"level {level} is not JPEG-tiled ({coding}); cuCIM's GPU decoder is used for JPEG tiles only"
        key = (level, str(device))
        if key not in self._device_checks:
            self._device_checks[key] = self._compare_device_decode(level, str(device), px)
        return self._device_checks[key]

    def _compare_device_decode(self, level: int, device: str, px: int) -> str | None:
        lw, lh = self.level_dimensions[level]
        w, h = min(px, lw), min(px, lh)
        x, y = (lw - w) // 2, (lh - h) // 2
        where = f"level {level}, ({x}, {y}) {w}x{h}"
        if self._tiles.suspects(level, x, y, w, h):
            return f"the check region ({where}) has a suspect tile"
        try:
            (part,) = list(self._decode_on(device, [(self._l0(x, level), self._l0(y, level))], level, w, h, 1, 1))
        except SlideDecodeError as e:
            return f"cuCIM cannot decode it on {device}: {e.problem}"
        got = part.reshape(h, w, 3).cpu().numpy().astype(np.int16)
        diff = np.abs(got - self._decode(level, x, y, w, h).astype(np.int16))
        if diff.mean() <= DEVICE_DECODE_MEAN_TOLERANCE:
            return None
        return (f"cuCIM's {device} decode differs from its CPU decode at {where} by {diff.mean():.1f} levels on "
                f"average (max {diff.max()}): not JPEG rounding (RGB-coded JPEG tiles read as YCbCr?)")

    def _device_ready(self, lv: np.ndarray, level: int, w: int, h: int) -> np.ndarray:
        """Indices of the windows cuCIM may decode whole: inside the level, no suspect tile."""
        lw, lh = self.level_dimensions[level]
        inside = (lv[:, 0] >= 0) & (lv[:, 1] >= 0) & (lv[:, 0] + w <= lw) & (lv[:, 1] + h <= lh)
        keep = [i for i in np.flatnonzero(inside)
                if not self._tiles.suspects(level, int(lv[i, 0]), int(lv[i, 1]), w, h)]
        return np.asarray(keep, dtype=np.int64)

    def _decode_on(self, device: str, locs: list, level: int, w: int, h: int, num_workers: int,
                   batch_size: int | None):
        """Yield ``(b, h, w, 3)`` uint8 tensors on ``device`` for ``locs`` (level-0), in order."""
        if not locs:
            return
        try:
            if len(locs) == 1:  # cuCIM's multi-location form wants more than one location
                parts = [self._img.read_region(locs[0], (w, h), level, device=device)]
            else:
                parts = self._img.read_region(locs, (w, h), level, num_workers=max(1, num_workers),
                                              batch_size=max(1, batch_size or min(len(locs), 32)),
                                              device=device)
            for part in parts:
                t = as_tensor(part, device)
                yield t.reshape(-1, h, w, t.shape[-1])[..., :3]
        except SlideDecodeError:
            raise
        except Exception as e:
            raise SlideDecodeError(self.path, f"cuCIM {device} read failed at level {level}: {e}") from None

    def _close(self) -> None:
        self._tiles.close()
        self._img.close()
        if self._fallback:
            self._fallback.close()


def as_tensor(region, device: str):
    """A cuCIM result as a torch tensor on ``device`` without a host copy where it already lives
    there: CUDA memory is wrapped through ``__cuda_array_interface__``, host memory through numpy."""
    # Deferred: torch is heavy and the slide layer must import without it.
    import torch

    if hasattr(region, "__cuda_array_interface__"):
        return torch.as_tensor(region, device=device)
    return torch.from_numpy(np.asarray(region)).to(device)


@functools.lru_cache(maxsize=1)
def cuda_decode_problem() -> str | None:
    """Why cuCIM cannot decode into CUDA memory here, or None when it can (checked once).

    Decodes a tiny JPEG-tiled TIFF written to a temporary folder with ``device="cuda"``: a cuCIM
    built without CUDA, or without a usable GPU or nvJPEG, fails here rather than on a slide.
    """
    import tifffile  # Deferred: only GPU actors ask, once.

    try:
        cls = _cuimage_class()
        with tempfile.TemporaryDirectory(prefix="tupac-cucim-") as tmp:
            path = Path(tmp) / "probe.tif"
            tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), tile=(256, 256),
                             compression="jpeg", photometric="rgb")
            with native_noise_filtered():
                img = cls(str(path))
                region = img.read_region((0, 0), (16, 16), 0, device="cuda")
            ok = hasattr(region, "__cuda_array_interface__")
            img.close()
    except Exception as e:  # ImportError, RuntimeError("NVJPEG initialization error"), ...
        return f"cuCIM cannot decode into GPU memory ({type(e).__name__}: {str(e).strip()[:200]})"
    return None if ok else "cuCIM's device read returned host memory (built without CUDA)"
