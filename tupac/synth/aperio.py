"""Streaming writer of pyramidal, tiled, JPEG-compressed Aperio-style SVS files.

Layout (what OpenSlide's "aperio" driver and cuCIM expect): IFD 0 is level 0 (tiled, ImageDescription
starting ``Aperio Image Library`` with ``AppMag`` and ``MPP``); IFD 1 is a small stripped thumbnail;
IFDs 2.. are the lower levels (downsample 4, 16, ...), each its own IFD. Tiles are JPEG with
photometric RGB (no YCbCr): OpenSlide and cuCIM then decode to identical pixels.

Level 0 is never held in memory: blocks of one tile row by ``chunk_px`` columns are rendered, cut
into tiles for tifffile's tile iterator, and box-averaged by 4 into a disk-backed memmap that becomes
level 1; each further level is computed from the previous memmap in strips.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tifffile

TILE = 256
QUALITY = 80
"""Default JPEG quality of the tiles (a style may ask for another)."""
DOWNSAMPLE = 4
APERIO_HEAD = "Aperio Image Library v12.0.0 \r\n"


def _description(size: tuple[int, int], level0: tuple[int, int], mpp: float, app_mag: int, extra: dict,
                 quality: int = QUALITY) -> str:
    w0, h0 = level0
    w, h = size
    head = f"{APERIO_HEAD}{w0}x{h0} [0,0 {w0}x{h0}] ({TILE}x{TILE})"
    if (w, h) != (w0, h0):
        head += f" -> {w}x{h}"
    fields = [f"{head} JPEG Q={quality}", f"AppMag = {app_mag}", f"MPP = {mpp}"]
    fields += [f"{k} = {v}" for k, v in extra.items()]
    return "|".join(fields)


def _pad_tile(t: np.ndarray) -> np.ndarray:
    if t.shape[:2] == (TILE, TILE):
        return t
    out = np.full((TILE, TILE, 3), 255, np.uint8)  # glass beyond the image edge
    out[: t.shape[0], : t.shape[1]] = t
    return out


def _downsample(block: np.ndarray, f: int) -> np.ndarray:
    """Box mean by ``f`` (block height and width must be multiples of ``f``), rounded to uint8."""
    h, w = block.shape[:2]
    m = block.reshape(h // f, f, w // f, f, 3).astype(np.float32).mean(axis=(1, 3))
    return (m + 0.5).astype(np.uint8)


RowBlock = tuple[np.ndarray, "np.ndarray | None"]
"""A level-0 block ``(h, w, 3)`` uint8 and its level-1 box mean (None: no whole 4 x 4 group)."""


def _render_row(render: Callable[[int, int, int, int], np.ndarray], size: tuple[int, int], chunk_px: int,
                r: int) -> list[RowBlock]:
    """The blocks of tile row ``r`` (each ``<= 256 x chunk_px``), left to right, each with its
    level-1 block (box mean by 4; None where the block holds no whole 4 x 4 group)."""
    w, h = size
    w1, h1 = max(w // DOWNSAMPLE, 1), max(h // DOWNSAMPLE, 1)
    y0 = r * TILE
    bh = min(TILE, h - y0)
    out = []
    for x0 in range(0, w, chunk_px):
        block = render(x0, y0, min(chunk_px, w - x0), bh)
        # Level 1 keeps only whole 4x4 groups (floor), as pyramid levels of real scanners do.
        dh, dw = min(bh // DOWNSAMPLE, h1 - y0 // DOWNSAMPLE), min(block.shape[1] // DOWNSAMPLE, w1 - x0 // DOWNSAMPLE)
        small = _downsample(block[: dh * DOWNSAMPLE, : dw * DOWNSAMPLE], DOWNSAMPLE) if dh > 0 and dw > 0 else None
        out.append((block, small))
    return out


_FORKED_RENDER: tuple | None = None
"""``(render, size, chunk_px)`` of the slide being written, inherited by forked row renderers
(a closure over a scene need not be picklable)."""


def _render_row_forked(r: int) -> list[RowBlock]:
    render, size, chunk_px = _FORKED_RENDER
    return _render_row(render, size, chunk_px, r)


def _rows(render, size: tuple[int, int], chunk_px: int, workers: int) -> Iterator[list[RowBlock]]:
    """Every tile row's blocks, in order; rendered by ``workers`` forked processes when > 1.

    At most ``2 * workers`` rows are in flight, so memory stays a few rows (a 80k-px row is 61 MB)
    however far rendering runs ahead of the JPEG encoder in this process. A row's pixels depend
    only on its coordinates (:func:`tupac.synth.render.render_block`), so the file is the same
    byte for byte with any number of workers.
    """
    n_rows = -(-size[1] // TILE)
    if workers <= 1 or n_rows < 2:
        for r in range(n_rows):
            yield _render_row(render, size, chunk_px, r)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    global _FORKED_RENDER
    _FORKED_RENDER = (render, size, chunk_px)
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            pending: deque = deque()
            nxt = 0
            for _ in range(n_rows):
                while nxt < n_rows and len(pending) < 2 * workers:
                    pending.append(ex.submit(_render_row_forked, nxt))
                    nxt += 1
                yield pending.popleft().result()
    finally:
        _FORKED_RENDER = None


def _level0_tiles(
    render: Callable[[int, int, int, int], np.ndarray], size: tuple[int, int], chunk_px: int, level1: np.ndarray,
    on_row: Callable[[int, int], None] | None, workers: int = 1,
) -> Iterator[np.ndarray]:
    w, h = size
    n_rows = -(-h // TILE)
    for r, blocks in enumerate(_rows(render, size, chunk_px, workers)):
        y0 = r * TILE
        for x0, (block, small) in zip(range(0, w, chunk_px), blocks):
            if small is not None:
                y1, x1 = y0 // DOWNSAMPLE, x0 // DOWNSAMPLE
                level1[y1 : y1 + small.shape[0], x1 : x1 + small.shape[1]] = small
            for tx in range(0, block.shape[1], TILE):
                yield _pad_tile(block[:, tx : tx + TILE])
        if on_row is not None:
            on_row(r + 1, n_rows)


def _memmap_tiles(arr: np.ndarray) -> Iterator[np.ndarray]:
    h, w = arr.shape[:2]
    for y0 in range(0, h, TILE):
        strip = np.asarray(arr[y0 : y0 + TILE])
        for x0 in range(0, w, TILE):
            yield _pad_tile(strip[:, x0 : x0 + TILE])


def _next_level(prev: np.ndarray, tmp: Path, k: int) -> np.ndarray:
    h, w = prev.shape[0] // DOWNSAMPLE, prev.shape[1] // DOWNSAMPLE
    out = np.lib.format.open_memmap(tmp / f"level{k}.npy", mode="w+", dtype=np.uint8, shape=(h, w, 3))
    strip = TILE * DOWNSAMPLE
    for y0 in range(0, h * DOWNSAMPLE, strip):
        src = np.asarray(prev[y0 : min(y0 + strip, h * DOWNSAMPLE), : w * DOWNSAMPLE])
        out[y0 // DOWNSAMPLE : y0 // DOWNSAMPLE + src.shape[0] // DOWNSAMPLE] = _downsample(src, DOWNSAMPLE)
    return out


def write_aperio_svs(
    path: Path,
    size: tuple[int, int],
    render: Callable[[int, int, int, int], np.ndarray],
    mpp: float = 0.25,
    app_mag: int = 40,
    extra: dict | None = None,
    min_level_px: int = 1024,
    chunk_px: int = 2048,
    on_row: Callable[[int, int], None] | None = None,
    workers: int = 1,
    quality: int = QUALITY,
) -> list[tuple[int, int]]:
    """Write a pyramidal Aperio SVS whose level-0 pixels come from ``render(x0, y0, w, h) -> (h, w, 3) uint8``.

    Parameters
    ----------
    path : Path
        Output file (``.svs``).
    size : (width, height)
        Level-0 size in pixels.
    render : callable
        Returns the RGB uint8 block at level-0 ``[y0:y0+h, x0:x0+w]``; called with ``h <= 256`` and
        ``w <= chunk_px`` in row-major order.
    mpp, app_mag : float, int
        Written as ``MPP`` and ``AppMag`` in the ImageDescription.
    extra : dict, optional
        More ``key = value`` description fields.
    min_level_px : int
        Sub-levels are added (downsample 4, 16, ...) while the previous level is larger than this.
    chunk_px : int
        Width of one rendered block (multiple of 256); bounds the memory of one render call.
    workers : int
        Processes rendering tile rows in parallel (forked; this process encodes the JPEG tiles
        and builds the lower levels). The file does not depend on it.
    quality : int
        JPEG quality of every tile (1-100), also written as ``JPEG Q=`` in the ImageDescription.

    Returns
    -------
    list of (width, height)
        Dimensions of every pyramid level written.
    """
    if chunk_px % TILE:
        raise ValueError(f"chunk_px must be a multiple of {TILE}, got {chunk_px}")
    w, h = size
    extra = dict(extra or {})
    extra.setdefault("Filename", Path(path).stem)
    common = dict(
        photometric="rgb", compression="jpeg", compressionargs={"level": int(quality), "outcolorspace": "RGB"},
        # Tiles are JPEG-encoded on ``workers`` threads (each tile on its own: same bytes).
        subsampling=(1, 1), metadata=None, maxworkers=max(1, int(workers)), software=False,
    )
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".svs-") as tmpd:
        tmp = Path(tmpd)
        l1 = np.lib.format.open_memmap(
            tmp / "level1.npy", mode="w+", dtype=np.uint8, shape=(max(h // DOWNSAMPLE, 1), max(w // DOWNSAMPLE, 1), 3)
        )
        l1[:] = 255
        with tifffile.TiffWriter(path, bigtiff=w * h * 3 > 3_500_000_000) as tw:
            tw.write(
                _level0_tiles(render, size, chunk_px, l1, on_row, workers), shape=(h, w, 3), dtype=np.uint8,
                tile=(TILE, TILE), description=_description(size, size, mpp, app_mag, extra, quality), **common,
            )
            levels = [l1]
            while max(levels[-1].shape[:2]) > min_level_px and min(levels[-1].shape[:2]) >= DOWNSAMPLE * 8:
                levels.append(_next_level(levels[-1], tmp, len(levels) + 1))
            thumb = _thumbnail(levels[-1])
            tw.write(
                thumb, description=f"{APERIO_HEAD}{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]} - |AppMag = {app_mag}|MPP = {mpp}",
                rowsperstrip=16, **common,
            )
            dims = [(w, h)]
            for lv in levels:
                lh, lw = lv.shape[:2]
                tw.write(
                    _memmap_tiles(lv), shape=(lh, lw, 3), dtype=np.uint8, tile=(TILE, TILE),
                    description=_description((lw, lh), size, mpp, app_mag, extra, quality), **common,
                )
                dims.append((lw, lh))
            del levels, l1
    return dims


def _thumbnail(level: np.ndarray, max_px: int = 768) -> np.ndarray:
    arr = np.asarray(level)
    f = 1
    while max(arr.shape[:2]) // f > max_px:
        f *= 2
    h, w = (arr.shape[0] // f) * f, (arr.shape[1] // f) * f
    return _downsample(arr[:h, :w], f) if f > 1 else np.ascontiguousarray(arr)
