"""Cheap checks of the compressed tile bytes, for decoders that fail silently.

cuCIM does not raise on a corrupt JPEG tile: it prints a libjpeg message and returns whatever
was in its buffer (uninitialized memory, not black), so the pixels cannot tell a bad tile from a
good one. Instead, before a tile is first decoded, its stream structure is checked: the JPEG
marker segments up to the start of scan (lengths consistent with their tables, as libjpeg
checks them) and an end-of-image marker at the tail (truncation); JPEG 2000 codestreams get
their start and end markers checked. Each tile is checked once per reader (a state array), two
small ``pread`` calls each, so the cost is negligible next to decoding.

Limits: corruption inside the entropy-coded data is not detected here (libjpeg itself only warns
about most of it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JPEG = 7
APERIO_J2K = (33003, 33005)
CUCIM_COMPRESSIONS = (JPEG, *APERIO_J2K)
"""TIFF compressions whose tiles cuCIM decodes the same as OpenSlide (checked in tests)."""

_HEAD = 4096
_TAIL = 32
UNCHECKED, GOOD, SUSPECT = 0, 1, 2
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_header_problem(data: bytes) -> str | None:
    """What is wrong with a JPEG stream's marker segments before its first scan, or None.

    ``data`` holds the start of the stream; ``"short"`` means more bytes are needed.
    """
    if data[:2] != b"\xff\xd8":
        return "no JPEG start-of-image marker"
    i, n = 2, len(data)
    while True:
        if i >= n:
            return "short"
        if data[i] != 0xFF:
            return f"expected a JPEG marker at byte {i}, found 0x{data[i]:02x}"
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return "short"
        marker = data[i]
        i += 1
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if marker in (0xD8, 0xD9):
            return f"JPEG marker 0x{marker:02x} before any scan"
        if i + 2 > n:
            return "short"
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            return f"bogus JPEG marker length {length} (marker 0x{marker:02x})"
        if i + length > n:
            return "short"
        problem = _segment_problem(marker, data[i + 2 : i + length])
        if problem is not None:
            return problem
        if marker == 0xDA:
            return None
        i += length


def _segment_problem(marker: int, seg: bytes) -> str | None:
    """Consistency of one segment's payload with its declared length (libjpeg's checks)."""
    if marker == 0xDB:  # DQT: one or more (precision/id, 64 or 128 bytes)
        p = 0
        while p < len(seg):
            precision, table = seg[p] >> 4, seg[p] & 0x0F
            need = 1 + 64 * (precision + 1)
            if precision > 1 or table > 3 or p + need > len(seg):
                return f"bogus JPEG quantization table (segment length {len(seg) + 2})"
            p += need
    elif marker == 0xC4:  # DHT: class/id, 16 counts, symbols
        p = 0
        while p < len(seg):
            if p + 17 > len(seg):
                return "bogus JPEG Huffman table (truncated counts)"
            count = sum(seg[p + 1 : p + 17])
            if count > 256 or p + 17 + count > len(seg):
                return "bogus JPEG Huffman table (segment length does not match its counts)"
            p += 17 + count
    elif marker in _SOF:
        if len(seg) < 6 or len(seg) != 6 + 3 * seg[5] or not 1 <= seg[5] <= 4:
            return "bogus JPEG frame header"
        if int.from_bytes(seg[3:5], "big") == 0:
            return "JPEG frame of zero width"
    elif marker == 0xDA:
        if not seg or len(seg) != 4 + 2 * seg[0] or not 1 <= seg[0] <= 4:
            return "bogus JPEG scan header"
    elif marker == 0xDD and len(seg) != 2:
        return "bogus JPEG restart interval"
    return None


def j2k_problem(head: bytes) -> str | None:
    """A JPEG 2000 codestream starts with SOC then SIZ."""
    return None if head[:4] == b"\xff\x4f\xff\x51" else "no JPEG 2000 SOC/SIZ markers at the tile start"


@dataclass
class LevelTiles:
    """Tile layout of one pyramid level in the TIFF file."""

    tile_w: int
    tile_h: int
    cols: int
    rows: int
    compression: int
    offsets: np.ndarray
    counts: np.ndarray
    state: np.ndarray
    """UNCHECKED / GOOD / SUSPECT per tile, row-major."""
    problems: dict[int, str]
    """Why each SUSPECT tile failed."""


class TileChecker:
    """Checks the tiles a read touches, once each.

    Parameters
    ----------
    path : Path
        The TIFF-based slide file.
    level_dimensions : tuple of (width, height)
        The reader's levels; each is matched to the tiled TIFF page of the same size.
    """

    def __init__(self, path: Path, level_dimensions: tuple[tuple[int, int], ...]) -> None:
        self.path = Path(path)
        self.levels: list[LevelTiles | None] = _tile_layout(self.path, level_dimensions)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._lock = threading.Lock()

    def suspects(self, level: int, x: int, y: int, w: int, h: int) -> list[tuple[int, int, str]]:
        """Tiles ``(col, row, problem)`` of ``level`` under the window that fail the check.

        The window ``(x, y, w, h)`` is in level pixels and inside the level. A level with no
        matching TIFF page (cannot be checked) reports nothing.
        """
        lt = self.levels[level]
        if lt is None:
            return []
        c0, c1 = x // lt.tile_w, min((x + w - 1) // lt.tile_w, lt.cols - 1)
        r0, r1 = y // lt.tile_h, min((y + h - 1) // lt.tile_h, lt.rows - 1)
        idx = (np.arange(r0, r1 + 1)[:, None] * lt.cols + np.arange(c0, c1 + 1)[None, :]).ravel()
        states = lt.state[idx]
        if (states == GOOD).all():
            return []
        out = []
        for i in idx[states != GOOD]:
            problem = self._check(lt, int(i)) if lt.state[i] == UNCHECKED else lt.problems.get(int(i))
            if problem is not None:
                out.append((int(i % lt.cols), int(i // lt.cols), problem))
        return out

    def _check(self, lt: LevelTiles, i: int) -> str | None:
        offset, count = int(lt.offsets[i]), int(lt.counts[i])
        problem = self._problem(lt.compression, offset, count)
        if problem is not None:
            lt.problems[i] = problem
        lt.state[i] = GOOD if problem is None else SUSPECT
        return problem

    def _problem(self, compression: int, offset: int, count: int) -> str | None:
        if count <= 0 or offset <= 0:
            return "the tile has no data (sparse tile)"
        try:
            head = os.pread(self._fd, min(count, _HEAD), offset)
            tail = os.pread(self._fd, min(count, _TAIL), offset + count - min(count, _TAIL))
        except OSError as e:
            return f"cannot read the tile bytes: {e.strerror or e}"
        if len(head) < min(count, _HEAD) or len(tail) < min(count, _TAIL):
            return "the tile runs past the end of the file (truncated file)"
        if compression == JPEG:
            problem = jpeg_header_problem(head)
            if problem == "short" and count > len(head):
                problem = jpeg_header_problem(os.pread(self._fd, count, offset))
            if problem == "short":
                problem = "the JPEG stream ends before its first scan"
        else:
            problem = j2k_problem(head)
        if problem is None and b"\xff\xd9" not in tail:
            problem = "no end-of-image marker at the tile end (truncated tile)"
        return problem

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _tile_layout(path: Path, level_dimensions) -> list[LevelTiles | None]:
    """Match each level to a tiled TIFF page of the same size, and read its tile table."""
    import tifffile

    out: list[LevelTiles | None] = []
    with tifffile.TiffFile(path) as tf:
        pages = [p for p in tf.pages if getattr(p, "is_tiled", False)]
        used: set[int] = set()
        for w, h in level_dimensions:
            match = next(
                (k for k, p in enumerate(pages) if k not in used and p.imagewidth == w and p.imagelength == h), None
            )
            if match is None or int(pages[match].compression) not in CUCIM_COMPRESSIONS:
                out.append(None)
                continue
            used.add(match)
            p = pages[match]
            cols, rows = -(-w // p.tilewidth), -(-h // p.tilelength)
            offsets = np.asarray(p.dataoffsets, dtype=np.int64)
            counts = np.asarray(p.databytecounts, dtype=np.int64)
            if offsets.size != cols * rows:  # planar-separate or odd layouts: do not guess
                out.append(None)
                continue
            out.append(
                LevelTiles(p.tilewidth, p.tilelength, cols, rows, int(p.compression), offsets, counts,
                           np.zeros(cols * rows, dtype=np.uint8), {})
            )
    return out
