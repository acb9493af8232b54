"""The cuCIM backend: fast JPEG / Aperio JPEG 2000 tiled TIFF reading, with batched reads.

Four cuCIM behaviours are handled here so that callers never see them:

- crashes on unsupported files: the constructor asks ``probe.probe_cucim`` (a child process)
  before opening the file in this process;
- silent decode failures (garbage pixels for a corrupt tile): ``tiles.TileChecker`` checks each
  tile's bytes before its first decode; a suspect tile is read through OpenSlide instead, which
  either decodes it or raises, and that error becomes ``SlideDecodeError``;
- unitless spacing for Aperio SVS: MPP comes from the Aperio metadata instead (``metadata``);
- cuFile's side effects when it initializes (a ``cufile.log`` in the current directory, "dlopen
  error libcuda.so.1" lines on a machine without a GPU): see ``quiet``.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from tupac.errors import SlideDecodeError, SlideError, SlideOpenError
from tupac.slide.base import BaseSlideReader, _origins, _size, white
from tupac.slide.metadata import build_info
from tupac.slide.openslide_backend import OpenSlideReader
from tupac.slide.probe import PROBE_TIMEOUT_S, probe_cucim
from tupac.slide.quiet import native_noise_filtered, prepare_cufile_log
from tupac.slide.tiles import TileChecker

_import_lock = threading.Lock()


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

    def _close(self) -> None:
        self._tiles.close()
        self._img.close()
        if self._fallback:
            self._fallback.close()
